"""Compare the delivery bridges: KafkaPublisher (callback bridge) vs confluent_kafka.aio.AIOProducer.

Publishes the same pre-encoded RawEvents in requests of ``--batch`` messages, ``--concurrency`` requests
in flight, and prints events/s and per-request latency for each. Usage::

    .venv/bin/python bench/collector/publishers.py [--events 30000] [--batch 100] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import uvloop

from collector.mapping import Limits, Stamp, kafka_key, map_segment
from collector.publisher import KafkaPublisher, producer_config
from collector.settings import CollectorSettings
from schemas import codec
from trackflow.config import KafkaSettings
from trackflow.stack import ensure_topics

try:
    from run import segment_event
except ImportError:  # run as a module
    from bench.collector.run import segment_event


def messages(topic: str, n: int) -> list[tuple[bytes, bytes]]:
    raw = codec("raw_event")
    stamp = Stamp(app_id="bench", received_at=int(time.time() * 1000), request_id="r")
    events = map_segment({"batch": [segment_event(i) for i in range(1000)]}, stamp, Limits(), None).events
    enc = [(kafka_key(r), raw.encode(r, topic)) for r in events]
    return [enc[i % len(enc)] for i in range(n)]


async def drive(
    publish: Any, msgs: list[tuple[bytes, bytes]], batch: int, concurrency: int
) -> dict[str, float]:
    chunks = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    lat: list[float] = []
    it = iter(chunks)

    async def worker() -> None:
        for chunk in it:
            t0 = time.perf_counter()
            await publish(chunk)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    lat.sort()
    return {
        "events_per_s": len(msgs) / dt,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
    }


async def main(a: argparse.Namespace) -> None:
    bootstrap = os.environ.get("TRACKFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    kafka = KafkaSettings(kafka_bootstrap=bootstrap, topic_prefix=f"benchpub{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka)
    topic = kafka.topics.raw
    msgs = messages(topic, a.events)
    settings = CollectorSettings()
    try:
        for mode in ("thread", "loop"):
            pub = KafkaPublisher(kafka, settings, poll_mode=mode)
            await pub.publish(topic, msgs[:10], 10)
            r = await drive(
                lambda chunk, pub=pub: pub.publish(topic, chunk, 30), msgs, a.batch, a.concurrency
            )
            pub.close()
            print(
                f"KafkaPublisher, poll {mode:6s}:    {r['events_per_s']:9.0f} events/s  "
                f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
            )

        from confluent_kafka.aio import AIOProducer

        conf = {k: v for k, v in producer_config(kafka, settings).items()}
        aio = AIOProducer(conf, batch_size=a.batch, buffer_timeout=0.005)

        async def aio_publish(chunk: list[tuple[bytes, bytes]]) -> None:
            futs = [await aio.produce(topic, value=v, key=k) for k, v in chunk]
            await asyncio.gather(*futs)

        await aio_publish(msgs[:10])
        r = await drive(aio_publish, msgs, a.batch, a.concurrency)
        await aio.flush()
        await aio.close()
        print(
            f"AIOProducer:                      {r['events_per_s']:9.0f} events/s  "
            f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
        )
    finally:
        from confluent_kafka.admin import AdminClient

        for fut in AdminClient(kafka.client_config()).delete_topics(kafka.topics.all()).values():
            try:
                fut.result()
            except Exception:  # best effort on a shared broker
                pass


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=30000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8)
    uvloop.run(main(p.parse_args()))
