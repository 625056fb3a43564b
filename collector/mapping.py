"""Pure mapping of the accepted API shapes onto RawEvent records, with the envelope checks.

Three shapes arrive (see ``docs/collector-api.md``):

- Segment / RudderStack tracking API (``/v1/track`` ... ``/v1/batch``): :func:`map_segment`;
- the app-tracking shape (``/v1/app-tracking``): :func:`map_app_tracking`;
- AppsFlyer server-to-server in-app events (``/inappevent/{app_id}``): :func:`map_appsflyer`.

Each returns a :class:`MapResult`: the RawEvent dicts (every field of ``schemas/raw_event``) ready to
encode, or the per-event :class:`EnvelopeError` list. The collector is thin: only the envelope is
checked here (a JSON object, a known type, an identity, typed fields of the right JSON kind, sizes).
Business rules (event names, revenue, required properties) are the pipeline's, so such events are
mapped and published and end up in the dead-letter topic where operators can see them.

Nothing in this module does I/O; the HTTP layer (:mod:`collector.app`) passes a :class:`Stamp`
holding what the server knows about the request.
"""

from __future__ import annotations

import ipaddress
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from schemas import defaults

Record = dict[str, Any]

#: the types a Segment-compatible message may carry
SEGMENT_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias", "heartbeat"})
#: the ``event`` values of the app-tracking shape
APP_TRACKING_TYPES = frozenset({"identify", "track", "screen", "heartbeat"})
#: namespace of the deterministic message ids given to AppsFlyer events (which carry none)
APPSFLYER_NAMESPACE = uuid.UUID("6f1d3c52-8f0e-4b8e-9a53-7d2b1c1e0a51")

_dumps = orjson.dumps
_RAW_DEFAULTS: Record = defaults("raw_event")
#: fields of a newer RawEvent version that the Segment mapper does not know yet (filled with defaults)
_SEGMENT_FIELDS = frozenset(
    {
        "message_id",
        "type",
        "event",
        "app_id",
        "anonymous_id",
        "user_id",
        "previous_id",
        "group_id",
        "session_id",
        "heartbeat_offset",
        "timestamp",
        "sent_at",
        "received_at",
        "properties",
        "traits",
        "context",
        "integrations",
        "source",
        "ref",
        "ip",
        "user_agent",
        "request_id",
        "library",
    }
)
_EXTRA_DEFAULTS: Record = {k: v for k, v in _RAW_DEFAULTS.items() if k not in _SEGMENT_FIELDS}


class Reason(StrEnum):
    """Why a request or an event was rejected; the label of ``collector_rejections_total``."""

    INVALID_JSON = "invalid_json"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_IDENTITY = "missing_identity"
    INVALID_FIELD = "invalid_field"
    EMPTY_BATCH = "empty_batch"
    EVENT_TOO_LARGE = "event_too_large"
    BATCH_TOO_LARGE = "batch_too_large"
    REQUEST_TOO_LARGE = "request_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    PUBLISH_FAILED = "publish_failed"


#: reasons answered with 413 rather than 400
TOO_LARGE = frozenset({Reason.EVENT_TOO_LARGE, Reason.BATCH_TOO_LARGE, Reason.REQUEST_TOO_LARGE})


