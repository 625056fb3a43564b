"""Seeded, reproducible traffic for a game and a shop: the pure generator behind ``trackflow simulate``.

:func:`generate` is a pure function of ``(seed, users, days, start date, apps, rates)``. It returns
the events to send, in the collector's three HTTP payload shapes, and an :class:`Expected` summary
of what a correct pipeline must report for them. Nothing here does I/O; the sender lives in
:mod:`trackflow.simulate_cli`.

What the traffic models
-----------------------

- **game** (mobile): gameplay through the app-tracking API (``POST /v1/app-tracking``: uuid, event
  in identify|track|screen|heartbeat, ref, timestamp as epoch ms, session_id, offset, user_id, action,
  action_properties); installs and in-app purchases server-to-server through AppsFlyer S2S
  (``POST /inappevent/{app_id}``: eventName, eventValue, eventCurrency, eventTime, appsflyer_id,
  customer_user_id, ip). AppsFlyer events carry no id and are exempt from the content rule, so
  their duplicates are identical resends (the collector derives the same message id). Web2 store bundles and web3 purchases paid in tokens use the monetization
  fields (bundle_id, bundle_package_items, bundle_paid_id, bundle_paid_amount, bundle_paid_currency,
  platform, tx_ref).
- **shop** (web/mobile): everything through the Segment-compatible batch API (``POST /v1/batch``):
  installs (``application_installed``; names may not contain spaces, so not Segment's
  "Application Installed") with ``context.campaign`` (utm), identify on login, a screen funnel
  Home -> Category -> Product -> Cart -> Checkout, orders (``order_completed``) with
  ``revenue``/``value`` + ``currency`` in several currencies, refunds (``order_refunded``, negative
  revenue), heartbeats as track events named ``heartbeat``.
- Both: explicit ``session_start`` / ``session_end`` track events carrying ``session_id``;
  heartbeats every 30 s (``offset`` = seconds since session start); error events at every level;
  about 2 % duplicates (the same messageId re-sent, or identical content with a new id within 10 s)
  and about 1 % invalid events, each tagged with the dead-letter reason the pipeline should give.

Timestamps are backdated over ``days`` days starting at ``start`` (UTC midnight). Sessions never
cross midnight, so per-day active users are exact. ``sentAt`` is not generated: the sender sets it
to the real send time, as an SDK flushing an offline queue would.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson

Shape = Literal["segment", "app_tracking", "appsflyer_s2s"]
Kind = Literal["event", "dup_message_id", "dup_content", "invalid"]
T = TypeVar("T")

APP_NAMES: tuple[str, ...] = ("game", "shop")
ERROR_LEVELS: tuple[str, ...] = ("Info", "Debug", "Warning", "Error", "Critical")
HEARTBEAT_S = 30
OUT_OF_RANGE_USD = 10_000

GAME_FUNNEL: tuple[str, ...] = ("MainMenu", "LevelSelect", "Level", "LevelComplete")
SHOP_FUNNEL: tuple[str, ...] = ("Home", "Category", "Product", "Cart", "Checkout")

#: (media_source, campaign, weight); AppsFlyer media source ids, organic has no campaign.
MEDIA_SOURCES: tuple[tuple[str, str | None, float], ...] = (
    ("organic", None, 0.35),
    ("googleadwords_int", "winter_sale", 0.2),
    ("Facebook Ads", "lookalike_q4", 0.2),
    ("tiktokglobal_int", "ugc_launch", 0.15),
    ("unityads_int", "rewarded_video", 0.1),
)
SHOP_CURRENCIES: tuple[tuple[str, float], ...] = (
    ("USD", 0.35),
    ("EUR", 0.25),
    ("GBP", 0.15),
    ("JPY", 0.1),
    ("BRL", 0.05),
    ("CAD", 0.05),
    ("CHF", 0.05),
)
GAME_CURRENCIES: tuple[tuple[str, float], ...] = (("USD", 0.4), ("EUR", 0.3), ("GBP", 0.15), ("KRW", 0.15))
#: token symbols and ERC-20 contract addresses (USDC, MATIC on Ethereum)
TOKENS: tuple[tuple[str, str], ...] = (
    ("ETH", "ethereum"),
    ("USDC", "polygon"),
    ("MATIC", "polygon"),
    ("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "ethereum"),
    ("0x7d1afa7b718fb893db30a3abc0cfc608aacfebb0", "ethereum"),
)
ZERO_DECIMAL = frozenset({"JPY", "KRW"})
COUNTRY_IPS: tuple[tuple[str, str], ...] = (
    ("GB", "81.2.69"),
    ("DE", "85.214.132"),
    ("FR", "90.84.12"),
    ("US", "23.21.45"),
    ("BR", "177.71.207"),
    ("JP", "126.78.3"),
    ("KR", "211.234.101"),
    ("CA", "99.226.17"),
)
PLATFORMS: tuple[tuple[str, str, str], ...] = (
    ("iOS", "17.5", "iPhone15,2"),
    ("Android", "14", "Pixel 8"),
    ("Android", "13", "SM-S911B"),
)
ERROR_CODES: tuple[tuple[str, str], ...] = (
    ("E_NET_TIMEOUT", "request to /api/profile timed out"),
    ("E_ASSET_MISSING", "texture atlas ui_shop@2x not found"),
    ("E_PAYMENT_DECLINED", "store returned PAYMENT_DECLINED"),
    ("E_SAVE_CONFLICT", "cloud save version conflict"),
    ("E_NULL_REF", "NullReferenceException in InventoryView.Refresh"),
)


class ExpectedReason(StrEnum):
    """Dead-letter reason codes the simulator expects the validate stage to give.

    They are values of ``pipeline.reasons.Reason`` (a unit test checks it); the simulator does not
    import the pipeline so that it can run from a collector-only install.
    """

    INVALID_EVENT_NAME = "invalid_event_name"
    INVALID_REVENUE = "invalid_revenue"
    MISSING_FIELD = "missing_field"
    VALUE_TOO_LONG = "value_too_long"


@dataclass(frozen=True)
class SimConfig:
    """Parameters of a simulation.

    Parameters:
        seed: random seed; the same config always yields the same events.
        users: number of simulated people, split evenly across ``apps``.
        days: how many days of history to generate.
        start: first day (UTC). ``None``: ``days`` days before today, so the last day is yesterday.
        apps: which of ``game`` / ``shop`` to simulate.
        duplicate_rate: duplicates as a share of the natural events (~0.02).
        invalid_rate: invalid events as a share of the natural events (~0.01).
    """

    seed: int = 42
    users: int = 200
    days: int = 14
    start: date | None = None
    apps: tuple[str, ...] = APP_NAMES
    duplicate_rate: float = 0.02
    invalid_rate: float = 0.01

    def start_date(self) -> date:
        if self.start is not None:
            return self.start
        return datetime.now(UTC).date() - timedelta(days=self.days)


@dataclass(frozen=True)
class Outgoing:
    """One event to send.

    Parameters:
        seq: position in the send order (events sorted by send time).
        lane: the simulated person; the sender keeps each lane's events in order.
        app: ``game`` or ``shop`` (a simulator name, mapped to a real app id by the sender).
        shape: which HTTP API carries it.
        payload: the event in that API's JSON shape (no ``sentAt``).
        ts_ms: the event's client time.
        kind: natural ``event``, a duplicate (``dup_message_id`` / ``dup_content``) or ``invalid``.
        reason: for invalid events, the expected dead-letter reason.
        field: for invalid events, the field at fault.
    """

    seq: int
    lane: int
    app: str
    shape: Shape
    payload: dict[str, Any]
    ts_ms: int
    kind: Kind = "event"
    reason: str | None = None
    field: str | None = None


@dataclass
class AppExpected:
    """What a correct pipeline must report for one app (natural events only: no dups, no invalid)."""

    users: int = 0
    devices: int = 0
    installs: int = 0
    installs_by_media_source: dict[str, int] = field(default_factory=dict)
    installs_by_campaign: dict[str, int] = field(default_factory=dict)
    events: int = 0
    events_by_shape: dict[str, int] = field(default_factory=dict)
    events_by_type: dict[str, int] = field(default_factory=dict)
    identifies: int = 0
    sessions: int = 0
    heartbeats: int = 0
    session_seconds: int = 0
    screens: dict[str, int] = field(default_factory=dict)
    funnel: list[dict[str, Any]] = field(default_factory=list)
    purchases: int = 0
    refunds: int = 0
    revenue_by_currency: dict[str, float] = field(default_factory=dict)
    out_of_range: dict[str, Any] = field(default_factory=dict)
    web3_purchases: int = 0
    web3_by_token: dict[str, float] = field(default_factory=dict)
    errors_by_level: dict[str, int] = field(default_factory=dict)
    dau: dict[str, int] = field(default_factory=dict)


@dataclass
class Expected:
    """The "expected" summary printed by ``trackflow simulate`` and checked by the demo report.

    ``sent`` counts events (not requests). Every event is well-formed for the collector, so all are
    expected to be accepted; ``expected_stored`` = sent - duplicates - invalid.
    """

    seed: int
    users: int
    days: int
    start: str
    end: str
    sent: int = 0
    sent_by_app: dict[str, int] = field(default_factory=dict)
    sent_by_shape: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    invalid_by_app: dict[str, int] = field(default_factory=dict)
    expected_stored: int = 0
    apps: dict[str, AppExpected] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        from dataclasses import asdict

        return asdict(self)


@dataclass
class Simulation:
    """The output of :func:`generate`: events in send order and the expected summary."""

    config: SimConfig
    events: list[Outgoing]
    expected: Expected


# -- people and their activity ---------------------------------------------------------------------


@dataclass
class _Person:
    idx: int
    app: str
    user_id: str
    device_id: str
    af_id: str
    install_day: int
    media_source: str
    campaign: str | None
    country: str
    ip: str
    platform: tuple[str, str, str]
    engagement: float
    currency: str
    level: int = 1
    logged_in: bool = False
    refundable: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class _Draft:
    """A natural event before ordering: shape payload plus bookkeeping for the summary."""

    person: _Person
    shape: Shape
    payload: dict[str, Any]
    ts_ms: int
    etype: str
    name: str | None
    session_key: str | None = None


def _weighted(rng: random.Random, items: tuple[tuple[T, float], ...]) -> T:
    return rng.choices([i[0] for i in items], weights=[i[1] for i in items])[0]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _af_time(ts_ms: int) -> str:
    """AppsFlyer's eventTime format: ``yyyy-MM-dd HH:mm:ss.SSS`` in UTC (ISO 8601 with a space)."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _amount(rng: random.Random, currency: str, low: float, high: float) -> float:
    scale = {"JPY": 150.0, "KRW": 1350.0, "BRL": 5.0}.get(currency, 1.0)
    value = rng.uniform(low, high) * scale
    if currency in ZERO_DECIMAL:
        return float(round(value))
    return round(round(value) - 0.01, 2) if value > 1 else round(value, 2)


