"""A hand-built dataset with known answers, for the metric tests (app ``m-app``, UTC).

Users and devices (user_key / device_id), with the days they are active::

    u1  d1       Oct 1 (open 10:00, view 10:10, buy 10:20 10 EUR = 11 USD = 8 GBP, p1)
                 Oct 2 (screen home 08:00, refund 09:00 -2 USD = -1.6 GBP, p1)
                 Oct 8 (errors: Error/E1 "boom", Error/E1 "bang", Warning/W1 "slow")
    u2  d2, d3   Oct 1 on d2 (open 09:00, view 09:30, buy 11:00 5 USD = 4 GBP, p2)
                 Oct 3 on d3 (error Error/E1 "boom")
    u3  d4       Oct 2 (open 12:00), Oct 20 (open 12:00)
    u4  d5       Sep 1 (open), Oct 15 (buy 20000 USD: out of range, p1)

Attribution: u1, u2 from google/c1; u3 from fb/c2; u4 none.
Sessions: s1 u1 Oct 1 (interim 5 s, final 10 s), s2 u1 Oct 1 20 s, s3 u2 Oct 1 40 s, s4 u3 Oct 2 400 s.
Dead letters: Oct 3: 2 x validate/invalid_event_name, 1 x validate/missing_field.

Expected answers are in the tests (test_metrics.py), each next to its hand computation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas import defaults
from sinks.base import Batch

APP = "m-app"
TOPIC = "fixture.events"
_ATTR = {"u1": ("google", "c1"), "u2": ("google", "c1"), "u3": ("fb", "c2"), "u4": (None, None)}


def ms(month: int, day: int, hour: int = 12, minute: int = 0) -> int:
    return int(datetime(2026, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def ev(n: int, user: str, device: str, t: int, event: str, **extra: Any) -> dict[str, Any]:
    r = defaults("enriched_event")
    src, camp = _ATTR[user]
    r.update(
        message_id=f"m{n}", type="track", event=event, app_id=APP, anonymous_id=device, user_id=user,
        user_key=user, device_id=device, received_at=t, event_time=t, processed_at=t + 5,
        reporting_currency="GBP", media_source=src, campaign=camp,
    )
    r.update(extra)
    return r


def buy(n: int, user: str, device: str, t: int, amount: float, cur: str, usd: float, gbp: float,
        product: str, in_range: bool = True, event: str = "buy") -> dict[str, Any]:
    return ev(n, user, device, t, event, revenue=amount, currency=cur, revenue_usd=usd, revenue_reporting=gbp,
              fx_status="ok", revenue_in_range=in_range, product_id=product)


def err(n: int, user: str, device: str, t: int, level: str, code: str, message: str) -> dict[str, Any]:
    import json

    return ev(n, user, device, t, "error", error_level=level, error_code=code,
              properties=json.dumps({"error_level": level, "error_code": code, "error_message": message}))


def events() -> list[dict[str, Any]]:
    return [
        ev(1, "u1", "d1", ms(10, 1, 10, 0), "open"),
        ev(2, "u1", "d1", ms(10, 1, 10, 10), "view"),
        buy(3, "u1", "d1", ms(10, 1, 10, 20), 10.0, "EUR", 11.0, 8.0, "p1"),
        ev(4, "u1", "d1", ms(10, 2, 8, 0), "home", type="screen"),
        buy(5, "u1", "d1", ms(10, 2, 9, 0), -2.0, "USD", -2.0, -1.6, "p1", event="refund"),
        err(6, "u1", "d1", ms(10, 8, 9, 0), "Error", "E1", "boom"),
        err(7, "u1", "d1", ms(10, 8, 9, 5), "Error", "E1", "bang"),
        err(8, "u1", "d1", ms(10, 8, 9, 10), "Warning", "W1", "slow"),
        ev(9, "u2", "d2", ms(10, 1, 9, 0), "open"),
        ev(10, "u2", "d2", ms(10, 1, 9, 30), "view"),
        buy(11, "u2", "d2", ms(10, 1, 11, 0), 5.0, "USD", 5.0, 4.0, "p2"),
        err(12, "u2", "d3", ms(10, 3, 15, 0), "Error", "E1", "boom"),
        ev(13, "u3", "d4", ms(10, 2, 12, 0), "open"),
        ev(14, "u3", "d4", ms(10, 20, 12, 0), "open"),
        ev(15, "u4", "d5", ms(9, 1, 12, 0), "open"),
        buy(16, "u4", "d5", ms(10, 15, 12, 0), 20000.0, "USD", 20000.0, 16000.0, "p1", in_range=False),
    ]


def session(sid: str, user: str, device: str, start: int, duration: float, version: int,
            closed: bool = True) -> dict[str, Any]:
    r = defaults("session")
    r.update(app_id=APP, session_id=sid, user_key=user, device_id=device, user_id=user, started_at=start,
             ended_at=start + int(duration * 1000), duration_s=duration, events=3, heartbeats=1, screens=1,
             closed=closed, close_reason="inactivity" if closed else "open", version=version)
    return r


def sessions() -> list[dict[str, Any]]:
    return [
        session("s1", "u1", "d1", ms(10, 1, 10, 0), 5.0, 1, closed=False),
        session("s1", "u1", "d1", ms(10, 1, 10, 0), 10.0, 2),
        session("s2", "u1", "d1", ms(10, 1, 14, 0), 20.0, 1),
        session("s3", "u2", "d2", ms(10, 1, 9, 0), 40.0, 1),
        session("s4", "u3", "d4", ms(10, 2, 12, 0), 400.0, 1),
    ]


def invalid() -> list[dict[str, Any]]:
    t = ms(10, 3, 10, 0)
    base = {"app_id": APP, "stage": "validate", "payload": "{}", "received_at": t, "failed_at": t,
            "field": None, "source_topic": None, "source_partition": None, "source_offset": None}
    return [
        {**base, "message_id": "x1", "reason": "invalid_event_name", "message": "event name starts with ="},
        {**base, "message_id": "x2", "reason": "invalid_event_name", "message": "event name has a space"},
        {**base, "message_id": "x3", "reason": "missing_field", "message": "error_code is required",
         "field": "error_code"},
    ]


def batches() -> list[Batch]:
    evs = events()
    ss = sessions()
    inv = invalid()
    return [
        Batch(TOPIC, 0, list(range(len(evs))), evs, "events"),
        Batch("fixture.sessions", 0, [0], ss[:1], "sessions"),
        Batch("fixture.sessions", 0, list(range(1, len(ss))), ss[1:], "sessions"),
        Batch("fixture.invalid", 0, list(range(len(inv))), inv, "invalid"),
    ]
