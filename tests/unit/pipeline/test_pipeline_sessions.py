"""Sessions: explicit start/end, client sessions, inactivity, heartbeats, emission."""

from __future__ import annotations

from typing import Any

from pipeline import sessions

T0 = 1_790_000_000_000
NOW = 2_000_000_000_000


def put(
    state: dict, raw: Any, t: int, *, now: int = NOW, offset: float | None = None, emit: float = 60.0, **kw
):
    r = raw(timestamp=str(t), message_id=f"m{t}", **kw)
    return sessions.assign(
        state,
        app_id="a1",
        device="dev1",
        raw=r,
        event_time=t,
        heartbeat_offset=offset,
        is_heartbeat=offset is not None,
        user_key="dev1",
        user_id=None,
        media_source="fb",
        campaign="c1",
        inactivity_s=20,
        client_idle_s=300,
        emit_interval_s=emit,
        now=now,
    )


def test_heartbeat_offsets_give_duration(raw):
    st: dict = {}
    for off in (30, 60, 211):
        s, _, _ = put(
            st, raw, T0 + off * 1000, offset=float(off), type="heartbeat", event=None, session_id="cs1"
        )
    rec = sessions.record("a1", "dev1", s, closed=True, reason="idle", version=1)
    assert rec["duration_s"] == 211.0 and rec["heartbeats"] == 3
    assert rec["started_at"] == T0 and rec["ended_at"] == T0 + 211_000


def test_inactivity_timeout_opens_a_new_derived_session(raw):
    st: dict = {}
    s1, seq, out = put(st, raw, T0)
    assert seq == 0 and out == [] and s1["id"].startswith("s_")
    s1b, seq, _ = put(st, raw, T0 + 20_000)  # exactly the timeout: same session
    assert s1b["id"] == s1["id"] and seq == 1
    s2, seq, out = put(st, raw, T0 + 40_001)
    assert s2["id"] != s1["id"] and seq == 0
    assert [(o["session_id"], o["closed"], o["close_reason"], o["events"]) for o in out] == [
        (s1["id"], True, "inactivity", 2)
    ]
    # deterministic ids: the same events give the same session id
    again: dict = {}
    assert put(again, raw, T0)[0]["id"] == s1["id"]


def test_client_session_ignores_gaps_and_switches_on_new_id(raw):
    st: dict = {}
    s, _, _ = put(st, raw, T0, session_id="cs1")
    s, _, out = put(st, raw, T0 + 200_000, session_id="cs1")  # long gap, same client session
    assert s["id"] == "cs1" and s["n"] == 2 and out == []
    s, _, out = put(st, raw, T0 + 201_000, session_id="cs2")
    assert s["id"] == "cs2" and out[0]["session_id"] == "cs1" and out[0]["close_reason"] == "replaced"


def test_explicit_start_and_end(raw):
    st: dict = {}
    s, _, _ = put(st, raw, T0, event="session_start")
    put(st, raw, T0 + 5_000, type="screen", event="Home")
    s, _, out = put(st, raw, T0 + 9_000, event="session_end")
    assert out[0]["closed"] and out[0]["close_reason"] == "session_end"
    assert out[0]["events"] == 3 and out[0]["screens"] == 1 and out[0]["first_screen"] == "Home"
    assert out[0]["duration_s"] == 9.0 and out[0]["media_source"] == "fb" and out[0]["campaign"] == "c1"
    s2, _, _ = put(st, raw, T0 + 10_000)
    assert s2["id"] != s["id"]


def test_interim_emission_at_most_every_n_seconds(raw):
    st: dict = {}
    put(st, raw, T0, now=NOW)
    assert put(st, raw, T0 + 1000, now=NOW + 30_000)[2] == []
    out = put(st, raw, T0 + 2000, now=NOW + 60_000)[2]
    assert len(out) == 1 and out[0]["closed"] is False and out[0]["close_reason"] == "open"
    assert put(st, raw, T0 + 3000, now=NOW + 61_000)[2] == []


def test_idle_close_by_timer(raw):
    st: dict = {}
    s, _, _ = put(st, raw, T0, now=NOW)
    assert sessions.idle_close("a1", "dev1", s, inactivity_s=20, client_idle_s=300, now=NOW + 20_000) is None
    rec = sessions.idle_close("a1", "dev1", s, inactivity_s=20, client_idle_s=300, now=NOW + 20_001)
    assert rec is not None and rec["closed"] and rec["close_reason"] == "inactivity"
    cs, _, _ = put({}, raw, T0, now=NOW, session_id="cs9")
    assert (
        sessions.idle_close("a1", "dev1", cs, inactivity_s=20, client_idle_s=300, now=NOW + 299_000) is None
    )
    assert sessions.idle_close("a1", "dev1", cs, inactivity_s=20, client_idle_s=300, now=NOW + 301_000)
