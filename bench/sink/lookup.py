"""Replay-lookup benchmark: the sink's check for already stored message ids, against a growing day.

Before inserting a batch of events the sink drops the rows whose ``(app_id, message_id)`` is already
stored (a restarted pipeline worker re-emits events at new offsets). This measures that lookup for
batches of new ids (the common case: nothing found) as one day of one app grows, two ways in the
same run:

- **baseline**: the lookup in ``events`` used until migration 002: restricted to the batch's app and
  event dates (sort key) with the ``idx_message_id`` bloom filter on the ids;
- **event_ids**: :func:`sinks.clickhouse.drop_stored_events`, which reads ``event_ids`` (sorted by
  app and id, filled by a materialized view of ``events``).

Printed per day size and batch size: milliseconds per lookup (best of 3) and the ratio
baseline / event_ids. Also the insert cost of the day's rows (``events`` with every view, so with the
``event_ids`` one): rows/s.

Usage: ``.venv/bin/python bench/sink/lookup.py [--days-rows 1000000,4000000] [--batches 1000,5000,50000]``.
Needs nothing running: ClickHouse is embedded in a temporary folder (~2 minutes at the defaults).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHUNK = 50_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days-rows", default="1000000,4000000", help="day sizes to measure at (ascending)")
    ap.add_argument("--batches", default="1000,5000,50000", help="batch sizes (new ids per lookup)")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.days_rows.split(","))
    batches = [int(x) for x in args.batches.split(",")]

    home = tempfile.mkdtemp(prefix="tf-bench-lookup-")
    os.environ.update({"TRACKFLOW_HOME": home, "TRACKFLOW_CLICKHOUSE_DATABASE": "bench"})
    os.environ.pop("TRACKFLOW_CLICKHOUSE_URL", None)
    try:
        run(sizes, batches)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(sizes: list[int], batches: list[int]) -> None:
    import pyarrow as pa
    from run import make_records

    from sinks.clickhouse import (
        _LOOKUP_SETTINGS,
        _dates,
        _ids_subquery,
        connect,
        drop_stored_events,
        insert_settings,
    )
    from sinks.rows import EVENTS
    from sinks.service import run_migrations
    from sinks.settings import SinkSettings
    from trackflow.config import ClickHouseSettings, CoreSettings

    ch, core = ClickHouseSettings(), CoreSettings()
    run_migrations(ch, core, SinkSettings())
    client = connect(ch, core)
    t0 = int(time.time() * 1000) - 3_600_000
    template = EVENTS.to_arrow(make_records(CHUNK, t0), "t", 0, list(range(CHUNK)))
    mid = template.schema.get_field_index("message_id")

    def chunk(tag: str, n: int = CHUNK) -> pa.Table:
        ids = pa.array([f"{tag}-{i}" for i in range(n)], pa.string())
        return template.slice(0, n).set_column(mid, "message_id", ids)

    def baseline(data: pa.Table) -> int:
        ids = sorted(data.column("message_id").to_pylist())
        return len(client.query(
            "SELECT DISTINCT app_id, message_id FROM events WHERE app_id IN %(apps)s AND event_date IN %(dates)s "
            "AND message_id IN " + _ids_subquery(ids),
            parameters={"apps": ("bench",), "dates": tuple(_dates(data.column("event_time")))},
            settings=_LOOKUP_SETTINGS,
        ).result_rows)

    def best_ms(fn, data: pa.Table) -> float:
        out = []
        for _ in range(3):
            t = time.perf_counter()
            fn(data)
            out.append(time.perf_counter() - t)
        return min(out) * 1000

    stored = 0
    for size in sizes:
        t, before = time.perf_counter(), stored
        while stored < size:
            part = chunk(f"day{stored}")
            client.insert_arrow("events", part, settings=insert_settings("events", part, f"fill/{stored}"))
            stored += CHUNK
        fill_s = time.perf_counter() - t
        print(f"day of {stored:,} rows (one app, one date); filled at {(stored - before) / max(fill_s, 1e-9):,.0f} rows/s "
              "into events with its views")
        # a stored id is found by both (the check that they answer the same)
        probe = chunk("day0", 10)
        assert baseline(probe) == 10 and drop_stored_events(client, probe).num_rows == 0
        for k in batches:
            data = chunk(f"new{size}-{k}", k)
            base_ms = best_ms(baseline, data)
            new_ms = best_ms(lambda d: drop_stored_events(client, d), data)
            print(f"  batch of {k:>6,} new ids: baseline (events, bloom filter) {base_ms:8.1f} ms, "
                  f"event_ids {new_ms:7.1f} ms -> {base_ms / new_ms:5.1f}x")
    client.close()


if __name__ == "__main__":
    main()
