"""Validation rules (pure): turn a decoded RawEvent into a :class:`Parsed` event or raise
:class:`~pipeline.exceptions.RejectedEvent` with a :class:`~pipeline.reasons.Reason` naming the field.

Rules (see ``docs/pipeline.md``):

- envelope: a known ``type``; an identity (``anonymous_id`` or ``user_id``); properties, traits
  and context are JSON objects;
- event names (track): required, case-sensitive, must not start with ``"``, ``=``, ``+``, ``-``
  nor contain whitespace;
- every string value of properties and traits, at any depth, is at most 1000 characters;
- revenue (``af_revenue``, ``revenue``, ``value``, ``bundle_paid_amount``) is a plain number:
  a JSON number or a string like ``"-1234.56"``; negative amounts (refunds) are valid;
- currency (``af_currency``, ``currency``, ``bundle_paid_currency``): ISO 4217 (any case), a
  configured token symbol or a ``0x`` contract address; none means USD;
- error events: ``error_level`` in Info/Debug/Warning/Error/Critical plus error_code,
  error_message, error_stacktrace and metadata;
- monetization events (web2/web3): bundle_id, bundle_package_items, bundle_paid_id,
  bundle_paid_amount, bundle_paid_currency, platform and tx_ref;
- heartbeats carry ``session_id`` and a non-negative offset;
- timestamps parse (ISO 8601, or epoch seconds / milliseconds) and the skew-corrected event time
  is not more than ``max_future_s`` after ``received_at``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from pipeline.exceptions import RejectedEvent
from pipeline.reasons import Reason
from pipeline.settings import PipelineSettings

EVENT_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias", "heartbeat"})
ERROR_LEVELS = ("Info", "Debug", "Warning", "Error", "Critical")
ERROR_FIELDS = ("error_level", "error_code", "error_message", "error_stacktrace", "metadata")
MONETIZATION_FIELDS = (
    "bundle_id",
    "bundle_package_items",
    "bundle_paid_id",
    "bundle_paid_amount",
    "bundle_paid_currency",
    "platform",
    "tx_ref",
)
REVENUE_FIELDS = ("af_revenue", "revenue", "value")
CURRENCY_FIELDS = ("af_currency", "currency")
_BAD_NAME_START = ('"', "=", "+", "-")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_WS = re.compile(r"\s")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NUMERIC_TS = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(slots=True)
class Parsed:
    """A valid event: the decoded record plus what the later stages need, parsed once."""

    raw: dict[str, Any]
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    device_id: str
    event_time: int
    client_time: int | None
    is_heartbeat: bool = False
    heartbeat_offset: float | None = None
    revenue: str | float | None = None  # as sent (plain number), None when the event has none
    currency: str | None = None  # normalised: ISO code, token symbol or lower-case 0x address
    extra: dict[str, Any] = field(default_factory=dict)


def reject(reason: Reason, message: str, fld: str | None = None) -> RejectedEvent:
    return RejectedEvent(reason, message, field=fld, stage="validate")


def _json_object(raw: dict[str, Any], name: str) -> dict[str, Any]:
    text = raw.get(name)
    if not text or text == "{}":
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise reject(Reason.INVALID_JSON, f"{name} is not valid JSON: {exc}", name) from exc
    if not isinstance(value, dict):
        raise reject(Reason.INVALID_JSON, f"{name} must be a JSON object", name)
    return value


def parse_time(text: str | None, fld: str) -> int | None:
    """Client time text -> epoch ms. ISO 8601 (naive = UTC) or epoch s / ms (> 1e11 means ms)."""
    if text is None or text == "":
        return None
    return _parse_time(text, fld)


@lru_cache(maxsize=4096)
def _parse_time(text: str, fld: str) -> int:
    t = text.strip()
    if _NUMERIC_TS.fullmatch(t):
        n = float(t)
        ms = n if abs(n) > 1e11 else n * 1000
        if not math.isfinite(ms) or abs(ms) > 1e14:
            raise reject(Reason.INVALID_TIMESTAMP, f"{fld} {text!r} is out of range", fld)
        return int(ms)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError as exc:
        raise reject(Reason.INVALID_TIMESTAMP, f"{fld} {text!r} is not ISO 8601 or epoch time", fld) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def skew_corrected(received_at: int, client_ts: int | None, sent_at: int | None) -> int:
    """Segment's rule: ``received_at - (sent_at - timestamp)``; without sent_at the client time;
    without a timestamp the receive time."""
    if client_ts is None:
        return received_at
    if sent_at is None:
        return client_ts
    return received_at - (sent_at - client_ts)


def is_plain_number(v: Any) -> bool:
    """True for JSON numbers (not booleans, finite) and strings like ``"1234.56"`` / ``"-3"``."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, str) and _PLAIN_NUMBER.fullmatch(v) is not None