def _make_people(rng: random.Random, cfg: SimConfig) -> list[_Person]:
    people: list[_Person] = []
    apps = [a for a in APP_NAMES if a in cfg.apps]
    for idx in range(cfg.users):
        app = apps[idx % len(apps)]
        media_source, campaign = _weighted(rng, tuple(((m, c), w) for m, c, w in MEDIA_SOURCES))
        country, prefix = rng.choice(COUNTRY_IPS)
        install_day = min(cfg.days - 1, int(cfg.days * rng.random() ** 1.6))
        people.append(
            _Person(
                idx=idx,
                app=app,
                user_id=f"{app[0]}u_{rng.getrandbits(40):010x}",
                device_id=_uuid(rng),
                af_id=f"{1_690_000_000_000 + rng.getrandbits(34)}-{rng.getrandbits(60) % 10**19:019d}",
                install_day=install_day,
                media_source=media_source,
                campaign=campaign,
                country=country,
                ip=f"{prefix}.{rng.randint(2, 254)}",
                platform=rng.choice(PLATFORMS),
                engagement=rng.uniform(0.4, 1.6),
                currency=_weighted(rng, GAME_CURRENCIES if app == "game" else SHOP_CURRENCIES),
            )
        )
    return people


def _active_days(rng: random.Random, p: _Person, days: int) -> list[int]:
    """Install day, then a decaying return probability (a realistic retention curve)."""
    out = [p.install_day]
    churned = False
    for d in range(p.install_day + 1, days):
        age = d - p.install_day
        if not churned and rng.random() < 0.04 * age**0.5:
            churned = True
        prob = 0.03 if churned else min(0.95, p.engagement * (0.18 + 0.5 * age**-0.7))
        if rng.random() < prob:
            out.append(d)
    return out