@dataclass(frozen=True, slots=True)
class EnvelopeError:
    """What is wrong with one event (``index`` in the request's event list) or the whole request."""

    reason: Reason
    message: str
    index: int | None = None
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason.value, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(slots=True)  # not frozen: one is built per request, and a frozen __init__ costs 3x
class Stamp:
    """What the server adds to every event of one request.

    Parameters:
        app_id: resolved from the write key.
        received_at: request arrival, UTC milliseconds.
        request_id: the request's id (``X-Request-ID`` or generated).
        ip: the client IP, already masked if the app asks for it (None if unknown).
        user_agent: the request's User-Agent.
        fallback_anonymous_id: ``X-Anonymous-Id`` (or ``X-Request-ID``) header, used when an event
            carries no anonymous id.
        mask_ip: mask IPs the body carries (``context.ip``, AppsFlyer ``ip``) too.
    """

    app_id: str
    received_at: int
    request_id: str
    ip: str | None = None
    user_agent: str | None = None
    fallback_anonymous_id: str | None = None
    mask_ip: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Envelope size limits (bytes, events)."""

    max_event_bytes: int = 32768
    max_batch: int = 1000


@dataclass(slots=True)
class MapResult:
    """Either events to publish, or the errors that reject the whole request."""

    events: list[Record] = field(default_factory=list)
    errors: list[EnvelopeError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def status(self) -> int:
        """200 if ok, 413 if any error is a size error, else 400."""
        if not self.errors:
            return 200
        return 413 if any(e.reason in TOO_LARGE for e in self.errors) else 400


class _Invalid(Exception):
    """Internal: one field of one event is of the wrong JSON kind."""

    def __init__(self, reason: Reason, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


# -- helpers ---------------------------------------------------------------------------------

_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class _IdPool:
    """Random (version 4) UUID strings, drawn from the OS RNG 1024 at a time (uuid4() is slow).

    The pool is dropped in a forked child (an at-fork hook), so two processes never hand out
    the same ids.
    """

    def __init__(self) -> None:
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._ids = []

    def __call__(self) -> str:
        try:
            return self._ids.pop()
        except IndexError:
            h = os.urandom(16 * 1024).hex()
            self._ids = [
                f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-{_VARIANT[h[i + 16]]}"
                f"{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
                for i in range(0, len(h), 32)
            ]
            return self._ids.pop()


#: a new random message id
new_message_id = _IdPool()


def mask_ip(ip: str) -> str:
    """Drop the last octet of an IPv4 address, the last 80 bits of an IPv6 one.

    Anything that is not an IP address is returned unchanged.
    """
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ip
    if addr.version == 4:
        return str(ipaddress.ip_network(f"{addr}/24", strict=False).network_address)
    return str(ipaddress.ip_network(f"{addr}/48", strict=False).network_address)


def _scalar(value: Any, name: str) -> str | None:
    """A string-typed field: strings as sent, numbers stringified, null/absent as None."""
    if value is None or value.__class__ is str:
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Invalid(Reason.INVALID_FIELD, name, f"{name} must be a string or a number")


def _identity(value: Any, name: str) -> str | None:
    out = _scalar(value, name)
    return out if out else None


def _obj_text(value: Any, name: str) -> tuple[str, dict[str, Any] | None]:
    """A JSON-object field: ``(json text, the dict)``; absent/null is ``{}``."""
    if value is None:
        return "{}", None
    if value.__class__ is dict or isinstance(value, dict):
        return _json_text(value, name), value
    raise _Invalid(Reason.INVALID_FIELD, name, f"{name} must be a JSON object")


def _json_text(value: Any, name: str) -> str:
    """JSON text of a parsed value; nesting deeper than orjson writes (254) is an envelope error."""
    try:
        return _dumps(value).decode()
    except orjson.JSONEncodeError:
        raise _Invalid(Reason.INVALID_FIELD, name, f"{name} is nested too deeply") from None


def _number(value: Any) -> float | None:
    """A heartbeat offset as a float, or None if it is not a plain number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            return None
        return out if math.isfinite(out) else None
    return None


def _library(context: dict[str, Any] | None, user_agent: str | None) -> str | None:
    if context:
        lib = context.get("library")
        if lib.__class__ is dict:
            name = lib.get("name")
            if name.__class__ is str:
                version = lib.get("version")
                return f"{name}/{version}" if version.__class__ in (str, int, float) else name  # type: ignore[no-any-return]
    if user_agent and not user_agent.startswith("Mozilla/"):
        token = user_agent.split(" ", 1)[0]
        if "/" in token:
            return token
    return None


