"""Per-event cost of one busy device's events, with the content-digest bound and without it.

The content rule keeps a device's digests for ``content_late_s`` (10 min) after they were recorded,
for duplicates in batches a client retried late. Without a bound a device's state grew with its
rate (10 events/s: 6,000 digests). This processes one device's distinct events at several rates,
on in-memory state (each event reads and writes the device state as JSON, as a state store does),
with ``content_late_max`` at its default and unbounded (the baseline, in the same run), and prints
the cost per event over the last 500 events and the state's size.

Run: ``.venv/bin/python bench/pipeline/busy_device.py`` (no services; ~1 minute).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

T0 = 1_790_000_000_000


def run(n: int, rate: float, late_max: int) -> tuple[float, int, int]:
    """(microseconds per event over the last 500, state bytes, digests) for n events at rate/s."""
    import orjson

    from pipeline import dedupe
    from pipeline.fx import RateTable
    from pipeline.process import DictState, Processor
    from pipeline.settings import PipelineSettings
    from pipeline.traffic import raw_event
    from trackflow.apps import App

    app = App(app_id="a1", name="A1", write_key_hash="x", reporting_currency="GBP")
    state = DictState()
    proc = Processor(PipelineSettings(content_late_max=late_max), {"a1": app}.get, RateTable(), state)
    took = []
    for i in range(n):
        t = T0 + int(i * 1000 / rate)  # the device's clock and the wall clock move together
        raw = raw_event(
            "a1",
            "dev1",
            received_at=t,
            message_id=f"m{i}",
            event="level_up",
            timestamp=str(t),
            sent_at=None,
            properties={"level": i, "score": i * 7},
        )
        start = time.perf_counter()
        proc.process(raw, pos=(0, i), topic="raw", now=t)
        took.append(time.perf_counter() - start)
    dev = state.devices["a1:dev1"]
    last = took[-500:]
    return sum(last) / len(last) * 1e6, len(orjson.dumps(dev)), len(dev.get("c", "")) // dedupe.ENTRY


def main() -> None:
    from pipeline.settings import PipelineSettings

    bound = PipelineSettings().content_late_max
    print(f"one device, distinct events, content_late_s=600; bound content_late_max={bound} vs unbounded")
    for n, rate in ((600, 0.2), (3000, 2.0), (6000, 10.0)):
        b_us, b_bytes, b_n = run(n, rate, bound)
        u_us, u_bytes, u_n = run(n, rate, 10**9)
        print(
            f"  {rate:>4} events/s ({n} events): bounded {b_us:,.0f} us/event, state {b_bytes:,} B "
            f"({b_n} digests); unbounded {u_us:,.0f} us/event, state {u_bytes:,} B ({u_n} digests) "
            f"-> {u_us / b_us:.1f}x"
        )


if __name__ == "__main__":
    main()