def _session_starts(rng: random.Random, day_start_ms: int) -> list[int]:
    """1-3 session start times in distinct hours, early enough in the hour not to cross midnight."""
    n = rng.choice((1, 1, 1, 2, 2, 3))
    hours = sorted(rng.sample(range(7, 24), n))
    return [day_start_ms + (h * 3600 + rng.randint(0, 40 * 60)) * 1000 for h in hours]


# -- sessions ---------------------------------------------------------------------------------------


class _SessionBuilder:
    """Accumulates one session's events, keeping the clock and the heartbeat offsets."""

    def __init__(self, rng: random.Random, person: _Person, start_ms: int, shape: Shape) -> None:
        self.rng = rng
        self.p = person
        self.start = start_ms
        self.t = start_ms
        self.shape: Shape = shape
        self.sid = _uuid(rng)
        self.out: list[_Draft] = []
        self.last_screen: str | None = None

    def tick(self, low: int, high: int) -> None:
        self.t += self.rng.randint(low, high) * 1000

    def offset(self) -> float:
        return round((self.t - self.start) / 1000, 3)

    # shape-specific encoders ----------------------------------------------------------------------

    def _segment(
        self,
        etype: str,
        name: str | None,
        props: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        context_extra: dict[str, Any] | None = None,
    ) -> None:
        p = self.p
        os_name, os_version, model = p.platform
        ctx: dict[str, Any] = {
            "app": {"name": "Shoply", "version": "3.4.1", "build": "3401"},
            "device": {"id": p.device_id, "model": model, "type": os_name.lower()},
            "os": {"name": os_name, "version": os_version},
            "locale": {
                "GB": "en-GB",
                "DE": "de-DE",
                "FR": "fr-FR",
                "JP": "ja-JP",
                "BR": "pt-BR",
                "KR": "ko-KR",
            }.get(p.country, "en-US"),
            "ip": p.ip,
            "library": {"name": "analytics-react-native", "version": "2.19.2"},
            "timezone": "UTC",
        }
        if context_extra:
            ctx.update(context_extra)
        payload: dict[str, Any] = {
            "messageId": _uuid(self.rng),
            "type": etype,
            "anonymousId": p.device_id,
            "timestamp": _iso(self.t),
            "context": ctx,
        }
        if p.logged_in or etype == "identify":
            payload["userId"] = p.user_id
        if name is not None:
            if etype in ("screen", "page"):
                payload["name"] = name
            payload["event"] = name
        if props is not None:
            payload["properties"] = props
        if traits is not None:
            payload["traits"] = traits
        self.out.append(_Draft(p, "segment", payload, self.t, etype, name, self.sid))

    def _tracking(self, etype: str, action: str | None, props: dict[str, Any] | None = None) -> None:
        p = self.p
        payload: dict[str, Any] = {
            "uuid": _uuid(self.rng),
            "event": etype,
            "timestamp": self.t,
            "session_id": self.sid,
            "offset": self.offset(),
            "user_id": p.user_id,
            "device_id": p.device_id,
        }
        if action is not None:
            payload["action"] = action
        if etype == "screen":
            payload["ref"] = self.last_screen
        if props is not None:
            payload["action_properties"] = props
        self.out.append(_Draft(p, "app_tracking", payload, self.t, etype, action, self.sid))

    def _appsflyer(self, event_name: str, value: dict[str, Any], currency: str | None = None) -> None:
        p = self.p
        payload: dict[str, Any] = {
            "eventName": event_name,
            "eventValue": value,
            "eventTime": _af_time(self.t),
            "appsflyer_id": p.af_id,
            "customer_user_id": p.user_id,
            "ip": p.ip,
        }
        if currency is not None:
            payload["eventCurrency"] = currency
        self.out.append(_Draft(p, "appsflyer_s2s", payload, self.t, "track", event_name, None))

    # generic events, routed to the session's shape ------------------------------------------------

    def track(self, name: str, props: dict[str, Any]) -> None:
        if self.shape == "segment":
            self._segment("track", name, props)
        else:
            self._tracking("track", name, props)

    def screen(self, name: str, props: dict[str, Any] | None = None) -> None:
        if self.shape == "segment":
            self._segment("screen", name, props or {})
        else:
            self._tracking("screen", name, props)
        self.last_screen = name

    def identify(self, traits: dict[str, Any]) -> None:
        self.p.logged_in = True
        if self.shape == "segment":
            self._segment("identify", None, traits=traits)
        else:
            self._tracking("identify", None, traits)

    def session_start(self) -> None:
        self.track("session_start", {"session_id": self.sid})

    def session_end(self) -> None:
        self.track("session_end", {"session_id": self.sid, "duration": self.offset()})

    def heartbeats(self) -> None:
        """Heartbeats every 30 s from the start to the session's end, with their offsets."""
        end = self.t
        n = (end - self.start) // (HEARTBEAT_S * 1000)
        for k in range(1, n + 1):
            ts = self.start + k * HEARTBEAT_S * 1000
            saved, self.t = self.t, ts
            if self.shape == "segment":
                self._segment(
                    "track", "heartbeat", {"session_id": self.sid, "offset": float(k * HEARTBEAT_S)}
                )
            else:
                self._tracking("heartbeat", None)
            self.t = saved

    def error(self) -> None:
        level = self.rng.choice(ERROR_LEVELS)
        code, message = self.rng.choice(ERROR_CODES)
        self.track(
            "error",
            {
                "error_level": level,
                "error_code": code,
                "error_message": message,
                "error_stacktrace": f"at {code.lower()}.handler (app.js:{self.rng.randint(10, 999)}:17)",
                "metadata": {"screen": self.last_screen, "build": "3401", "attempt": self.rng.randint(1, 3)},
            },
        )