def _sid(v: Any) -> str | None:
    cls = v.__class__
    if cls is str:
        return v or None  # type: ignore[no-any-return]
    if cls is int:
        return str(v)
    return None


def _session_id(props: dict[str, Any] | None, context: dict[str, Any] | None) -> str | None:
    """``properties.session_id``/``sessionId``, else ``context.sessionId``/``session_id`` (RudderStack)."""
    if props:
        v = props.get("session_id")
        if v is None:
            v = props.get("sessionId")
        if v is not None and (sid := _sid(v)) is not None:
            return sid
    if context:
        v = context.get("sessionId")
        if v is None:
            v = context.get("session_id")
        if v is not None:
            return _sid(v)
    return None


def _ip(body_ip: Any, stamp: Stamp) -> str | None:
    if body_ip.__class__ is str and body_ip:
        return mask_ip(body_ip) if stamp.mask_ip else body_ip
    return stamp.ip


def _base(stamp: Stamp, source: str) -> Record:
    rec = dict(_RAW_DEFAULTS)
    rec["app_id"] = stamp.app_id
    rec["received_at"] = stamp.received_at
    rec["request_id"] = stamp.request_id
    rec["ip"] = stamp.ip
    rec["user_agent"] = stamp.user_agent
    rec["source"] = source
    return rec


def _size(rec: Record) -> int:
    """The event's size as re-serialised JSON, approximated by its parts (no extra dump)."""
    n = len(rec["properties"]) + len(rec["traits"]) + len(rec["context"]) + len(rec["integrations"])
    for k in (
        "message_id",
        "event",
        "anonymous_id",
        "user_id",
        "previous_id",
        "group_id",
        "timestamp",
        "sent_at",
        "session_id",
        "ref",
    ):
        v = rec[k]
        if v is not None:
            n += len(v) + len(k) + 6
    return n + 40


def _finish(rec: Record, index: int, limits: Limits) -> Record | EnvelopeError:
    if rec["anonymous_id"] is None and rec["user_id"] is None:
        return EnvelopeError(
            Reason.MISSING_IDENTITY, "an anonymous id or a user id is required", index, "anonymousId"
        )
    size = _size(rec)
    if size > limits.max_event_bytes:
        return EnvelopeError(
            Reason.EVENT_TOO_LARGE, f"event is {size} bytes, more than {limits.max_event_bytes}", index
        )
    return rec


def _run(
    items: list[Any], mapper: Callable[[dict[str, Any], int], Record | EnvelopeError], limits: Limits
) -> MapResult:
    if not items:
        return MapResult(errors=[EnvelopeError(Reason.EMPTY_BATCH, "the request holds no event")])
    if len(items) > limits.max_batch:
        return MapResult(
            errors=[
                EnvelopeError(
                    Reason.BATCH_TOO_LARGE,
                    f"{len(items)} events in one request, more than {limits.max_batch}",
                )
            ]
        )
    result = MapResult()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            result.errors.append(EnvelopeError(Reason.NOT_AN_OBJECT, "an event must be a JSON object", i))
            continue
        try:
            out = mapper(item, i)
        except _Invalid as exc:
            result.errors.append(EnvelopeError(exc.reason, str(exc), i, exc.field))
            continue
        if isinstance(out, EnvelopeError):
            result.errors.append(out)
        elif not result.errors:
            result.events.append(out)
    if result.errors:
        result.events = []
    return result


def kafka_key(rec: Record) -> bytes:
    """The Kafka key of a raw event: ``app_id:device`` (anonymous id, else user id)."""
    device = rec["anonymous_id"] if rec["anonymous_id"] is not None else rec["user_id"]
    return f"{rec['app_id']}:{device}".encode()


# -- Segment / RudderStack -------------------------------------------------------------------


