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
