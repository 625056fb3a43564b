"""Sessionization (pure), per device.

A device has at most one current session, kept in its state as a plain dict (short keys, JSON):
``id, cl`` (client-declared?), ``st`` start, ``la`` last event time, ``n`` events, ``hb`` heartbeats,
``sc`` screens, ``fs`` first screen, ``off`` largest heartbeat offset, ``ms``/``cp`` attribution,
``uk``/``uid`` identity, ``seen`` wall time of the last event, ``em`` wall time of the last emission,
``x`` closed.

Rules:

- ``session_start`` closes the current session (``replaced``) and opens one (the event's
  ``session_id`` or a derived id); ``session_end`` joins the current session and closes it.
- An event with a client ``session_id`` belongs to that session whatever the gaps. A different
  id closes the current session (``replaced``). A client session closes after the app's
  ``client_session_idle_s`` (300 s) without events: lazily on the next event, or by the worker's
  timer (``idle``).
- An event without one joins the current session unless the gap in event time exceeds the
  timeout (the app's ``session_timeout_s``, 20 s; ``client_session_idle_s`` if the current session
  is a client one). Then the current closes (``inactivity``) and a new one opens with the id
  :func:`derive_id` (deterministic: app, device and the first event's message_id).
- Heartbeats (``heartbeat_offset`` = seconds since the session started) move the start back to
  ``event_time - offset`` when that is earlier, and duration is
  ``max(last - start, largest offset)``.
- A record goes to ``tf.sessions`` when a session closes, and at most every
  ``session_emit_interval_s`` while it is open (``closed=false``). ``version`` (the emission time
  in ms) orders records of one session: the latest wins.
"""

from __future__ import annotations

import hashlib
from typing import Any

SessionState = dict[str, Any]


def derive_id(app_id: str, device: str, message_id: str) -> str:
    """Deterministic id of a pipeline-derived session."""
    return "s_" + hashlib.blake2b(f"{app_id}|{device}|{message_id}".encode(), digest_size=10).hexdigest()


def timeout_ms(sess: SessionState, inactivity_s: float, client_idle_s: float) -> int:
    return int((client_idle_s if sess.get("cl") else inactivity_s) * 1000)


def _open(sid: str, client: bool, t: int, now: int) -> SessionState:
    return {
        "id": sid,
        "cl": client,
        "st": t,
        "la": t,
        "n": 0,
        "hb": 0,
        "sc": 0,
        "fs": None,
        "off": 0.0,
        "ms": None,
        "cp": None,
        "uk": "",
        "uid": None,
        "seen": now,
        "em": now,
        "x": False,
    }


def record(
    app_id: str, device: str, sess: SessionState, *, closed: bool, reason: str, version: int
) -> dict[str, Any]:
    """The ``Session`` record (schemas/session) of a session state."""
    start = int(sess["st"])
    end = max(int(sess["la"]), start + int(float(sess["off"]) * 1000))
    return {
        "app_id": app_id,
        "session_id": sess["id"],
        "user_key": sess["uk"] or device,
        "device_id": device,
        "user_id": sess.get("uid"),
        "started_at": start,
        "ended_at": end,
        "duration_s": max((int(sess["la"]) - start) / 1000.0, float(sess["off"])),
        "events": int(sess["n"]),
        "heartbeats": int(sess["hb"]),
        "screens": int(sess["sc"]),
        "first_screen": sess.get("fs"),
        "media_source": sess.get("ms"),
        "campaign": sess.get("cp"),
        "closed": closed,
        "close_reason": reason if closed else "open",
        "version": version,
    }


def assign(
    state: dict[str, Any],
    *,
    app_id: str,
    device: str,
    raw: dict[str, Any],
    event_time: int,
    heartbeat_offset: float | None,
    is_heartbeat: bool,
    user_key: str,
    user_id: str | None,
    media_source: str | None,
    campaign: str | None,
    inactivity_s: float,
    client_idle_s: float,
    emit_interval_s: float,
    now: int,
) -> tuple[SessionState, int, list[dict[str, Any]]]:
    """Put one event into the device's current session (``state['s']``).

    Returns ``(session, index of the event in it, session records to emit)``.
    """
    out: list[dict[str, Any]] = []
    cur: SessionState | None = state.get("s")
    etype = raw.get("type")
    name = raw.get("event")
    sid = raw.get("session_id")
    explicit_start = etype == "track" and name == "session_start"
    explicit_end = etype == "track" and name == "session_end"

    def close(reason: str) -> None:
        assert cur is not None
        if not cur.get("x"):
            out.append(record(app_id, device, cur, closed=True, reason=reason, version=now))
            cur["x"] = True

    new: SessionState | None = None
    if explicit_start:
        if cur is not None:
            close("replaced")
        new = _open(sid or derive_id(app_id, device, raw["message_id"]), bool(sid), event_time, now)
    elif sid:
        if cur is None or cur["id"] != sid:
            if cur is not None:
                close("replaced")
            new = _open(sid, True, event_time, now)
        else:
            cur["x"] = False  # a client session continues whatever the gap
    elif (
        cur is None
        or (cur.get("x") and not explicit_end)
        or (event_time - int(cur["la"]) > timeout_ms(cur, inactivity_s, client_idle_s))
    ):
        if cur is not None:
            close("idle" if cur.get("cl") else "inactivity")
        new = _open(derive_id(app_id, device, raw["message_id"]), False, event_time, now)
    if new is not None:
        cur = new
        state["s"] = cur
    assert cur is not None

    seq = int(cur["n"])
    cur["n"] = seq + 1
    if event_time < int(cur["st"]):
        cur["st"] = event_time
    if event_time > int(cur["la"]):
        cur["la"] = event_time
    if is_heartbeat:
        cur["hb"] = int(cur["hb"]) + 1
        if heartbeat_offset is not None:
            cur["off"] = max(float(cur["off"]), heartbeat_offset)
            cur["st"] = min(int(cur["st"]), event_time - int(heartbeat_offset * 1000))
    if etype in ("screen", "page"):
        cur["sc"] = int(cur["sc"]) + 1
        if cur.get("fs") is None:
            cur["fs"] = name
    cur["uk"] = user_key
    cur["uid"] = user_id
    if cur.get("ms") is None and media_source:
        cur["ms"] = media_source
    if cur.get("cp") is None and campaign:
        cur["cp"] = campaign
    cur["seen"] = now
    if explicit_end:
        close("session_end")
    elif now - int(cur["em"]) >= emit_interval_s * 1000:
        out.append(record(app_id, device, cur, closed=False, reason="open", version=now))
        cur["em"] = now
    return cur, seq, out


def idle_close(
    app_id: str, device: str, sess: SessionState, *, inactivity_s: float, client_idle_s: float, now: int
) -> dict[str, Any] | None:
    """The closing record for an open session idle (in wall time) beyond its timeout, else None.

    Used by the worker's timer; the state itself is finalized lazily by the next event.
    """
    if sess.get("x"):
        return None
    if now - int(sess["seen"]) <= timeout_ms(sess, inactivity_s, client_idle_s):
        return None
    return record(
        app_id, device, sess, closed=True, reason="idle" if sess.get("cl") else "inactivity", version=now
    )