def _segment_one(
    msg: dict[str, Any],
    index: int,
    stamp: Stamp,
    limits: Limits,
    *,
    path_type: str | None,
    batch_ctx: dict[str, Any],
) -> Record | EnvelopeError:
    # the hottest function of the collector: locals, then one dict literal (see bench/collector)
    get = msg.get
    if path_type is None:
        mtype = get("type")
        if mtype.__class__ is not str or mtype not in SEGMENT_TYPES:
            return EnvelopeError(Reason.UNKNOWN_TYPE, f"unknown event type {mtype!r}", index, "type")
    else:
        mtype = path_type
    context = get("context")
    if batch_ctx:
        top = batch_ctx.get("context")
        if context is None:
            context = top
        elif context.__class__ is dict and top.__class__ is dict:
            context = {**top, **context}
        integrations = get("integrations", batch_ctx.get("integrations"))
        sent_at = get("sentAt", batch_ctx.get("sentAt"))
    else:
        integrations = get("integrations")
        sent_at = get("sentAt")
    ctx_text, ctx = _obj_text(context, "context")
    integ_text = "{}" if integrations is None else _obj_text(integrations, "integrations")[0]
    props_text, props = _obj_text(get("properties"), "properties")
    traits = get("traits")
    if traits is None and mtype == "identify" and ctx is not None:
        traits = ctx.get("traits")
    traits_text = "{}" if traits is None else _obj_text(traits, "traits")[0]

    anon = _identity(get("anonymousId"), "anonymousId") or stamp.fallback_anonymous_id
    uid = _identity(get("userId"), "userId")
    if anon is None and uid is None:
        return EnvelopeError(
            Reason.MISSING_IDENTITY, "an anonymous id or a user id is required", index, "anonymousId"
        )
    mid = _identity(get("messageId"), "messageId") or new_message_id()
    if mtype in {"page", "screen"}:
        name = get("name")
        if name is None and props is not None:
            name = props.get("name")
        event = _scalar(name, "name")
    else:
        event = _scalar(get("event"), "event")
    timestamp = _scalar(get("timestamp"), "timestamp")
    sent = _scalar(sent_at, "sentAt")
    group_id = _identity(get("groupId"), "groupId") if mtype == "group" else None
    previous_id = _identity(get("previousId"), "previousId") if mtype == "alias" else None
    session_id = _session_id(props, ctx) if (props or ctx) else None
    offset = None
    if props is not None and (mtype == "heartbeat" or event == "heartbeat"):
        offset = _number(props.get("heartbeat_offset", props.get("offset")))

    size = len(props_text) + len(ctx_text) + len(traits_text) + len(integ_text) + len(mid) + 160
    for v in (event, anon, uid, timestamp, sent, session_id, group_id, previous_id):
        if v is not None:
            size += len(v) + 16
    if size > limits.max_event_bytes:
        return EnvelopeError(
            Reason.EVENT_TOO_LARGE, f"event is {size} bytes, more than {limits.max_event_bytes}", index
        )
    rec = {
        "message_id": mid,
        "type": mtype,
        "event": event,
        "app_id": stamp.app_id,
        "anonymous_id": anon,
        "user_id": uid,
        "previous_id": previous_id,
        "group_id": group_id,
        "session_id": session_id,
        "heartbeat_offset": offset,
        "timestamp": timestamp,
        "sent_at": sent,
        "received_at": stamp.received_at,
        "properties": props_text,
        "traits": traits_text,
        "context": ctx_text,
        "integrations": integ_text,
        "source": "segment",
        "ref": None,
        "ip": stamp.ip if ctx is None else _ip(ctx.get("ip"), stamp),
        "user_agent": stamp.user_agent,
        "request_id": stamp.request_id,
        "library": _library(ctx, stamp.user_agent),
    }
    if _EXTRA_DEFAULTS:
        rec.update(_EXTRA_DEFAULTS)
    return rec


