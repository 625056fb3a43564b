"""Duplicate detection (pure).

Two rules, both windows configurable (:class:`~pipeline.settings.PipelineSettings`):

- **message_id**: the same ``app_id:message_id`` seen within ``message_id_window_s`` (24 h,
  measured on ``received_at``) is a duplicate. State: one entry per id holding
  ``[expires_at_ms, partition, offset]``; an expired entry counts as absent and is swept.
- **content** (AppsFlyer's rule): an identical event - same app, device, type, name, session,
  heartbeat offset and canonical (key-sorted) properties and traits - within ``content_window_s``
  (10 s, measured on the device's own timestamps when it sends them, else on the event time; see
  :func:`content_clock`) is a duplicate. State: the device's recent digests with their time and
  position, one string inside the device's state (see :data:`ENTRY`), pruned as it is written.
  Sources in ``content_dedupe_exempt_sources`` (server-to-server) skip this rule.

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

# A device's recorded digests are one string (state key ``c``): fixed-width lowercase hex entries,
# concatenated in the order they were recorded. One entry:
#   digest (20) | event time + TIME_BIAS (12) | partition + 1 (4) | offset + 1 (12) | recorded at (12)
# "recorded at" is the wall clock in ms (0 without the late rule). One string instead of a map of
# lists: it is serialised and parsed as one JSON string (a map of 60 digests was ~360 objects to
# walk on every flush), and its order is the recording order, so :func:`prune` can tell from the
# first entry alone that nothing is old enough to go.
ENTRY = 60
TIME_BIAS = 1 << 47  # event times before 1970 stay non-negative
_T, _P, _O, _R = 20, 32, 36, 48


def _entry(digest: str, event_time: int, pos: Position, now: int) -> str:
    return f"{digest}{event_time + TIME_BIAS:012x}{pos[0] + 1:04x}{pos[1] + 1:012x}{now:012x}"


def _time(recent: str, j: int) -> int:
    """The event time of the entry at ``j``."""
    return int(recent[j + _T : j + _P], 16) - TIME_BIAS


def _position(recent: str, j: int) -> Position:
    """The (partition, offset) of the record that recorded the entry at ``j``."""
    return int(recent[j + _P : j + _O], 16) - 1, int(recent[j + _O : j + _R], 16) - 1


def _recorded(recent: str, j: int) -> int:
    """The wall-clock time (ms) the entry at ``j`` was recorded (0 without the late rule)."""
    return int(recent[j + _R : j + ENTRY], 16)


def _find(recent: str, digest: str) -> int:
    """Start of ``digest``'s entry in ``recent``, or -1."""
    i = recent.find(digest)
    while i > 0 and i % ENTRY:  # a match across fields (hex), not an entry's digest
        i = recent.find(digest, i + 1)
    return i


def entries(recent: str) -> dict[str, list[int]]:
    """The digests of a ``c`` string as ``{digest: [event_time, partition, offset, recorded_at]}``."""
    return {
        recent[j : j + _T]: [_time(recent, j), *_position(recent, j), _recorded(recent, j)]
        for j in range(0, len(recent), ENTRY)
    }


def from_map(recent: dict[str, list[int]]) -> str:
    """The ``c`` string of a map ``{digest: [event_time, partition, offset(, recorded_at)]}``
    (the format of device states stored before 2026-11-24), in the order recorded."""
    items = sorted(recent.items(), key=lambda kv: kv[1][3] if len(kv[1]) > 3 else 0)
    return "".join(_entry(k, v[0], (v[1], v[2]), v[3] if len(v) > 3 else 0) for k, v in items)


def check_content(
    recent: str,
    digest: str,
    event_time: int,
    pos: Position,
    window_ms: int,
    late_ms: int = 0,
    now: int = 0,
    late_max: int = LATE_MAX,
) -> tuple[Reason | None, str]:
    """Decide the content rule against the device's recent digests and record this event.

    ``recent`` is the device's ``c`` string (see :data:`ENTRY`). Returns ``(reason or None, the
    new string)``: expired digests are removed and, unless this is a duplicate, the digest is
    (re)recorded at ``event_time``, last. An event exactly ``window_ms`` later is *not* a
    duplicate (the window is open at its end).

    Expiry: a digest is kept while it is within the window of the device's newest events, or was
    recorded less than ``late_ms`` ago (``now``, wall-clock ms). Events arrive out of order when a
    client retries a batch (an outage, a 503) after its later batches landed; their duplicates
    must still meet their digests. ``late_ms=0``: the state expires exactly with the window.
    At most ``late_max`` digests out of the window are kept that way (the most recently recorded):
    without a bound, a device sending 10 events/s carried 6,000 digests (350 KB of state, parsed
    and pruned for each of its events). Expired digests may stay a few events longer (a map of
    :data:`PRUNE_ALWAYS_BELOW` or more is pruned every :data:`PRUNE_EVERY`-th new digest); they
    never match, since a match is decided on the window alone.
    """
    i = _find(recent, digest)
    if i >= 0:
        if abs(event_time - _time(recent, i)) < window_ms:
            if pos != NO_POSITION and _position(recent, i) == pos:
                return None, recent  # a replay of the very record that recorded it
            return Reason.DUPLICATE_CONTENT, recent
        recent = recent[:i] + recent[i + ENTRY :]  # recorded again below, as the newest
    n = len(recent) // ENTRY
    if n and (n < PRUNE_ALWAYS_BELOW or n % PRUNE_EVERY == 0):
        recent = prune(recent, event_time, window_ms, now - late_ms if late_ms else None, late_max)
    return None, recent + _entry(digest, event_time, pos, now if late_ms else 0)


def prune(
    recent: str,
    now_event_time: int,
    window_ms: int,
    recorded_after: int | None = None,
    late_max: int = LATE_MAX,
) -> str:
    """Drop digests older than the window, except those recorded after ``recorded_after`` (wall ms),
    of which the ``late_max`` most recently recorded are kept. Returns the new string.

    Entries are in the order recorded, so those recorded at or before ``recorded_after`` are the
    first ones: only they and, above the bound, the late ones are looked at. (After a wall-clock
    step back, an entry recorded out of order may stay longer; it never matches outside the window.)
    """
    size = len(recent)
    if recorded_after is not None and size <= late_max * ENTRY and _recorded(recent, 0) > recorded_after:
        return recent  # the first recorded is recent enough, so are the others; the bound holds

    def in_window(j: int) -> bool:
        return now_event_time - _time(recent, j) < window_ms

    if recorded_after is None:
        keep = [j for j in range(0, size, ENTRY) if in_window(j)]
    else:
        old = 0
        while old < size and _recorded(recent, old) <= recorded_after:
            old += ENTRY
        keep = [j for j in range(0, old, ENTRY) if in_window(j)]
        rest = range(old, size, ENTRY)
        late = [j for j in rest if not in_window(j)] if len(rest) > late_max else []
        if len(late) > late_max:
            drop = set(late[: len(late) - late_max])  # the earliest recorded
            keep += [j for j in rest if j not in drop]
        else:
            keep += rest
    if len(keep) * ENTRY == size:
        return recent
    return "".join([recent[j : j + ENTRY] for j in keep])