@lru_cache(maxsize=1024)
def _is_iso_currency(code: str) -> bool:
    import pycountry

    return pycountry.currencies.get(alpha_3=code) is not None


def normalize_currency(value: Any, fld: str, tokens: dict[str, str]) -> str:
    """ISO code (upper-cased), a token symbol, or a mapped / lower-cased contract address."""
    if not isinstance(value, str) or not value.strip():
        raise reject(Reason.INVALID_CURRENCY, f"{fld} must be a currency code string", fld)
    v = value.strip()
    if _ADDRESS.fullmatch(v):
        low = v.lower()
        return tokens.get(low, low)
    up = v.upper()
    if up in _token_symbols(tokens) or (len(up) == 3 and up.isalpha() and _is_iso_currency(up)):
        return up
    raise reject(Reason.INVALID_CURRENCY, f"{fld} {value!r} is not an ISO 4217 code or a known token", fld)


def _token_symbols(tokens: dict[str, str]) -> frozenset[str]:
    return frozenset(s.upper() for s in tokens.values()) | {"ETH", "BTC", "USDC", "USDT", "SOL", "MATIC"}


def check_event_name(name: str | None, fld: str = "event") -> None:
    if not name:
        raise reject(Reason.MISSING_EVENT_NAME, f"{fld} is required for track events", fld)
    if name.startswith(_BAD_NAME_START):
        raise reject(Reason.INVALID_EVENT_NAME, f"{fld} {name[:50]!r} must not start with {name[0]!r}", fld)
    if _WS.search(name):
        raise reject(Reason.INVALID_EVENT_NAME, f"{fld} {name[:50]!r} must not contain spaces", fld)


#: deepest nesting of objects and lists accepted in properties, traits and context
MAX_DEPTH = 32