def map_segment(body: Any, stamp: Stamp, limits: Limits, path_type: str | None = None) -> MapResult:
    """Map a Segment request body.

    ``path_type`` is the type named by the path (``/v1/track`` -> ``track``); ``None`` means
    ``/v1/batch``, whose ``batch`` list carries a ``type`` per message and whose top-level
    ``context``, ``integrations`` and ``sentAt`` apply to every message lacking its own.
    """
    if not isinstance(body, dict):
        return MapResult(errors=[EnvelopeError(Reason.NOT_AN_OBJECT, "the body must be a JSON object")])
    if path_type is None:
        items = body.get("batch")
        if not isinstance(items, list):
            return MapResult(
                errors=[EnvelopeError(Reason.INVALID_FIELD, "batch must be a list of events", field="batch")]
            )
        batch_ctx = {k: body[k] for k in ("context", "integrations", "sentAt") if k in body}
    else:
        items = [body]
        batch_ctx = {}

    def one(msg: dict[str, Any], i: int) -> Record | EnvelopeError:
        return _segment_one(msg, i, stamp, limits, path_type=path_type, batch_ctx=batch_ctx)

    return _run(items, one, limits)


# -- app-tracking --------------------------------------------------------------------------

_APP_TRACKING_KEYS = frozenset(
    {
        "uuid",
        "event",
        "ref",
        "timestamp",
        "session_id",
        "offset",
        "user_id",
        "action",
        "action_properties",
        "traits",
        "anonymous_id",
        "device_id",
        "sent_at",
        "context",
        "writeKey",
    }
)


def _props_or_json_text(value: Any, name: str) -> tuple[str, dict[str, Any] | None]:
    """An object field that some clients send as a JSON string."""
    if isinstance(value, str):
        if not value.strip():
            return "{}", None
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise _Invalid(Reason.INVALID_FIELD, name, f"{name} must be a JSON object") from None
    return _obj_text(value, name)


def _app_tracking_one(
    obj: dict[str, Any], index: int, stamp: Stamp, limits: Limits
) -> Record | EnvelopeError:
    etype = obj.get("event")
    if not isinstance(etype, str) or etype not in APP_TRACKING_TYPES:
        return EnvelopeError(Reason.UNKNOWN_TYPE, f"unknown event type {etype!r}", index, "event")
    rec = _base(stamp, "app_tracking")
    rec["type"] = etype
    payload = obj.get("action_properties")
    if etype == "identify":
        traits = obj.get("traits", payload)
        rec["traits"], _ = _props_or_json_text(traits, "traits" if "traits" in obj else "action_properties")
        props: dict[str, Any] | None = None
    else:
        rec["properties"], props = _props_or_json_text(payload, "action_properties")
    ctx_value = obj.get("context")
    extra = {k: v for k, v in obj.items() if k not in _APP_TRACKING_KEYS}
    if extra:
        if ctx_value is None:
            ctx_value = {}
        if isinstance(ctx_value, dict):
            ctx_value = {**ctx_value, "extra": extra}
    rec["context"], ctx = _obj_text(ctx_value, "context")
    rec["message_id"] = _identity(obj.get("uuid"), "uuid") or new_message_id()
    rec["user_id"] = _identity(obj.get("user_id"), "user_id")
    rec["anonymous_id"] = (
        _identity(obj.get("anonymous_id"), "anonymous_id")
        or _identity(obj.get("device_id"), "device_id")
        or stamp.fallback_anonymous_id
    )
    if etype in ("track", "screen"):
        rec["event"] = _scalar(obj.get("action"), "action")
    rec["ref"] = _scalar(obj.get("ref"), "ref")
    rec["timestamp"] = _scalar(obj.get("timestamp"), "timestamp")
    rec["sent_at"] = _scalar(obj.get("sent_at"), "sent_at")
    rec["session_id"] = _identity(obj.get("session_id"), "session_id")
    if rec["session_id"] is None:
        rec["session_id"] = _session_id(props, ctx)
    if "offset" in obj and obj["offset"] is not None:
        off = _number(obj["offset"])
        rec["heartbeat_offset"] = off
        if off is None:
            # not a plain number: keep it where the pipeline can see it and dead-letter the event
            merged = {**(props or {}), "offset": obj["offset"]}
            rec["properties"] = _json_text(merged, "action_properties")
    rec["library"] = _library(ctx, stamp.user_agent)
    return _finish(rec, index, limits)


