"""Helpers of the dashboard browser test: the fixture dataset, producing it, and the sink's read API.

The dataset is produced straight to the run's enriched, sessions and invalid topics (the pipeline
is not part of this test): 45 days of screen funnels, purchases in three currencies, error events,
heartbeats and sessions for a few dozen users (with cohorts, retained and re-engaged users), plus
dead letters with several reasons. ``trackflow sink`` runs as a subprocess with the run's
environment (see conftest.py), consumes them into embedded ClickHouse and Redis, and serves the read
API and the page.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READ_KEY = "browser-test-admin-key"
DAYS = 45  # the dashboard's date range in the test: today and the 44 days before
FUNNEL = ["home", "product", "cart", "checkout"]
RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79}  # units per USD
SOURCES = [("google_ads", "winter_sale"), ("facebook", "retarget"), (None, None)]
ERRORS = [
    ("Error", "E_NET_TIMEOUT"),
    ("Warning", "W_SLOW_FRAME"),
    ("Critical", "C_CRASH"),
    ("Error", "E_PARSE"),
]
REASONS = ["invalid_event_name", "missing_field", "invalid_revenue", "value_too_long", "unknown_type"]


@dataclass
class Dataset:
    """Records to produce, by topic kind, as (key, record) pairs."""

    events: list[tuple[str, dict[str, Any]]]
    sessions: list[tuple[str, dict[str, Any]]]
    invalid: list[tuple[str, dict[str, Any]]]


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def enriched(
    app_id: str,
    user: str,
    etype: str,
    event: str | None,
    at: datetime,
    *,
    session_id: str,
    seq: int,
    source: tuple[str | None, str | None],
    properties: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One EnrichedEvent record of the fixture dataset."""
    from schemas import defaults

    rec = defaults("enriched_event")
    ms = _ms(at)
    rec.update(
        {
            "message_id": uuid.uuid4().hex,
            "type": etype,
            "event": event,
            "app_id": app_id,
            "anonymous_id": f"dev-{user}",
            "user_id": user,
            "session_id": session_id,
            "timestamp": at.isoformat(),
            "sent_at": at.isoformat(),
            "received_at": ms + 150,
            "properties": json.dumps(properties or {}),
            "context": json.dumps({"os": {"name": "Android"}}),
            "user_key": user,
            "device_id": f"dev-{user}",
            "event_time": ms,
            "client_time": ms,
            "reporting_currency": "GBP",
            "media_source": source[0],
            "campaign": source[1],
            "os": "Android",
            "os_version": "14",
            "app_version": "2.3.0",
            "country": "GB",
            "session_seq": seq,
            "processed_at": ms + 400,
            "request_id": uuid.uuid4().hex,
        }
    )
    rec.update(fields)
    return rec


