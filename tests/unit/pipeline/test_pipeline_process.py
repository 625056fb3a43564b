"""The whole chain on in-memory state: outputs, dead letters, counters, replays, and totality."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.process import REPLAYED
from pipeline.reasons import Reason
from schemas import codec

T0 = 1_790_000_000_000
NOW = T0 + 5_000


def test_enriched_record_encodes_and_carries_everything(proc, raw):
    r = raw(
        properties={"revenue": "200", "currency": "EUR", "utm_source": "newsletter", "utm_campaign": "oct"},
        context={"os": {"name": "iOS", "version": "17.2"}, "app": {"version": "3.1"}, "locale": "en-GB"},
        user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.2 Mobile/15E148 Safari/604.1",
        sent_at=str(T0 + 3_600_000),
        timestamp=str(T0 + 3_600_000 - 2_000),
    )
    res = proc.process(r, pos=(0, 1), topic="raw", now=NOW)
    assert res.outcome == "enriched" and res.invalid == [] and res.sessions == []
    key, rec = res.enriched[0]
    assert key == "a1:dev1"
    assert rec["event_time"] == T0 - 2_000  # skew-corrected
    assert rec["revenue"] == 200.0 and rec["currency"] == "EUR"
    assert (
        rec["revenue_usd"] == 226.0
        and rec["revenue_reporting"] == 176.28
        and rec["reporting_currency"] == "GBP"
    )
    assert rec["os"] == "iOS" and rec["app_version"] == "3.1" and rec["country"] == "GB"
    assert rec["browser"] == "Mobile Safari"
    assert rec["media_source"] == "newsletter" and rec["campaign"] == "oct"
    assert rec["session_id"].startswith("s_") and rec["session_seq"] == 0 and rec["processed_at"] == NOW
    decoded = codec("enriched_event").decode(codec("enriched_event").encode(rec, "t"), "t")
    assert decoded["revenue_reporting"] == 176.28


def test_no_currency_defaults_to_usd(proc, raw):
    rec = proc.process(raw(properties={"af_revenue": 9.99}), now=NOW).enriched[0][1]
    assert rec["currency"] == "USD" and rec["revenue_usd"] == 9.99 and rec["revenue_reporting"] == 7.79


def test_unknown_currency_is_kept_and_counted(proc, raw):
    rec = proc.process(raw(properties={"revenue": 5, "currency": "ZAR"}), now=NOW).enriched[0][1]
    assert rec["fx_status"] == "unknown_currency" and rec["revenue_usd"] is None
    assert proc.counters["fx_unknown_currency"] == 1


def test_attribution_is_carried_on_later_events(proc, raw):
    proc.process(raw(message_id="a", context={"campaign": {"source": "google", "name": "spring"}}), now=NOW)
    proc.process(raw(message_id="b", properties={"utm_source": "other"}), now=NOW)
    rec = proc.process(raw(message_id="c", properties={"n": 3}), now=NOW).enriched[0][1]
    assert (rec["media_source"], rec["campaign"]) == ("google", "spring")


def test_dead_letter_names_reason_field_and_keeps_payload(proc, raw):
    r = raw(event="=SUM(A1)")
    res = proc.process(r, pos=(3, 17), topic="raw", now=NOW)
    assert res.enriched == [] and res.outcome == Reason.INVALID_EVENT_NAME
    key, dl = res.invalid[0]
    assert key == "a1:dev1" and dl["stage"] == "validate" and dl["reason"] == "invalid_event_name"
    assert dl["field"] == "event" and "event" in dl["message"]
    assert orjson.loads(dl["payload"]) == r
    assert (dl["source_topic"], dl["source_partition"], dl["source_offset"]) == ("raw", 3, 17)
    codec("invalid_event").encode(dl, "t")
    assert proc.counters["invalid_event_name"] == 1


def test_unknown_app_and_undecodable(proc, raw):
    assert proc.process(raw(app_id="nope"), now=NOW).invalid[0][1]["reason"] == Reason.UNKNOWN_APP
    res = proc.process_bytes(codec("raw_event"), b"garbage!!!!!", pos=(0, 1), topic="raw", now=NOW)
    assert res.invalid[0][1]["reason"] == Reason.UNDECODABLE and res.invalid[0][1]["stage"] == "decode"


def test_duplicates_dropped_and_counted(proc, raw):
    assert proc.process(raw(), pos=(0, 1), now=NOW).outcome == "enriched"
    assert proc.process(raw(), pos=(0, 2), now=NOW).outcome == Reason.DUPLICATE_MESSAGE_ID
    same = raw(message_id="m2", timestamp=str(T0 + 9_900))
    assert proc.process(same, pos=(0, 3), now=NOW).outcome == Reason.DUPLICATE_CONTENT
    later = raw(message_id="m3", timestamp=str(T0 + 10_100))
    assert proc.process(later, pos=(0, 4), now=NOW).outcome == "enriched"
    assert proc.counters["duplicate_message_id"] == 1 and proc.counters["duplicate_content"] == 1


def test_content_rule_uses_the_device_clock_so_a_retried_batch_still_matches(proc, raw):
    sent = str(T0 + 1_000)
    first = raw(message_id="m1", timestamp=str(T0), sent_at=sent, received_at=T0 + 1_050)
    assert proc.process(first, pos=(0, 1), now=NOW).outcome == "enriched"
    # the same content 4 s later on the device, in a batch the client retried for 30 s with its
    # original sentAt: the skew-corrected times are 34 s apart, the device's 4 s
    dup = raw(message_id="m2", timestamp=str(T0 + 4_000), sent_at=str(T0 + 4_500), received_at=T0 + 34_550)
    assert proc.process(dup, pos=(0, 2), now=NOW).outcome == Reason.DUPLICATE_CONTENT
    # no client timestamp: the event time (received_at) decides
    p2 = raw(message_id="m3", timestamp=None, sent_at=None, received_at=T0 + 100_000)
    p3 = raw(message_id="m4", timestamp=None, sent_at=None, received_at=T0 + 111_000)
    assert proc.process(p2, pos=(0, 3), now=NOW).outcome == "enriched"
    assert proc.process(p3, pos=(0, 4), now=NOW).outcome == "enriched"


def test_s2s_exempt_from_content_rule(proc, raw):
    proc.process(raw(source="appsflyer_s2s"), now=NOW)
    assert proc.process(raw(message_id="m2", source="appsflyer_s2s"), now=NOW).outcome == "enriched"


def test_windows_are_configurable(make_proc, raw):
    p = make_proc(content_window_s=0, message_id_window_s=1)
    p.process(raw(), now=NOW)
    assert p.process(raw(message_id="m2"), now=NOW).outcome == "enriched"
    assert p.process(raw(received_at=T0 + 1_000), now=NOW).outcome == "enriched"


def test_dead_letter_duplicates_option(make_proc, raw):
    p = make_proc(dead_letter_duplicates=True)
    p.process(raw(), now=NOW)
    res = p.process(raw(), pos=(0, 9), now=NOW)
    assert res.invalid[0][1]["reason"] == "duplicate_message_id" and res.invalid[0][1]["stage"] == "dedupe"


def test_replay_after_crash_produces_nothing_and_changes_no_state(proc, raw):
    assert proc.process(raw(), pos=(1, 5), now=NOW).outcome == "enriched"
    before = orjson.dumps(proc.state.get_device("a1:dev1"))
    res = proc.process(raw(), pos=(1, 5), now=NOW)  # the same record delivered again
    assert res.outcome == REPLAYED and not (res.enriched or res.invalid or res.sessions)
    assert proc.counters["replayed"] == 1 and orjson.dumps(proc.state.get_device("a1:dev1")) == before
    # the device's state holds every record of its partition up to its position (the worker
    # processes a partition strictly in order): an earlier record of the device is a replay too
    later = raw(message_id="m9", timestamp=str(T0 + 60_000))
    assert proc.process(later, pos=(1, 8), now=NOW).outcome == "enriched"
    earlier = raw(message_id="m7", timestamp=str(T0 + 30_000))
    assert proc.process(earlier, pos=(1, 6), now=NOW).outcome == REPLAYED
    # a position in another partition says nothing about this one
    other = raw(message_id="m8", timestamp=str(T0 + 45_000))
    assert proc.process(other, pos=(2, 1), now=NOW).outcome == "enriched"
    # the message-id entry alone identifies the record
    proc.state.put_device("a1:dev1", {})
    assert proc.process(raw(), pos=(1, 5), now=NOW).outcome == REPLAYED
    # a new record of the device is processed as usual
    assert (
        proc.process(raw(message_id="m10", timestamp=str(T0 + 90_000)), pos=(1, 9), now=NOW).outcome
        == "enriched"
    )


def test_a_replayed_content_duplicate_stays_a_duplicate_on_a_state_ahead_of_it(proc, raw):
    # A, then B (A's content 4 s later: a duplicate), then C (the same content 20 s later: a new
    # event, whose digest replaces A's). A worker killed after storing the state that holds C, but
    # before storing the frontier past A and B, reads them again: they must produce nothing. Decided
    # again on that state, B met C's digest, 16 s away, and was stored (fault suite, worker SIGKILL).
    a = raw(message_id="a", timestamp=str(T0))
    b = raw(message_id="b", timestamp=str(T0 + 4_000))
    c = raw(message_id="c", timestamp=str(T0 + 20_000))
    assert proc.process(a, pos=(2, 10), now=NOW).outcome == "enriched"
    assert proc.process(b, pos=(2, 11), now=NOW).outcome == "duplicate_content"
    assert proc.process(c, pos=(2, 12), now=NOW).outcome == "enriched"
    state = orjson.dumps(proc.state.get_device("a1:dev1"))
    for rec, pos in ((a, (2, 10)), (b, (2, 11)), (c, (2, 12))):
        res = proc.process(rec, pos=pos, now=NOW)
        assert res.outcome == REPLAYED and not (res.enriched or res.invalid or res.sessions)
    assert orjson.dumps(proc.state.get_device("a1:dev1")) == state


def test_identity_resolution_in_enriched_events(proc, raw):
    proc.process(raw(message_id="i", type="identify", event=None, user_id="u1"), now=NOW)
    rec = proc.process(raw(message_id="t", timestamp=str(T0 + 1)), now=NOW).enriched[0][1]
    assert rec["user_id"] == "u1" and rec["user_key"] == "u1" and rec["device_id"] == "dev1"


def test_session_records_are_keyed_by_session(proc, raw):
    proc.process(raw(message_id="1", event="session_start", session_id="cs"), now=NOW)
    res = proc.process(
        raw(message_id="2", event="session_end", session_id="cs", timestamp=str(T0 + 5)), now=NOW
    )
    key, rec = res.sessions[0]
    assert key == "a1:cs" and rec["closed"] and rec["events"] == 2
    codec("session").encode(rec, "t")


def test_close_idle(proc, raw):
    proc.process(raw(), now=NOW)
    assert proc.close_idle("a1:dev1", NOW + 1_000) is None
    key, rec = proc.close_idle("a1:dev1", NOW + 21_000)
    assert rec["closed"] and rec["close_reason"] == "inactivity" and key.startswith("a1:s_")


def test_the_timer_closes_a_session_once_until_the_device_is_active_again(proc, raw):
    """The state remembers the timer's close (it used to be a map in the worker's memory, one entry
    per device that never came back, lost at a restart: the session was then closed again)."""
    proc.process(raw(), now=NOW)
    key, rec = proc.close_idle("a1:dev1", NOW + 21_000)
    assert proc.state.get_device("a1:dev1")["tc"] == rec["session_id"]
    assert proc.close_idle("a1:dev1", NOW + 60_000) is None  # closed once
    # the device comes back within the session's timeout (event time): the session continues,
    # and the timer may close it again later
    res = proc.process(raw(message_id="m2", event="level_up", timestamp=str(T0 + 5_000)), now=NOW + 70_000)
    assert res.outcome == "enriched" and "tc" not in proc.state.get_device("a1:dev1")
    key2, rec2 = proc.close_idle("a1:dev1", NOW + 95_000)
    assert key2 == key and rec2["events"] == 2


def test_the_open_session_scan_skips_sessions_the_timer_closed():
    import orjson

    from pipeline.worker import APPLIED_KEY, _rebuild_index

    class Store:
        _dbs = {
            0: {
                b"a1:open": orjson.dumps({"s": {"id": "s1", "x": False}}),
                b"a1:done": orjson.dumps({"s": {"id": "s2", "x": True}}),
                b"a1:timer": orjson.dumps({"s": {"id": "s3", "x": False}, "tc": "s3"}),
                b"a1:reopened": orjson.dumps({"s": {"id": "s5", "x": False}, "tc": "s4"}),
                APPLIED_KEY: b"41",
            },
            1: {b"a1:other": orjson.dumps({"s": {"id": "s6", "x": False}})},
        }

    class Table:
        data = Store()

    found: dict = {}
    _rebuild_index(Table(), found, {0})
    assert found == {"a1:open": (0, 0), "a1:reopened": (0, 0)}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=8), ch, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(
    [
        "revenue",
        "af_revenue",
        "value",
        "currency",
        "af_currency",
        "error_level",
        "tx_ref",
        "bundle_paid_amount",
        "offset",
        "utm_source",
        "x",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    etype=st.sampled_from(
        ["track", "screen", "identify", "alias", "heartbeat", "page", "group", "bogus", ""]
    ),
    event=st.none()
    | st.text(max_size=12)
    | st.sampled_from(["session_start", "session_end", "heartbeat", "error"]),
    props=st.dictionaries(field_names, json_values, max_size=4) | st.text(max_size=10),
    ts=st.none() | st.text(max_size=12) | st.integers(-(10**15), 10**15).map(str),
    sid=st.none() | st.text(max_size=4),
    anon=st.none() | st.text(max_size=4),
)
def test_any_input_is_enriched_or_dead_lettered_never_raises(proc, raw, etype, event, props, ts, sid, anon):
    r = raw(
        type=etype,
        event=event,
        timestamp=ts,
        session_id=sid,
        anonymous_id=anon,
        properties=props if isinstance(props, str) else orjson.dumps(props).decode(),
    )
    res = proc.process(r, now=NOW)
    assert len(res.enriched) + len(res.invalid) == 1 or res.outcome in (
        "duplicate_message_id",
        "duplicate_content",
    )
    for _, rec in res.enriched:
        codec("enriched_event").encode(rec, "t")
    for _, rec in res.invalid:
        codec("invalid_event").encode(rec, "t")
        assert rec["reason"] in {r.value for r in Reason} and rec["reason"] != "internal_error"
    for _, rec in res.sessions:
        codec("session").encode(rec, "t")
