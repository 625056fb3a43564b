"""Read rate of the sink's Kafka consumer, with librdkafka's default ``fetch.queue.backoff.ms``
(1000 ms) and with the sink's own (``sinks.loop.FETCH_QUEUE_BACKOFF_MS``).

Pre-fills a 4-partition topic with N enriched events (as ``bench/sink/run.py`` does), then reads it
all from offset 0 with the sink's consumer configuration (``sinks.loop.consumer_config``) and its
grouping of each ``consume`` call (``sinks.loop.group_runs``), alternating the two settings: records/s, process CPU per record, and the ratio of the sink's setting to the default.

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


def read_all(bootstrap: str, topic: str, n: int, backoff_ms: int | None) -> tuple[float, float]:
    """Records/s and CPU µs per record to read ``n`` records of ``topic`` from offset 0, with the
    sink's consumer configuration and its grouping of each ``consume`` call; ``backoff_ms`` is
    ``fetch.queue.backoff.ms`` (``None``: librdkafka's default)."""
    from confluent_kafka import Consumer, TopicPartition

    from sinks.loop import CONSUME_BATCH, consumer_config, group_runs
    from sinks.settings import SinkSettings
    from trackflow.config import KafkaSettings

    conf = {**consumer_config(KafkaSettings(kafka_bootstrap=bootstrap), SinkSettings()),
            "group.id": f"bench-{uuid.uuid4().hex}"}
    if backoff_ms is None:
        del conf["fetch.queue.backoff.ms"]
    else:
        conf["fetch.queue.backoff.ms"] = backoff_ms
    c = Consumer(conf)
    c.assign([TopicPartition(topic, p, 0) for p in range(4)])
    got = 0
    t, cpu = time.monotonic(), time.process_time()
    while got < n:
        got += sum(len(offsets) for offsets, _, _ in group_runs(c.consume(num_messages=CONSUME_BATCH, timeout=1)).values())
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
            default.append(read_all(bootstrap, topic, args.events, None))
            ours.append(read_all(bootstrap, topic, args.events, FETCH_QUEUE_BACKOFF_MS))
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
