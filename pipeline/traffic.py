"""Synthetic RawEvent traffic for the benchmark, the demo and the integration tests.

:func:`generate` yields ``(key, raw_event)`` pairs with a realistic mix (about 70% track, 15%
screen, 10% heartbeat, 5% identify; revenue on 3%, duplicates on 2%, invalid on 1%), seeded and
therefore reproducible. :func:`produce` writes them to the raw topic as Avro.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from schemas import defaults

UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0 Safari/537.36",
)
SCREENS = ("Home", "Shop", "Cart", "Checkout", "Profile", "Settings")
TRACKS = ("button_click", "level_start", "level_complete", "add_to_cart", "search", "share")


def raw_event(app_id: str, device: str, *, received_at: int, **fields: Any) -> dict[str, Any]:
    """A RawEvent record with sensible defaults; ``fields`` override (properties may be a dict)."""
    rec = defaults("raw_event")
    rec.update(
        message_id=str(uuid.uuid4()),
        type="track",
        app_id=app_id,
        anonymous_id=device,
        received_at=received_at,
        timestamp=str(received_at - 500),
        sent_at=str(received_at - 100),
    )
    for k in ("properties", "traits", "context"):
        if isinstance(fields.get(k), dict):
            fields[k] = orjson.dumps(fields[k]).decode()
    rec.update(fields)
    return rec


def generate(
    n: int,
    app_id: str,
    *,
    devices: int = 2000,
    seed: int = 7,
    start_ms: int | None = None,
    step_ms: int = 5,
    invalid_rate: float = 0.01,
    duplicate_rate: float = 0.02,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``n`` ``(kafka key, raw event)`` pairs; event ``i`` is received at ``start + i*step``."""
    rnd = random.Random(seed)
    start = start_ms if start_ms is not None else int(time.time() * 1000) - n * step_ms
    sessions: dict[str, tuple[str, int]] = {}
    recent: list[dict[str, Any]] = []
    for i in range(n):
        now = start + i * step_ms
        if recent and rnd.random() < duplicate_rate:
            dup = dict(rnd.choice(recent))
            yield f"{dup['app_id']}:{dup['anonymous_id']}", dup
            continue
        dev = f"dev-{rnd.randrange(devices)}"
        ctx = {
            "os": {"name": "iOS", "version": "17.2"},
            "app": {"version": "3.4.1"},
            "locale": "en-GB",
            "userAgent": UAS[int(dev.rsplit("-", 1)[1]) % len(UAS)],
        }
        if rnd.random() < 0.05:
            ctx["campaign"] = {"source": rnd.choice(["google", "facebook", "tiktok"]), "name": "autumn"}
        mid = f"m-{seed}-{i}"
        r = rnd.random()
        fields: dict[str, Any] = {"message_id": mid, "context": ctx, "user_agent": ctx["userAgent"]}
        if r < 0.05:
            fields.update(type="identify", user_id=f"user-{dev}", traits={"plan": "free"})
        elif r < 0.15:
            sid, st = sessions.setdefault(dev, (f"cs-{dev}-{i}", now))
            off = max(0, (now - st) // 1000)
            fields.update(
                type="track",
                event="heartbeat",
                session_id=sid,
                heartbeat_offset=float(off),
                source="app_tracking",
                properties={"offset": off},
            )
        elif r < 0.30:
            fields.update(type="screen", event=rnd.choice(SCREENS), properties={"path": "/x", "n": i})
        else:
            props: dict[str, Any] = {"n": i, "item": rnd.choice(["a", "b", "c"]), "price": 3}
            if rnd.random() < 0.03 / 0.7:
                props.update(
                    revenue=f"{rnd.randint(1, 5000) / 100:.2f}", currency=rnd.choice(["USD", "EUR", "GBP"])
                )
            fields.update(type="track", event=rnd.choice(TRACKS), properties=props)
        if rnd.random() < invalid_rate:
            fields.update(type="track", event="-bad name")
        rec = raw_event(app_id, dev, received_at=now, **fields)
        recent.append(rec)
        if len(recent) > 50:
            recent.pop(0)
        yield f"{app_id}:{dev}", rec


def produce(events: Iterable[tuple[str, dict[str, Any]]], topic: str, kafka: Any = None) -> int:
    """Encode events as RawEvent Avro and produce them to ``topic``; returns the count."""
    from confluent_kafka import Producer

    from schemas import codec_from_settings
    from trackflow.config import KafkaSettings

    kafka = kafka or KafkaSettings()
    codec = codec_from_settings("raw_event")
    p = Producer(
        kafka.client_config()
        | {
            "acks": "all",
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
        }
    )
    n = 0
    for key, rec in events:
        while True:
            try:
                p.produce(topic, key=key.encode(), value=codec.encode(rec, topic))
                break
            except BufferError:
                p.poll(0.1)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    if p.flush(60):
        raise RuntimeError("raw events not delivered")
    return n
