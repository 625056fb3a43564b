"""Duplicate detection (pure).

Two rules, both windows configurable (:class:`~pipeline.settings.PipelineSettings`):

- **message_id**: the same ``app_id:message_id`` seen within ``message_id_window_s`` (24 h,
  measured on ``received_at``) is a duplicate. State: one entry per id holding
  ``[expires_at_ms, partition, offset]``; an expired entry counts as absent and is swept.
- **content** (AppsFlyer's rule): an identical event - same app, device, type, name, session,
  heartbeat offset and canonical (key-sorted) properties and traits - within ``content_window_s``
  (10 s, measured on the device's own timestamps when it sends them, else on the event time; see
  :func:`content_clock`) is a duplicate. State: a small map
  ``{digest: [time_ms, partition, offset]}`` inside the device's state, pruned as it is
  written. Sources in ``content_dedupe_exempt_sources`` (server-to-server) skip this rule.

Replays: both entries remember the Kafka position (partition, offset) of the event that created
them. Seeing the *same* position again is an at-least-once replay after a crash, not a duplicate,
so the event is processed again (sinks deduplicate by message_id).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from pipeline.reasons import Reason

Position = tuple[int, int]
NO_POSITION: Position = (-1, -1)


def message_key(app_id: str, message_id: str) -> str:
    """State key of the message-id rule."""
    return f"{app_id}:{message_id}"


def same_position(entry: list[Any] | None, pos: Position) -> bool:
    """Whether a state entry ``[..., partition, offset, ...]`` was created by the record at ``pos``."""
    return entry is not None and pos != NO_POSITION and entry[1] == pos[0] and entry[2] == pos[1]


def check_message_id(
    entry: list[Any] | None, received_at: int, pos: Position, window_ms: int
) -> tuple[Reason | None, list[Any] | None]:
    """Decide the message-id rule. Returns ``(reason or None, entry to store or None)``."""
    if entry is not None and entry[0] > received_at:
        if same_position(entry, pos):
            return None, None  # a replay of the very record that created the entry
        return Reason.DUPLICATE_MESSAGE_ID, None
    return None, [received_at + window_ms, pos[0], pos[1]]


def content_digest(
    raw: dict[str, Any], device: str, properties: dict[str, Any], traits: dict[str, Any]
) -> str:
    """Digest of what makes two events identical (canonical, key-sorted JSON)."""
    body = orjson.dumps(
        [
            raw.get("app_id"),
            device,
            raw.get("type"),
            raw.get("event"),
            raw.get("session_id"),
            raw.get("heartbeat_offset"),
            properties,
            traits,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.blake2b(body, digest_size=10).hexdigest()


def content_clock(ev: Any) -> int:
    """The time the content rule measures its window on: the device's own clock when it sent one.

    Two events of one device compare best on that device's timestamps: its clock skew cancels
    out, and so does the request's. The skew-corrected event time moves with the request's
    ``received_at``: a batch retried 20 s later (same body, same ``sentAt``) would shift by 20 s
    and let a duplicate through. Without a client timestamp, the event time.
    """
    return int(ev.client_time) if ev.client_time is not None else int(ev.event_time)


#: digests kept beyond the window for late duplicates, per device, at most (the oldest go first;
#: ``PipelineSettings.content_late_max``)
LATE_MAX = 256
#: a map of at least this many digests is pruned on every PRUNE_EVERY-th new digest only (each
#: prune walks the whole map)
PRUNE_ALWAYS_BELOW = 16
PRUNE_EVERY = 8


def check_content(
    recent: dict[str, list[int]],
    digest: str,
    event_time: int,
    pos: Position,
    window_ms: int,
    late_ms: int = 0,
    now: int = 0,
    late_max: int = LATE_MAX,
) -> Reason | None:
    """Decide the content rule against the device's recent digests and record this event.

    ``recent`` is mutated: expired digests are removed and, unless this is a duplicate, the
    digest is (re)recorded at ``event_time``. An event exactly ``window_ms`` later is *not* a
    duplicate (the window is open at its end).

    Expiry: a digest is kept while it is within the window of the device's newest events, or was
    recorded less than ``late_ms`` ago (``now``, wall-clock ms). Events arrive out of order when a
    client retries a batch (an outage, a 503) after its later batches landed; their duplicates
    must still meet their digests. ``late_ms=0``: the state expires exactly with the window.
    At most ``late_max`` digests out of the window are kept that way (the most recently recorded):
    without a bound, a device sending 10 events/s carried 6,000 digests (350 KB of state, parsed
    and pruned for each of its events). Expired digests may stay a few events longer (a map of
    :data:`PRUNE_ALWAYS_BELOW` or more is pruned every :data:`PRUNE_EVERY`-th new digest); they never match, since a
    match is decided on the window alone.
    """
    prev = recent.get(digest)
    if prev is not None and abs(event_time - prev[0]) < window_ms:
        if same_position(prev, pos):
            return None
        return Reason.DUPLICATE_CONTENT
    n = len(recent)
    if n and (n < PRUNE_ALWAYS_BELOW or n % PRUNE_EVERY == 0):
        prune(recent, event_time, window_ms, now - late_ms if late_ms else None, late_max)
    recent[digest] = [event_time, pos[0], pos[1], now] if late_ms else [event_time, pos[0], pos[1]]
    return None


def prune(
    recent: dict[str, list[int]],
    now_event_time: int,
    window_ms: int,
    recorded_after: int | None = None,
    late_max: int = LATE_MAX,
) -> None:
    """Drop digests older than the window, except those recorded after ``recorded_after`` (wall ms),
    of which the ``late_max`` most recently recorded are kept."""
    late: list[str] = []
    for k, v in list(recent.items()):
        if now_event_time - v[0] < window_ms:
            continue
        if recorded_after is None or len(v) < 4 or v[3] <= recorded_after:
            del recent[k]
        else:
            late.append(k)
    if len(late) > late_max:
        late.sort(key=lambda k: recent[k][3])
        for k in late[: len(late) - late_max]:
            del recent[k]
