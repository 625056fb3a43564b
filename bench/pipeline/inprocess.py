"""The worker's per-event work in-process: decode, the stages, encode, and the state flushes.

No Kafka and no Faust: :class:`pipeline.worker.TableState` over real rocksdict databases (two
partitions), the agent's per-record bookkeeping, a flush (snapshot + RocksDB writes) every
``--flush-every`` events as the 1 s commit would do at 15,000 events/s, and produced records
counted, not sent. Same traffic as ``run.py`` (pipeline.traffic.generate, 5,000 devices). The
process is tuned like the worker (:func:`trackflow.runtime.tune_gc`).

This is the part of a worker's main-thread time that trackflow's own code decides, measured
without the broker, the fetch loop and librdkafka, so two versions can be compared on these
shared machines run by run (the end-to-end rate moves by +-15 % between runs of one version).

Run: ``.venv/bin/python bench/pipeline/inprocess.py [--events 120000] [--state-cache-mb 16]
[--runs 3]``; prints CPU microseconds per event (all, and the second half), and the flush's
share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class _Store:
    """The part of Faust's rocksdb store the worker uses: one database per partition."""

    def __init__(self, root: Path) -> None:
        from rocksdict import Options, Rdict

        self._dbs = {p: Rdict(str(root / f"p{p}"), Options(raw_mode=True)) for p in range(2)}

    def _db_for_partition(self, p: int) -> Any:
        return self._dbs[p]


class _Changelog:
    def get_topic_name(self) -> str:
        return "changelog"


class _Table:
    def __init__(self, root: Path) -> None:
        self.data = _Store(root)
        self.changelog_topic = _Changelog()


class _Counted:
    """Outputs that count what would be produced."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        self.sent += 1


def run(n: int, flush_every: int, cache_mb: int) -> tuple[float, float, float]:
    """(CPU us/event over all, over the second half, of which flushes) for ``n`` events."""
    from pipeline.fx import RateTable
    from pipeline.process import Processor
    from pipeline.settings import PipelineSettings
    from pipeline.traffic import generate
    from pipeline.worker import TableState
    from schemas import codec
    from schemas.fastcodec import fast
    from trackflow.apps import App

    tmp = Path(tempfile.mkdtemp(prefix="tf-inprocess-"))
    app = App(app_id="bench", name="b", write_key_hash="x", reporting_currency="GBP")
    out = _Counted()
    state = TableState(_Table(tmp / "d"), _Table(tmp / "s"), out, cache_mb << 20)  # type: ignore[arg-type]
    proc = Processor(PipelineSettings(), {"bench": app}.get, RateTable(), state)
    rc, ec = fast(codec("raw_event")), fast(codec("enriched_event"))
    # the raw topic is keyed by app and device: each device in one of two partitions, in order
    data: list[tuple[int, int, bytes]] = []
    offsets = [0, 0]
    for key, r in generate(n, "bench", devices=5000, seed=11, start_ms=1_790_000_000_000, step_ms=2):
        p = zlib.crc32(key.encode()) % 2
        data.append((p, offsets[p], rc.encode(r, "t")))
        offsets[p] += 1
    flushing = 0.0
    marks: list[float] = []
    start = time.process_time()
    for i, (partition, offset, value) in enumerate(data):
        state.partition = partition
        state.advance(partition, offset)
        res = proc.process_bytes(rc, value, pos=(partition, offset), topic="t", now=int(time.time() * 1000))
        for k, rec in res.enriched:
            out.send("enriched", k.encode(), ec.encode(rec, "enriched"))
        if res.seen_key is not None and res.seen_expires is not None:
            state.index_expiry(res.seen_expires, res.seen_key)
        if (i + 1) % flush_every == 0:
            f = time.process_time()
            snap = state.snapshot()
            for step in state.STEPS:
                state.write(snap, step)
            state.done()
            flushing += time.process_time() - f
            marks.append(time.process_time())
    total = time.process_time() - start
    half = marks[len(marks) // 2 - 1]
    second = (marks[-1] - half) / ((len(marks) - len(marks) // 2) * flush_every)
    return total / n * 1e6, second * 1e6, flushing / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=120_000)
    ap.add_argument("--flush-every", type=int, default=15_000)
    ap.add_argument("--state-cache-mb", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if args.events < 2 * args.flush_every:
        ap.error("--events must cover at least two flushes")
    from trackflow.runtime import tune_gc

    tune_gc()
    for r in range(args.runs):
        us, second, flush = run(args.events, args.flush_every, args.state_cache_mb)
        print(
            f"run {r + 1}: {us:.1f} us CPU/event ({second:.1f} in the second half), of which flushes "
            f"{flush:.1f} (state cache {args.state_cache_mb} MB, a flush every {args.flush_every:,} events)"
        )


if __name__ == "__main__":
    main()