def _game_session(rng: random.Random, p: _Person, start_ms: int, first: bool, login: bool) -> list[_Draft]:
    s = _SessionBuilder(rng, p, start_ms, "app_tracking")
    if first:
        value: dict[str, Any] = {
            "media_source": p.media_source,
            "af_status": ("Organic" if p.campaign is None else "Non-organic"),
        }
        if p.campaign is not None:
            value["campaign"] = p.campaign
        s._appsflyer("install", value)
        s.tick(1, 3)
    s.session_start()
    s.tick(1, 3)
    if login:
        s.identify({"level": p.level, "platform": p.platform[0], "country": p.country})
        s.tick(2, 6)
    s.screen("MainMenu")
    s.tick(5, 15)
    if p.refundable and rng.random() < 0.15:  # a store refund, reported server-to-server
        cur, amount = p.refundable.pop()
        s._appsflyer("af_refund", {"af_revenue": str(-amount), "af_currency": cur}, cur)
        s.tick(2, 6)
    if rng.random() < 0.85:
        s.screen("LevelSelect")
        s.tick(5, 15)
        if rng.random() < 0.8:
            s.screen("Level", {"level": p.level})
            for _ in range(rng.randint(1, 4)):
                s.tick(3, 8)
                s.track("level_start", {"level": p.level})
                s.tick(30, 90)
                won = rng.random() < 0.7
                s.track(
                    "level_complete" if won else "level_fail",
                    {
                        "level": p.level,
                        "score": rng.randint(100, 5000),
                        "stars": rng.randint(1, 3) if won else 0,
                    },
                )
                if won:
                    p.level += 1
            if rng.random() < 0.7:
                s.tick(2, 5)
                s.screen("LevelComplete", {"level": p.level - 1})
    if rng.random() < 0.15:
        s.tick(3, 10)
        s.error()
    if rng.random() < 0.3:
        s.tick(5, 15)
        s.screen("Store")
        if rng.random() < 0.35:
            s.tick(10, 30)
            roll = rng.random()
            if roll < 0.55:  # IAP reported server-to-server by AppsFlyer
                cur = p.currency
                amount = _amount(rng, cur, 1, 20)
                s._appsflyer(
                    "af_purchase",
                    {
                        "af_revenue": str(amount),
                        "af_currency": cur,
                        "af_content_id": rng.choice(("gems_500", "gems_1200", "starter_pack")),
                        "af_quantity": 1,
                    },
                    cur,
                )
                p.refundable.append((cur, amount))
            elif roll < 0.8:  # web2 store bundle with the monetization fields
                cur = p.currency
                s.track(
                    "web2_purchase",
                    {
                        "bundle_id": rng.choice(("bundle_gold", "bundle_skins", "bundle_vip")),
                        "bundle_package_items": [{"item": "gold", "qty": rng.choice((100, 500, 1000))}],
                        "bundle_paid_id": f"GPA.{rng.getrandbits(48):014d}"[:22],
                        "bundle_paid_amount": _amount(rng, cur, 2, 30),
                        "bundle_paid_currency": cur,
                        "platform": "app_store" if p.platform[0] == "iOS" else "google_play",
                        "tx_ref": _uuid(rng),
                    },
                )
            else:  # web3 purchase paid in a token
                symbol, chain = rng.choice(TOKENS)
                amount = (
                    round(rng.uniform(0.001, 0.05), 4) if symbol == "ETH" else round(rng.uniform(1, 40), 2)
                )
                s.track(
                    "web3_purchase",
                    {
                        "bundle_id": rng.choice(("nft_sword", "nft_skin_legendary", "land_plot")),
                        "bundle_package_items": [{"item": "nft", "token_id": rng.randint(1, 10_000)}],
                        "bundle_paid_id": f"order_{rng.getrandbits(32):08x}",
                        "bundle_paid_amount": amount,
                        "bundle_paid_currency": symbol,
                        "platform": chain,
                        "tx_ref": "0x" + f"{rng.getrandbits(256):064x}",
                    },
                )
    s.tick(10, 40)
    s.session_end()
    s.heartbeats()
    return s.out


