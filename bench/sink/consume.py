"""Read rate of the sink's Kafka consumer, with librdkafka's default ``fetch.queue.backoff.ms``
(1000 ms) and with the sink's own (``sinks.loop.FETCH_QUEUE_BACKOFF_MS``).

Pre-fills a 4-partition topic with N enriched events (as ``bench/sink/run.py`` does), then reads it
all from offset 0 with ``consume(10_000)`` and the sink's per-message grouping loop, alternating the
two settings: records/s, process CPU per record, and the ratio of the sink's setting to the default.

Usage: ``.venv/bin/python bench/sink/consume.py [--events 500000] [--rounds 2]``; needs Kafka
(``trackflow stack up``).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def read_all(bootstrap: str, topic: str, n: int, extra: dict) -> tuple[float, float]:
    """Records/s and CPU µs per record to read ``n`` records of ``topic`` from offset 0."""
    from confluent_kafka import Consumer, TopicPartition

    from sinks.loop import CONSUME_BATCH

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024,
                  "queued.max.messages.kbytes": 256 * 1024, **extra})
    c.assign([TopicPartition(topic, p, 0) for p in range(4)])
    got = 0
    t, cpu = time.monotonic(), time.process_time()
    while got < n:
        runs: dict[tuple[str, int], tuple[list[int], list[bytes]]] = {}
        for m in c.consume(num_messages=CONSUME_BATCH, timeout=1):
            if m.error() is not None:
                continue
            run = runs.setdefault((m.topic(), m.partition()), ([], []))
            run[0].append(m.offset())
            run[1].append(m.value())
            got += 1
    rate, cpu_us = n / (time.monotonic() - t), (time.process_time() - cpu) / n * 1e6
    c.close()
    return rate, cpu_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from confluent_kafka.admin import AdminClient, NewTopic
    from run import make_records, produce

    from sinks.loop import FETCH_QUEUE_BACKOFF_MS
    from trackflow.config import KafkaSettings

    bootstrap = KafkaSettings().kafka_bootstrap
    topic = f"bench-consume.{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
    try:
        produce(bootstrap, topic, make_records(args.events, int(time.time() * 1000)))
        default, ours = [], []
        for _ in range(args.rounds):
            default.append(read_all(bootstrap, topic, args.events, {}))
            ours.append(read_all(bootstrap, topic, args.events, {"fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS}))
        for label, runs in (("librdkafka default (1000 ms)", default), (f"sink ({FETCH_QUEUE_BACKOFF_MS} ms)", ours)):
            print(f"fetch.queue.backoff.ms {label}: "
                  + ", ".join(f"{r:,.0f} records/s ({c:.2f} us CPU)" for r, c in runs))
        best_default, best_ours = max(r for r, _ in default), max(r for r, _ in ours)
        print(f"best of {args.rounds}: {best_ours:,.0f} vs {best_default:,.0f} records/s "
              f"-> ratio sink setting / default: {best_ours / best_default:.1f}x")
    finally:
        admin.delete_topics([topic])[topic].result()


if __name__ == "__main__":
    main()