def check_lengths(obj: Any, path: str, limit: int, depth: int = 0) -> None:
    """Reject any string value longer than ``limit``, or nesting deeper than :data:`MAX_DEPTH`, in ``obj``."""
    if isinstance(obj, str):
        if len(obj) > limit:
            raise reject(Reason.VALUE_TOO_LONG, f"{path} has {len(obj)} characters (limit {limit})", path)
        return
    if depth >= MAX_DEPTH:
        raise reject(Reason.INVALID_JSON, f"{path} is nested more than {MAX_DEPTH} levels deep", path)
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(v, (int, float, bool)) and v is not None:
                check_lengths(v, f"{path}.{k}", limit, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_lengths(v, f"{path}[{i}]", limit, depth + 1)


def within_limits(text: str | None, limit: int) -> bool:
    """True when the JSON ``text`` cannot hold a string longer than ``limit`` nor nesting deeper than
    :data:`MAX_DEPTH`, so :func:`check_lengths` of its value has nothing to find (a cheap pre-check).

    A decoded string is never longer than its JSON text, and ``MAX_DEPTH`` levels of nesting take
    more opening brackets than that.
    """
    return text is not None and len(text) <= limit and text.count("{") + text.count("[") <= MAX_DEPTH


def _require(props: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    for f in fields:
        v = props.get(f)
        if v is None or v == "":
            raise reject(Reason.MISSING_FIELD, f"{what} requires properties.{f}", f"properties.{f}")


def _context(raw: dict[str, Any]) -> dict[str, Any]:
    """The parsed ``context``; checked for nesting only (it is the SDK's own)."""
    text = raw.get("context")
    if not text or text == "{}":
        return {}
    return _parsed_context(text)


@lru_cache(maxsize=8192)
def _parsed_context(text: str) -> dict[str, Any]:
    """A context text's parsed value, once per text (a device sends the same context with every
    event); shared, so read-only. A rejected text raises, and an exception is not remembered."""
    context = _json_object({"context": text}, "context")
    if not within_limits(text, 1 << 30):
        check_lengths(context, "context", 1 << 30)
    return context


def validate(raw: dict[str, Any], settings: PipelineSettings) -> Parsed:
    """Apply every rule to one decoded RawEvent; return the parsed event or raise RejectedEvent."""
    etype = raw.get("type")
    if etype not in EVENT_TYPES:
        raise reject(Reason.UNKNOWN_TYPE, f"type {etype!r} is not one of {sorted(EVENT_TYPES)}", "type")
    device = raw.get("anonymous_id") or raw.get("user_id")
    if not device:
        raise reject(Reason.MISSING_IDENTITY, "anonymous_id or user_id is required", "anonymous_id")
    props = _json_object(raw, "properties")
    traits = _json_object(raw, "traits")
    context = _context(raw)
    name = raw.get("event")
    limit = settings.max_value_length

    if etype == "track":
        check_event_name(name)
    elif name is not None and len(name) > limit:
        raise reject(Reason.VALUE_TOO_LONG, f"event has {len(name)} characters (limit {limit})", "event")
    if props and not within_limits(raw.get("properties"), limit):
        check_lengths(props, "properties", limit)
    if traits and not within_limits(raw.get("traits"), limit):
        check_lengths(traits, "traits", limit)

    # timestamps
    received = int(raw["received_at"])
    client_ts = parse_time(raw.get("timestamp"), "timestamp")
    sent_at = parse_time(raw.get("sent_at"), "sent_at")
    event_time = skew_corrected(received, client_ts, sent_at)
    if event_time - received > settings.max_future_s * 1000:
        raise reject(
            Reason.FUTURE_TIMESTAMP,
            f"timestamp is {(event_time - received) / 1000:.0f} s in the future"
            f" (limit {settings.max_future_s:.0f} s)",
            "timestamp",
        )

    parsed = Parsed(raw, props, traits, context, device, event_time, client_ts)

    # heartbeats
    if etype == "heartbeat" or (etype == "track" and name == "heartbeat"):
        parsed.is_heartbeat = True
        if not raw.get("session_id"):
            raise reject(Reason.MISSING_FIELD, "heartbeat requires session_id", "session_id")
        off = raw.get("heartbeat_offset")
        if off is None:
            off = props.get("offset", props.get("heartbeat_offset"))
        if off is None:
            raise reject(Reason.MISSING_FIELD, "heartbeat requires heartbeat_offset", "heartbeat_offset")
        if not is_plain_number(off) or float(off) < 0:
            raise reject(
                Reason.INVALID_HEARTBEAT,
                f"heartbeat offset {off!r} must be a number >= 0",
                "heartbeat_offset",
            )
        parsed.heartbeat_offset = float(off)

    if not props:
        return parsed

    # error events
    if etype == "track" and (name in settings.error_event_names or "error_level" in props):
        _require(props, ERROR_FIELDS, "an error event")
        if props["error_level"] not in ERROR_LEVELS:
            raise reject(
                Reason.INVALID_ERROR_LEVEL,
                f"properties.error_level {props['error_level']!r} is not one of {', '.join(ERROR_LEVELS)}",
                "properties.error_level",
            )

    tokens = settings.token_symbols
    # monetization events
    if name in settings.monetization_event_names or "tx_ref" in props or "bundle_paid_amount" in props:
        _require(props, MONETIZATION_FIELDS, "a monetization event")
        amount = props["bundle_paid_amount"]
        if not is_plain_number(amount):
            raise reject(
                Reason.INVALID_REVENUE,
                f"properties.bundle_paid_amount {amount!r} is not a plain number",
                "properties.bundle_paid_amount",
            )
        parsed.revenue = amount
        parsed.currency = normalize_currency(
            props["bundle_paid_currency"], "properties.bundle_paid_currency", tokens
        )

    # revenue
    for f in REVENUE_FIELDS:
        if f in props and props[f] is not None:
            v = props[f]
            if not is_plain_number(v):
                raise reject(
                    Reason.INVALID_REVENUE, f"properties.{f} {v!r} is not a plain number", f"properties.{f}"
                )
            if parsed.revenue is None:
                parsed.revenue = v
    for f in CURRENCY_FIELDS:
        if props.get(f) is not None:
            cur = normalize_currency(props[f], f"properties.{f}", tokens)
            if parsed.currency is None:
                parsed.currency = cur
    if parsed.revenue is not None and parsed.currency is None:
        parsed.currency = "USD"
    return parsed