def _shop_session(
    rng: random.Random,
    p: _Person,
    start_ms: int,
    first: bool,
    login: bool,
    pending_refund: list[dict[str, Any]],
) -> list[_Draft]:
    s = _SessionBuilder(rng, p, start_ms, "segment")
    if first:
        campaign = {"source": p.media_source, "medium": "organic" if p.campaign is None else "cpc"}
        if p.campaign is not None:
            campaign["name"] = p.campaign
        props: dict[str, Any] = {"version": "3.4.1", "build": "3401", "media_source": p.media_source}
        if p.campaign is not None:
            props["campaign"] = p.campaign
        s._segment("track", "application_installed", props, context_extra={"campaign": campaign})
        s.tick(1, 3)
    s.session_start()
    s.tick(2, 8)
    s.screen("Home")
    if login and not p.logged_in:
        s.tick(3, 10)
        s.identify({"plan": rng.choice(("free", "plus")), "country": p.country})
    elif login:
        s.tick(2, 6)
        s.identify({"plan": "plus", "country": p.country})
    if pending_refund and rng.random() < 0.7:
        order = pending_refund.pop()
        s.tick(4, 12)
        s.track(
            "order_refunded",
            {"order_id": order["order_id"], "revenue": -order["amount"], "currency": order["currency"]},
        )
    if rng.random() < 0.75:
        s.tick(4, 14)
        cat = rng.choice(("shoes", "jackets", "bags", "watches"))
        s.screen("Category", {"category": cat})
        if rng.random() < 0.75:
            products: list[dict[str, Any]] = []
            for n in rng.sample(range(1000, 10_000), rng.randint(1, 3)):
                s.tick(4, 14)
                pid = f"sku_{n}"
                price = _amount(rng, p.currency, 15, 120)
                products.append({"product_id": pid, "price": price, "quantity": 1})
                s.screen(
                    "Product", {"product_id": pid, "category": cat, "price": price, "currency": p.currency}
                )
            if rng.random() < 0.55:
                s.tick(4, 14)
                s.track(
                    "product_added",
                    {"product_id": products[-1]["product_id"], "price": products[-1]["price"]},
                )
                s.tick(3, 10)
                s.screen("Cart", {"items": 1})
                if rng.random() < 0.65:
                    s.tick(4, 14)
                    s.screen("Checkout", {"step": 1})
                    if rng.random() < 0.75:
                        s.tick(5, 14)
                        cur = p.currency
                        amount: float = round(float(products[-1]["price"]), 2)
                        if rng.random() < 0.05:
                            cur, amount = "USD", round(rng.uniform(12_000, 30_000), 2)
                        key = "value" if rng.random() < 0.15 else "revenue"
                        order_id = f"ord_{rng.getrandbits(40):010x}"
                        s.track(
                            "order_completed",
                            {"order_id": order_id, key: amount, "currency": cur, "products": products[-1:]},
                        )
                        if rng.random() < 0.2 and amount < OUT_OF_RANGE_USD:
                            pending_refund.append({"order_id": order_id, "amount": amount, "currency": cur})
    if rng.random() < 0.12:
        s.tick(3, 12)
        s.error()
    s.tick(4, 14)
    s.session_end()
    s.heartbeats()
    return s.out


