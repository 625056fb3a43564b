"""Records become Arrow rows with the tables' column names and the Kafka coordinates."""

from __future__ import annotations

from schemas import defaults
from sinks.rows import EVENTS, INVALID, SESSIONS, fx_to_arrow


def test_event_rows_fill_defaults_and_coordinates():
    r = defaults("enriched_event")
    r.update(message_id="m", type="identify", app_id="a", user_key="u", device_id="d", received_at=1,
             event_time=2, processed_at=3, timestamp="2026-01-01T00:00:00Z")
    t = EVENTS.to_arrow([r], "topic", 2, [41])
    row = t.to_pylist()[0]
    assert row["event"] == "" and row["timestamp_sent"] == "2026-01-01T00:00:00Z"
    assert row["revenue_in_range"] is True and row["retention_months"] == 24
    assert (row["_topic"], row["_partition"], row["_offset"]) == ("topic", 2, 41)
    assert t.num_columns == len(EVENTS.columns) + 3


def test_session_and_invalid_rows():
    s = defaults("session")
    s.update(app_id="a", session_id="s", user_key="u", device_id="d", started_at=1, ended_at=2, duration_s=1.0,
             events=1, heartbeats=0, screens=0, closed=True, version=5)
    assert SESSIONS.to_arrow([s], "t", 0, [0]).to_pylist()[0]["version"] == 5
    inv = {"app_id": "a", "message_id": "", "stage": "validate", "reason": "r", "message": "m", "payload": "{}",
           "received_at": 1, "failed_at": 2}
    assert INVALID.to_arrow([inv], "t", 0, [0]).to_pylist()[0]["reason"] == "r"


def test_fx_records_become_one_row_per_currency():
    t = fx_to_arrow([{"hour": "2026-10-01T13:00:00Z", "rates": {"GBP": 0.8, "EUR": 0.9}, "source": "ecb",
                      "fetched_at": 5}])
    rows = t.to_pylist()
    assert [(r["currency"], r["rate"]) for r in rows] == [("EUR", 0.9), ("GBP", 0.8)]
    assert rows[0]["hour"].isoformat() == "2026-10-01T13:00:00+00:00"


def test_fast_arrow_path_gives_the_same_rows_as_the_dict_path():
    from schemas import codec
    from sinks.decode import ArrowDecoder
    from sinks.rows import live_view

    c = codec("enriched_event")
    recs = []
    for i in range(5):
        r = defaults("enriched_event")
        r.update(message_id=f"m{i}", type="track", app_id="a", user_key=f"u{i}", device_id="d", received_at=i,
                 event_time=1_700_000_000_000 + i, processed_at=9, event=None if i == 0 else "buy",
                 revenue=1.5 if i % 2 else None, revenue_in_range=i != 3, error_level="Error" if i == 4 else None)
        recs.append(r)
    values = [c.encode(r, "t") for r in recs]
    table, fallback = ArrowDecoder("enriched_event", c).decode(values, "t")
    assert table is not None and fallback == []
    fast = EVENTS.from_arrow(table, "t", 1, list(range(5)))
    slow = EVENTS.to_arrow([c.decode(v, "t") for v in values], "t", 1, list(range(5)))
    assert fast.to_pylist() == slow.to_pylist()
    live = live_view(table)
    assert live[4] == {"app_id": "a", "user_key": "u4", "device_id": "d", "event": "buy", "type": "track",
                       "event_time": 1_700_000_000_004, "revenue_usd": None, "revenue_in_range": True,
                       "error_level": "Error"}


def test_undecodable_values_fall_back_and_are_reported_as_none():
    from schemas import codec
    from sinks.decode import ArrowDecoder

    c = codec("enriched_event")
    r = defaults("enriched_event")
    r.update(message_id="m", type="track", app_id="a", user_key="u", device_id="d", received_at=1,
             event_time=2, processed_at=3)
    table, recs = ArrowDecoder("enriched_event", c).decode([c.encode(r, "t"), b"garbage"], "t")
    assert table is None
    assert recs[0]["message_id"] == "m" and recs[1] is None
