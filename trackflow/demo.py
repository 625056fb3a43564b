"""``trackflow demo``: run the whole pipeline locally and show the results; ``demo stop`` ends it.

For now it brings the local stack up and round-trips a few Avro events through Kafka; the full
pipeline orchestration (collector, worker, sink, simulate, report) grows here.
"""

from __future__ import annotations

import time
import uuid

import click
from confluent_kafka import Consumer, Producer

from schemas import codec_from_settings, defaults
from trackflow import stack as local_stack
from trackflow.config import KafkaSettings


def round_trip(n: int = 5) -> float:
    """Produce ``n`` RawEvents to the raw topic and read them back; returns seconds taken."""
    kafka = KafkaSettings()
    topic = kafka.topics.raw
    raw = codec_from_settings("raw_event")
    t0 = time.monotonic()
    p = Producer({**kafka.client_config(), "enable.idempotence": True, "acks": "all"})
    ids = set()
    for i in range(n):
        rec = defaults("raw_event")
        mid = f"demo-{uuid.uuid4()}"
        ids.add(mid)
        rec.update(message_id=mid, type="track", event="demo_ping", app_id="demo", anonymous_id=f"dev{i}",
                   received_at=int(time.time() * 1000))
        p.produce(topic, key=f"demo:dev{i}".encode(), value=raw.encode(rec, topic))
    p.flush(30)
    c = Consumer({**kafka.client_config(), "group.id": f"demo-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while ids - seen and time.monotonic() < deadline:
        for m in c.consume(500, timeout=0.5):
            value = m.value()
            if m.error() is None and value is not None:
                rec = raw.decode(value, topic)
                seen.add(rec["message_id"])
    c.close()
    if ids - seen:
        raise click.ClickException(f"{len(ids - seen)} of {n} events did not come back from Kafka")
    return time.monotonic() - t0


@click.group("demo", invoke_without_command=True)
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Bring up the local stack, run the pipeline with realistic traffic, print a report."""
    if ctx.invoked_subcommand is not None:
        return
    for name, what in local_stack.up().items():
        click.echo(f"{name:<11} {what}")
    for name, info in local_stack.status().items():
        click.echo(f"{name:<11} {'up' if info['ok'] else 'DOWN'}  {info['address']}")
    took = round_trip()
    click.echo(f"round-trip: 5 Avro events through {KafkaSettings().topics.raw} in {took:.2f}s")


@demo.command("stop")
def stop() -> None:
    """Stop the demo's services (the stack is stopped by ``trackflow stack down``)."""
    click.echo("demo services stopped")


commands = [demo]