def _session(
    app_id: str,
    user: str,
    start: datetime,
    rng: random.Random,
    source: tuple[str | None, str | None],
    sid: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of one session (start, funnel screens, maybe a purchase/error, heartbeat, end)."""
    step = rng.choice([2, 5, 15, 40, 120, 400])  # seconds between events: spreads session durations
    events: list[dict[str, Any]] = []
    t = start

    def add(etype: str, event: str | None, props: dict[str, Any] | None = None, **f: Any) -> None:
        nonlocal t
        events.append(
            enriched(
                app_id,
                user,
                etype,
                event,
                t,
                session_id=sid,
                seq=len(events),
                source=source,
                properties=props,
                **f,
            )
        )
        t += timedelta(seconds=step)

    add("track", "session_start")
    for i, screen in enumerate(FUNNEL):
        if i and rng.random() > 0.65:
            break
        add("screen", screen, {"name": screen})
    if events[-1]["event"] == "checkout":
        cur = rng.choice(list(RATES))
        amount = round(rng.uniform(1, 60), 2)
        usd = amount / RATES[cur]
        hour = _ms(t.replace(minute=0, second=0, microsecond=0))
        add(
            "track",
            "purchase",
            {"revenue": amount, "currency": cur, "product_id": "gems_100"},
            revenue=amount,
            currency=cur,
            revenue_usd=usd,
            revenue_reporting=usd * RATES["GBP"],
            fx_rate_usd=RATES[cur],
            fx_rate_reporting=RATES["GBP"],
            fx_hour=hour,
            fx_status="ok",
            product_id="gems_100",
        )
    if rng.random() < 0.25:
        level, code = rng.choice(ERRORS)
        add(
            "track",
            "error",
            {
                "error_level": level,
                "error_code": code,
                "error_message": "boom",
                "error_stacktrace": "at main()",
                "metadata": {},
            },
            error_level=level,
            error_code=code,
        )
    offset = (t - start).total_seconds() + step
    add("heartbeat", "heartbeat", {"offset": offset}, heartbeat_offset=offset)
    add("track", "session_end")
    end = datetime.fromtimestamp(events[-1]["event_time"] / 1000, UTC)
    session = {
        "app_id": app_id,
        "session_id": sid,
        "user_key": user,
        "device_id": f"dev-{user}",
        "user_id": user,
        "started_at": _ms(start),
        "ended_at": _ms(end),
        "duration_s": (end - start).total_seconds(),
        "events": len(events),
        "heartbeats": 1,
        "screens": sum(e["type"] == "screen" for e in events),
        "first_screen": "home",
        "media_source": source[0],
        "campaign": source[1],
        "closed": True,
        "close_reason": "session_end",
        "version": _ms(end) + 1000,
    }
    return events, session


def build_dataset(app_id: str, now: datetime, users: int = 50, seed: int = 7) -> Dataset:
    """A deterministic dataset for the dashboard over the ``DAYS`` days ending ``now`` (pure).

    Regular users form ten cohorts (first seen 2, 6, ..., 38 days ago) and come back with a decaying
    probability; every third one is active today; four
    "returning" users are active 44 days ago, then not for 40 days (re-engaged); today's sessions
    start 20 minutes before ``now`` (clamped to today), so the "events per minute" tile starts at 0.
    """
    rng = random.Random(seed)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    out = Dataset([], [], [])
    plan: dict[str, list[int]] = {}
    for i in range(users):
        first = 2 + 4 * (i % 10)  # ten cohorts of five users, 2 to 38 days ago
        later = [d for d in range(first - 1, -1, -1) if rng.random() < 0.7 * 0.93 ** (first - d)]
        plan[f"user{i:02d}"] = [first, *later] + ([0] if i % 3 == 0 else [])
    for i in range(4):
        plan[f"back{i}"] = [DAYS - 1, DAYS - 2, 3, 1]
    for n, (user, days_ago) in enumerate(sorted(plan.items())):
        source = SOURCES[n % len(SOURCES)]
        for d in sorted(set(days_ago), reverse=True):
            day = today - timedelta(days=d)
            start = day + timedelta(hours=8, minutes=(n * 13) % 600)
            if d == 0:
                start = max(today + timedelta(seconds=1), now - timedelta(minutes=20) + timedelta(seconds=n))
            sid = f"s-{user}-{day:%Y%m%d}"
            events, session = _session(app_id, user, start, rng, source, sid)
            if d == 0:  # keep today's events out of the last few minutes (the live test adds those)
                limit = _ms(now - timedelta(minutes=4))
                events = [e for e in events if e["event_time"] <= limit] or events[:1]
            out.events.extend((f"{app_id}:dev-{user}", e) for e in events)
            out.sessions.append((f"{app_id}:{sid}", session))
    for k in range(24):
        reason = REASONS[k % len(REASONS)] if k % 3 else REASONS[0]
        at = today - timedelta(days=k % 10, hours=-(k % 12) - 1)
        payload = {
            "type": "track",
            "event": "-bad name" if reason == "invalid_event_name" else "x",
            "app_id": app_id,
        }
        out.invalid.append(
            (
                f"{app_id}:dev-bad{k}",
                {
                    "app_id": app_id,
                    "message_id": f"bad-{k}",
                    "stage": "validate",
                    "reason": reason,
                    "message": f"fixture dead letter: {reason}",
                    "field": "event",
                    "payload": json.dumps(payload),
                    "received_at": _ms(at),
                    "failed_at": _ms(at) + 5,
                    "source_topic": None,
                    "source_partition": None,
                    "source_offset": None,
                },
            )
        )
    return out


def live_burst(
    app_id: str, now: datetime, users: int = 5, per_user: int = 6
) -> list[tuple[str, dict[str, Any]]]:
    """Events "happening now" from users new today: they raise events/min, online now and DAU."""
    out = []
    for u in range(users):
        user = f"live{u}-{uuid.uuid4().hex[:6]}"
        for i in range(per_user):
            at = now + timedelta(milliseconds=10 * i)
            out.append(
                (
                    f"{app_id}:dev-{user}",
                    enriched(
                        app_id,
                        user,
                        "screen",
                        FUNNEL[i % len(FUNNEL)],
                        at,
                        session_id=f"s-{user}",
                        seq=i,
                        source=(None, None),
                        properties={"name": FUNNEL[i % len(FUNNEL)]},
                    ),
                )
            )
    return out


def produce(topic: str, schema: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Encode with the schema's codec and produce to ``topic`` (acks=all), waiting for delivery."""
    from confluent_kafka import Producer

    from schemas import codec
    from trackflow.config import KafkaSettings

    c = codec(schema)
    p = Producer({**KafkaSettings().client_config(), "acks": "all", "linger.ms": 20})
    errors: list[Any] = []
    for key, rec in records:
        p.produce(
            topic,
            key=key.encode(),
            value=c.encode(rec, topic),
            on_delivery=lambda err, _m: errors.append(err) if err else None,
        )
        p.poll(0)
    assert p.flush(30) == 0, "messages still in the producer queue"
    assert not errors, errors


@dataclass
class SinkServer:
    """A running ``trackflow sink`` subprocess and its read API."""

    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.base_url + path, params=params, headers={"X-Read-Key": READ_KEY}, timeout=30)
        r.raise_for_status()
        return r.json()