# -- invalid events and duplicates ------------------------------------------------------------------

_BAD_NAMES = ("=cmd|' /C calc'!A0", "add to cart", "+SUM(1,2)", "-2+3", '"quoted"', "level up")


def _invalid_from(rng: random.Random, anchor: _Draft, k: int) -> tuple[_Draft, str, str]:
    """An invalid event from the anchor's person and session, 2 s after it: (draft, reason, field)."""
    p = anchor.person
    ts = anchor.ts_ms + 2000
    s = _SessionBuilder(rng, p, ts, "segment" if anchor.shape == "segment" else "app_tracking")
    s.t = ts
    if anchor.session_key:
        s.sid = anchor.session_key
    if anchor.shape == "appsflyer_s2s":
        s._appsflyer("af_purchase", {"af_revenue": "12,50", "af_currency": "EUR"}, "EUR")
        return s.out[0], ExpectedReason.INVALID_REVENUE, "af_revenue"
    variant = k % 5
    if variant == 0:
        s.track(_BAD_NAMES[(k // 5) % len(_BAD_NAMES)], {"source": "sim"})
        reason, fld = ExpectedReason.INVALID_EVENT_NAME, "event"
    elif variant == 1:
        s.track("purchase", {"revenue": "12,50", "currency": "EUR"})
        reason, fld = ExpectedReason.INVALID_REVENUE, "revenue"
    elif variant == 2:
        props = {
            "error_level": rng.choice(ERROR_LEVELS),
            "error_message": "boom",
            "error_stacktrace": "at main (app.js:1:1)",
            "metadata": {},
        }
        s.track("error", props)  # error_code missing
        reason, fld = ExpectedReason.MISSING_FIELD, "error_code"
    elif variant == 3:
        s.track(
            "web3_purchase",
            {
                "bundle_id": "nft_sword",
                "bundle_package_items": [],
                "bundle_paid_id": "order_x",
                "bundle_paid_amount": 0.01,
                "bundle_paid_currency": "ETH",
                "platform": "ethereum",
            },
        )  # tx_ref missing
        reason, fld = ExpectedReason.MISSING_FIELD, "tx_ref"
    else:
        s.track("feedback", {"comment": "x" * 1001})
        reason, fld = ExpectedReason.VALUE_TOO_LONG, "comment"
    return s.out[0], reason, fld


def _content_copy(rng: random.Random, d: _Draft) -> tuple[dict[str, Any], int]:
    """Same app, device, name and properties; a new id and a timestamp 1-4 s later."""
    payload = orjson.loads(orjson.dumps(d.payload))
    ts = d.ts_ms + rng.randint(1, 4) * 1000
    if d.shape == "segment":
        payload["messageId"] = _uuid(rng)
        payload["timestamp"] = _iso(ts)
    elif d.shape == "app_tracking":
        payload["uuid"] = _uuid(rng)
        payload["timestamp"] = ts
    else:
        payload["eventTime"] = _af_time(ts)
    return payload, ts


# -- the generator ----------------------------------------------------------------------------------


def generate(cfg: SimConfig) -> Simulation:
    """Generate the traffic and its expected summary; a pure function of ``cfg``."""
    if cfg.users < 1 or cfg.days < 1:
        raise ValueError("users and days must be positive")
    unknown = set(cfg.apps) - set(APP_NAMES)
    if unknown or not cfg.apps:
        raise ValueError(f"apps must be a non-empty subset of {APP_NAMES}, got {cfg.apps}")
    rng = random.Random(cfg.seed)
    start = cfg.start_date()
    day0_ms = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1000)
    people = _make_people(rng, cfg)

    drafts: list[_Draft] = []
    session_counts: Counter[str] = Counter()
    session_seconds: Counter[str] = Counter()
    funnel_users: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for p in people:
        prng = random.Random(f"{cfg.seed}:{p.idx}")
        refunds: list[dict[str, Any]] = []
        first = True
        for day in _active_days(prng, p, cfg.days):
            for i, st in enumerate(_session_starts(prng, day0_ms + day * 86_400_000)):
                if p.app == "game":
                    out = _game_session(prng, p, st, first, login=(i == 0))
                else:
                    out = _shop_session(
                        prng, p, st, first, login=first or prng.random() < 0.3, pending_refund=refunds
                    )
                first = False
                drafts.extend(out)
                session_counts[p.app] += 1
                session_seconds[p.app] += (max(d.ts_ms for d in out) - st) // 1000
                funnel = GAME_FUNNEL if p.app == "game" else SHOP_FUNNEL
                seen = [d.name for d in out if d.etype == "screen"]
                for k, step in enumerate(funnel):
                    if all(f in seen for f in funnel[: k + 1]):
                        funnel_users[p.app][step].add(p.idx)

    # natural events are all accepted; now add duplicates and invalid events
    items: list[tuple[int, int, _Draft, Kind, str | None, str | None]] = []  # (send_ms, tiebreak, ...)
    for n, d in enumerate(drafts):
        items.append((d.ts_ms, n, d, "event", None, None))
    n_nat = len(drafts)
    n_dup = round(n_nat * cfg.duplicate_rate)
    n_inv = round(n_nat * cfg.invalid_rate)
    pick = random.Random(f"{cfg.seed}:extras")
    for k, idx in enumerate(pick.sample(range(n_nat), min(n_nat, n_dup))):
        d = drafts[idx]
        if d.shape == "appsflyer_s2s" or k % 5 < 3:
            # a client retry: the identical payload re-sent a few minutes later. AppsFlyer events
            # carry no id; the collector derives one from the content, so a resend has the same id.
            items.append((d.ts_ms + 300_000, n_nat + k, d, "dup_message_id", None, None))
        else:
            payload, ts = _content_copy(pick, d)
            dup = _Draft(d.person, d.shape, payload, ts, d.etype, d.name, d.session_key)
            items.append((ts, n_nat + k, dup, "dup_content", None, None))
    for k, idx in enumerate(pick.sample(range(n_nat), min(n_nat, n_inv))):
        bad, reason, fld = _invalid_from(pick, drafts[idx], k)
        items.append((bad.ts_ms, 2 * n_nat + k, bad, "invalid", reason, fld))
    items.sort(key=lambda it: (it[0], it[1]))

    events = [
        Outgoing(
            seq=i,
            lane=d.person.idx,
            app=d.person.app,
            shape=d.shape,
            payload=d.payload,
            ts_ms=d.ts_ms,
            kind=kind,
            reason=reason,
            field=fld,
        )
        for i, (_, _, d, kind, reason, fld) in enumerate(items)
    ]
    end = start + timedelta(days=cfg.days - 1)
    expected = _summarize(cfg, start, end, drafts, events, session_counts, session_seconds, funnel_users)
    return Simulation(config=cfg, events=events, expected=expected)


def _revenue_of(d: _Draft) -> tuple[str, float] | None:
    """(currency, amount) of a natural purchase or refund, as the pipeline should read it."""
    if d.shape == "appsflyer_s2s":
        v = d.payload["eventValue"]
        if "af_revenue" in v:
            return str(v.get("af_currency", "USD")), float(v["af_revenue"])
        return None
    props = d.payload.get("properties" if d.shape == "segment" else "action_properties") or {}
    for key in ("revenue", "value"):
        if key in props and not isinstance(props[key], bool):
            return str(props.get("currency", "USD")), float(props[key])
    if "bundle_paid_amount" in props:
        return str(props["bundle_paid_currency"]), float(props["bundle_paid_amount"])
    return None


def _summarize(
    cfg: SimConfig,
    start: date,
    end: date,
    drafts: list[_Draft],
    events: list[Outgoing],
    session_counts: Counter[str],
    session_seconds: Counter[str],
    funnel_users: dict[str, dict[str, set[int]]],
) -> Expected:
    exp = Expected(
        seed=cfg.seed, users=cfg.users, days=cfg.days, start=start.isoformat(), end=end.isoformat()
    )
    exp.sent = len(events)
    exp.sent_by_app = dict(sorted(Counter(e.app for e in events).items()))
    exp.sent_by_shape = dict(sorted(Counter(e.shape for e in events).items()))
    exp.duplicates = {
        "same_message_id": sum(e.kind == "dup_message_id" for e in events),
        "same_content": sum(e.kind == "dup_content" for e in events),
    }
    exp.invalid = dict(sorted(Counter(str(e.reason) for e in events if e.kind == "invalid").items()))
    exp.invalid_by_app = dict(sorted(Counter(e.app for e in events if e.kind == "invalid").items()))
    exp.expected_stored = exp.sent - sum(exp.duplicates.values()) - sum(exp.invalid.values())

    by_app: dict[str, list[_Draft]] = defaultdict(list)
    for d in drafts:
        by_app[d.person.app].append(d)
    for app in [a for a in APP_NAMES if a in cfg.apps]:
        ds = by_app.get(app, [])
        a = AppExpected()
        a.users = len({d.person.idx for d in ds})
        a.devices = a.users
        installs = [d for d in ds if d.name in ("install", "application_installed")]
        a.installs = len(installs)
        a.installs_by_media_source = dict(sorted(Counter(d.person.media_source for d in installs).items()))
        a.installs_by_campaign = dict(
            sorted(Counter(d.person.campaign or "(none)" for d in installs).items())
        )
        a.events = len(ds)
        a.events_by_shape = dict(sorted(Counter(d.shape for d in ds).items()))
        a.events_by_type = dict(sorted(Counter(d.etype for d in ds).items()))
        a.identifies = sum(d.etype == "identify" for d in ds)
        a.sessions = session_counts[app]
        a.session_seconds = session_seconds[app]
        a.heartbeats = sum(d.etype == "heartbeat" or d.name == "heartbeat" for d in ds)
        a.screens = dict(sorted(Counter(str(d.name) for d in ds if d.etype == "screen").items()))
        steps = GAME_FUNNEL if app == "game" else SHOP_FUNNEL
        a.funnel = [{"step": s, "users": len(funnel_users[app][s])} for s in steps]
        revenue: dict[str, float] = defaultdict(float)
        oor_n, oor_amount = 0, 0.0
        for d in ds:
            rev = _revenue_of(d)
            if rev is None:
                continue
            cur, amount = rev
            if d.name == "web3_purchase":
                a.web3_purchases += 1
                a.web3_by_token[cur] = round(a.web3_by_token.get(cur, 0.0) + amount, 6)
            if amount < 0:
                a.refunds += 1
            else:
                a.purchases += 1
            if cur == "USD" and abs(amount) > OUT_OF_RANGE_USD:
                oor_n += 1
                oor_amount += amount
                continue
            revenue[cur] += amount
        a.revenue_by_currency = {
            c: round(v, 6 if c.startswith("0x") or c == "ETH" else 2) for c, v in sorted(revenue.items())
        }
        a.out_of_range = {"count": oor_n, "amount_usd": round(oor_amount, 2)}
        a.errors_by_level = dict(
            sorted(
                Counter(
                    str(
                        (d.payload.get("properties") or d.payload.get("action_properties") or {}).get(
                            "error_level"
                        )
                    )
                    for d in ds
                    if d.name == "error"
                ).items()
            )
        )
        dau: dict[str, set[int]] = defaultdict(set)
        for d in ds:
            dau[datetime.fromtimestamp(d.ts_ms / 1000, UTC).date().isoformat()].add(d.person.idx)
        a.dau = {k: len(v) for k, v in sorted(dau.items())}
        exp.apps[app] = a
    return exp