def map_app_tracking(body: Any, stamp: Stamp, limits: Limits) -> MapResult:
    """Map an app-tracking body: one event object, ``{"events": [...]}``, or a JSON array."""
    if isinstance(body, list):
        items = body
    elif isinstance(body, dict) and "events" in body and "event" not in body:
        items = body["events"]
        if not isinstance(items, list):
            return MapResult(
                errors=[EnvelopeError(Reason.INVALID_FIELD, "events must be a list", field="events")]
            )
    elif isinstance(body, dict):
        items = [body]
    else:
        return MapResult(errors=[EnvelopeError(Reason.NOT_AN_OBJECT, "the body must be a JSON object")])
    return _run(items, lambda o, i: _app_tracking_one(o, i, stamp, limits), limits)


# -- AppsFlyer S2S -------------------------------------------------------------------------

_APPSFLYER_MAPPED = frozenset(
    {
        "eventName",
        "eventValue",
        "eventCurrency",
        "eventTime",
        "appsflyer_id",
        "customer_user_id",
        "ip",
    }
)


def _appsflyer_one(obj: dict[str, Any], index: int, stamp: Stamp, limits: Limits) -> Record | EnvelopeError:
    rec = _base(stamp, "appsflyer_s2s")
    rec["type"] = "track"
    rec["event"] = _scalar(obj.get("eventName"), "eventName")
    props_text, props = _props_or_json_text(obj.get("eventValue"), "eventValue")
    currency = _scalar(obj.get("eventCurrency"), "eventCurrency")
    if currency and not (props and ("af_currency" in props or "currency" in props)):
        props = {**(props or {}), "af_currency": currency}
        props_text = _json_text(props, "eventValue")
    rec["properties"] = props_text
    extra = {k: v for k, v in obj.items() if k not in _APPSFLYER_MAPPED}
    rec["context"] = _json_text({"appsflyer": extra}, "context") if extra else "{}"
    rec["anonymous_id"] = _identity(obj.get("appsflyer_id"), "appsflyer_id") or stamp.fallback_anonymous_id
    rec["user_id"] = _identity(obj.get("customer_user_id"), "customer_user_id")
    rec["timestamp"] = _scalar(obj.get("eventTime"), "eventTime")
    rec["ip"] = _ip(obj.get("ip"), stamp)
    if rec["timestamp"] is not None:
        # AppsFlyer events carry no id: a deterministic one makes a client's retry a duplicate
        # that the pipeline's message-id dedupe removes.
        basis = "\x1f".join(
            str(x)
            for x in (
                stamp.app_id,
                rec["anonymous_id"],
                rec["user_id"],
                rec["event"],
                rec["timestamp"],
                props_text,
            )
        )
        rec["message_id"] = str(uuid.uuid5(APPSFLYER_NAMESPACE, basis))
    else:
        rec["message_id"] = new_message_id()
    rec["library"] = _library(None, stamp.user_agent)
    return _finish(rec, index, limits)


def map_appsflyer(body: Any, stamp: Stamp, limits: Limits) -> MapResult:
    """Map an AppsFlyer S2S in-app event (one JSON object)."""
    if not isinstance(body, dict):
        return MapResult(errors=[EnvelopeError(Reason.NOT_AN_OBJECT, "the body must be a JSON object")])
    return _run([body], lambda o, i: _appsflyer_one(o, i, stamp, limits), limits)
