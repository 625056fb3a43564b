"""Sink benchmark: rows/s into embedded ClickHouse and Redis counter updates/s from a pre-filled topic.

Phases (each printed with its figures):

1. produce N enriched events (Avro, single-object encoding) to a fresh topic with 4 partitions;
2. run the sink loop (decode, Arrow, ClickHouse insert with dedup token, Redis Lua, commit) until all
   N rows are committed: rows/s end to end from Kafka;
3. baselines in the same run: a bare ``insert_arrow`` of the same rows in 50k-row inserts (a) into
   the same table (a second database migrated the same way: ``events`` with its materialized views)
   with the sink's insert settings, and (b) into ``events_bare`` (``AS events``: no materialized
   views, default settings, no token; the earlier reports' baseline), and (c) the same table
   through the sink's own embedded route (``sinks.clickhouse.insert_arrow``: chdb reads the Arrow
   table in memory, no IPC file); the ratio sink / bare is printed for each (target >= 50%);
4. Redis alone: ``RedisSink.write`` of the same records in 50k-event batches: events/s, once
   ClickHouse's background merges of phases 2-3 are over (they run in this process);
5. latency: events produced at a steady rate (default 5000/s for 10 s), from a separate process, with
   the produce time in ``processed_at``; the time until each row's batch is committed (visible in
   ClickHouse): p50/p95.

Usage: ``.venv/bin/python bench/sink/run.py [--events 300000] [--rate 5000] [--seconds 10] [--only latency]``.
Needs Kafka and Redis (``trackflow stack up``); ClickHouse is embedded in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def make_records(n: int, t0: int) -> list[dict]:
    from schemas import defaults

    base = defaults("enriched_event")
    out = []
    for i in range(n):
        r = dict(base)
        u = f"user{i % 5000}"
        r.update(message_id=f"b{i}", type="track", event=f"ev{i % 20}", app_id="bench", anonymous_id=f"d{u}",
                 user_id=u, user_key=u, device_id=f"d{u}", received_at=t0, event_time=t0 + i % 60_000,
                 processed_at=t0, reporting_currency="USD",
                 properties='{"screen":"home","level":3,"price":1.99}', context='{"os":{"name":"iOS"}}')
        if i % 20 == 0:
            r.update(revenue=1.99, currency="USD", revenue_usd=1.99, revenue_reporting=1.99, fx_status="ok")
        out.append(r)
    return out


def produce(bootstrap: str, topic: str, records: list[dict], rate: float | None = None) -> None:
    from confluent_kafka import Producer

    from schemas import codec

    c = codec("enriched_event")
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000})
    start = time.monotonic()
    for i, rec in enumerate(records):
        r = rec
        if rate:
            due = start + i / rate
            if due > time.monotonic():
                time.sleep(max(0.0, due - time.monotonic()))
            r = dict(rec, processed_at=int(time.time() * 1000))
        while True:
            try:
                p.produce(topic, c.encode(r, topic), key=f"bench:{r['device_id']}")
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    p.flush(60)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def settle(client, r, limit_s: float = 120.0) -> float:
    """Wait until ClickHouse runs no background merge and Redis no snapshot or AOF rewrite (a forked
    child serialising the whole dataset: a core for seconds after the sink phase's writes), at most
    ``limit_s``; returns the seconds waited."""
    t = time.monotonic()
    while time.monotonic() - t < limit_s:
        persistence = r.info("persistence")
        busy = (client.query("SELECT count() FROM system.merges").result_rows[0][0]
                or persistence.get("aof_rewrite_in_progress") or persistence.get("rdb_bgsave_in_progress"))
        if not busy:
            break
        time.sleep(0.5)
    return time.monotonic() - t


def throughput(n: int, kafka, topic: str, settings, ch, core) -> None:
    """Phases 1-4: pre-fill, the sink loop, the bare insert baselines, Redis alone."""
    import redis

    from schemas import codec
    from sinks.base import Batch
    from sinks.clickhouse import connect, insert_arrow, insert_settings
    from sinks.decode import ArrowDecoder
    from sinks.migrate import migrate
    from sinks.redis import RedisSink
    from sinks.rows import EVENTS
    from sinks.service import build_loop
    from trackflow.config import RedisSettings
    from trackflow.runtime import arrow_pool, tune_gc

    print(f"Arrow memory pool: {arrow_pool()} (as `trackflow sink` sets it; the baselines use it too)")
    records = make_records(n, int(time.time() * 1000))
    t = time.monotonic()
    produce(kafka.kafka_bootstrap, topic, records)
    print(f"produced {n} events in {time.monotonic() - t:.1f}s")

    # 2. the sink loop, from the pre-filled topic
    loop = build_loop(settings, ch, core)
    done = threading.Event()

    def on_flush(_: list) -> None:
        if loop.stats["rows_written"] >= n:
            done.set()

    loop.on_flush = on_flush
    tune_gc()  # as `trackflow sink` does once started
    th = threading.Thread(target=loop.run, daemon=True)
    t = time.monotonic()
    th.start()
    while loop.batcher.rows == 0 and not done.is_set() and time.monotonic() - t < 60:
        time.sleep(0.005)
    t_first = time.monotonic()  # partitions assigned, records flowing
    cpu0 = time.process_time()
    done.wait(300)
    sink_s = time.monotonic() - t_first
    sink_cpu_us = (time.process_time() - cpu0) / n * 1e6
    join_s = t_first - t
    loop.stop()
    th.join(30)
    client = connect(ch, core)
    rows = client.query("SELECT count() FROM events").result_rows[0][0]
    sink_rate = n / sink_s
    print(f"sink: {rows} rows in ClickHouse, {n} events committed in {sink_s:.2f}s after the first record "
          f"-> {sink_rate:,.0f} rows/s ({loop.stats['flushes']} flushes; group join took {join_s:.1f}s more); "
          f"process CPU {sink_cpu_us:.1f} us/row")

    # 3. bare insert_arrow of the same rows, 50k-row inserts, in two variants:
    #    same table: a second database migrated like the first (events with its materialized views
    #    and rollups), with the insert settings the sink uses (dedup token, optimize_on_insert);
    #    events_bare: `CREATE TABLE ... AS events` (no materialized views), default settings, no token
    #    (the baseline of the earlier reports).
    # the sink's parts are merged in the background of this process, a little later: merged now, so
    # that the baseline does not share the cores with them (it varied from 143k to 450k rows/s)
    for (name,) in client.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                "AND engine LIKE '%MergeTree'").result_rows:
        client.command(f"OPTIMIZE TABLE `{name}` FINAL")
    rs = RedisSettings()
    r = redis.Redis.from_url(rs.redis_url.get_secret_value())
    print(f"waited {settle(client, r):.1f}s for the merges of the sink's parts (and Redis' AOF rewrite) "
          "before the baseline")
    table = EVENTS.to_arrow(records, topic, 0, list(range(n)))

    def bare(target: str, with_settings: bool, in_memory: bool = False) -> tuple[float, float]:
        t, cpu = time.monotonic(), time.process_time()
        for i in range(0, n, 50_000):
            part = table.slice(i, 50_000)
            s = insert_settings("events", part, f"{topic}/0/{i}-{i + part.num_rows - 1}") if with_settings else None
            if in_memory:  # the sink's own route (chdb reads the Arrow table in memory)
                insert_arrow(client, target, part, s or {})
            else:
                client.insert_arrow(target, part, settings=s)
        return n / (time.monotonic() - t), (time.process_time() - cpu) / n * 1e6

    # the best of three, each into fresh tables: on this shared 2-core machine a single baseline
    # read anywhere from 184k to 395k rows/s in back-to-back runs (its CPU per row from 3.0 to 8.1
    # us); the best one is the fairest measure of the engine, and the hardest one to beat
    same, legacy, memory = [], [], []
    for k in range(3):
        migrate(client, database=f"bench_bare{k}", dedup_window=settings.sink_dedup_window)
        migrate(client, database=f"bench_mem{k}", dedup_window=settings.sink_dedup_window)
        client.command(f"CREATE TABLE bench.events_bare{k} AS bench.events")
        same.append(bare(f"bench_bare{k}.events", True))
        legacy.append(bare(f"bench.events_bare{k}", False))
        memory.append(bare(f"bench_mem{k}.events", True, in_memory=True))
        settle(client, r)
    same_rate, same_cpu = max(same)
    legacy_rate, legacy_cpu = max(legacy)
    mem_rate, mem_cpu = max(memory)
    print(f"  (bare runs, rows/s: same table {', '.join(f'{x:,.0f}' for x, _ in same)}; "
          f"events_bare {', '.join(f'{x:,.0f}' for x, _ in legacy)}; "
          f"in memory {', '.join(f'{x:,.0f}' for x, _ in memory)})")
    print(f"bare insert_arrow (best of 3), same table (with its MVs) and insert settings as the sink (50k-row inserts): "
          f"{same_rate:,.0f} rows/s, CPU {same_cpu:.1f} us/row -> ratio sink / bare: {sink_rate / same_rate:.0%} "
          f"(CPU: {same_cpu / sink_cpu_us:.0%})")
    print(f"bare in-memory insert (best of 3), same table and settings, the sink's own embedded route "
          f"(sinks.clickhouse.insert_arrow): {mem_rate:,.0f} rows/s, CPU {mem_cpu:.1f} us/row -> ratio sink / bare: "
          f"{sink_rate / mem_rate:.0%} (CPU: {mem_cpu / sink_cpu_us:.0%})")
    print(f"bare insert_arrow (best of 3), events_bare (no MVs, default settings, no token; earlier baseline): "
          f"{legacy_rate:,.0f} rows/s, CPU {legacy_cpu:.1f} us/row -> ratio sink / bare: "
          f"{sink_rate / legacy_rate:.0%} (CPU: {legacy_cpu / sink_cpu_us:.0%})")

    # 4. Redis counters alone, once ClickHouse's background merges of phases 2-3 are done: they run
    #    in this process and took a core from it (85-105k events/s measured during them, ~190k after)
    print(f"waited {settle(client, r):.1f}s for ClickHouse's background merges to finish")
    rsink = RedisSink(r, rs.redis_key_prefix + "solo:", "solo")
    decoded = ArrowDecoder("enriched_event", codec("enriched_event"))
    enc = codec("enriched_event")
    tables = [decoded.decode([enc.encode(x, "solo") for x in records[i : i + 50_000]], "solo")[0]
              for i in range(0, n, 50_000)]
    t = time.monotonic()
    off = 0
    for tb in tables:
        rsink.write([Batch("solo", 0, list(range(off, off + tb.num_rows)), [], table=tb)])
        off += tb.num_rows
    red_s = time.monotonic() - t
    print(f"redis counters: {n / red_s:,.0f} events/s (Arrow group-by plan + Lua, 50k-event batches)")
    r.close()
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--only", choices=["latency"], help="run only the latency phase (5), on an empty database")
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:6]
    home = tempfile.mkdtemp(prefix="tf-bench-sink-")
    os.environ.update({
        "TRACKFLOW_HOME": home, "TRACKFLOW_TOPIC_PREFIX": f"bench{tag}.", "TRACKFLOW_REDIS_KEY_PREFIX": f"bench{tag}:",
        "TRACKFLOW_CLICKHOUSE_DATABASE": "bench", "TRACKFLOW_SINK_GROUP_ID": f"bench-{tag}",
    })
    os.environ.pop("TRACKFLOW_CLICKHOUSE_URL", None)
    import redis

    from sinks.redis import delete_prefixed
    from sinks.service import build_loop, run_migrations
    from sinks.settings import SinkSettings
    from trackflow.config import ClickHouseSettings, CoreSettings, KafkaSettings, RedisSettings
    from trackflow.stack import ensure_topics

    kafka = KafkaSettings()
    ensure_topics(kafka)
    topic = kafka.topics.enriched
    ch, core, settings = ClickHouseSettings(), CoreSettings(), SinkSettings()
    run_migrations(ch, core, settings)

    if args.only != "latency":
        throughput(args.events, kafka, topic, settings, ch, core)

    # 5. latency at a steady rate: produce -> committed (visible in ClickHouse)
    lat: list[float] = []
    m = int(args.rate * args.seconds)
    live = make_records(m, int(time.time() * 1000))
    for i, x in enumerate(live):
        x["message_id"] = f"l{i}"

    def record_latency(batches: list) -> None:
        now = time.time() * 1000
        for b in batches:
            if b.table is not None:
                sent = b.table.column("processed_at").cast("int64").to_pylist()
                lat.extend((now - t) / 1000 for t in sent)

    loop2 = build_loop(settings, ch, core)
    loop2.on_flush = record_latency
    th2 = threading.Thread(target=loop2.run, daemon=True)
    th2.start()
    time.sleep(3)  # let the consumer join its partitions
    # from another process, as in production (the worker produces, the sink consumes): in this one,
    # the producer's pacing loop would take the GIL from the sink loop it measures
    import multiprocessing

    producer = multiprocessing.get_context("spawn").Process(
        target=produce, args=(kafka.kafka_bootstrap, topic, live, args.rate)
    )
    producer.start()
    producer.join()
    deadline = time.monotonic() + 30
    while len(lat) < m and time.monotonic() < deadline:
        time.sleep(0.2)
    loop2.stop()
    th2.join(30)
    if lat:
        print(f"latency Kafka -> visible in ClickHouse at {args.rate:.0f} ev/s: p50 {pct(lat, 0.5):.2f}s, "
              f"p95 {pct(lat, 0.95):.2f}s, p99 {pct(lat, 0.99):.2f}s ({len(lat)} of {m} events)")
    # the run's live counters and seen sets (hundreds of MB after a few runs) leave the shared Redis,
    # whose AOF rewrites would otherwise slow every later run down
    cleanup = redis.Redis.from_url(RedisSettings().redis_url.get_secret_value())
    print(f"removed {delete_prefixed(cleanup, f'bench{tag}:')} Redis keys of this run")
    cleanup.close()
    # and its topics: a broker holding thousands of partitions of old runs took 90 s to start
    from confluent_kafka.admin import AdminClient

    from trackflow.stack import delete_topics

    gone = delete_topics(AdminClient(kafka.client_config()), kafka.topic_prefix)
    print(f"removed {len(gone)} topics of this run")


if __name__ == "__main__":
    main()
