"""Every metric against hand-computed answers on the dataset of ``sink_dataset.py`` (real ClickHouse)."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.metrics import run_metric

pytestmark = pytest.mark.integration

APP = "m-app"


def m(client: Any, name: str, f: str = "2026-10-01", t: str = "2026-10-20", by: str = "users", **p: Any):
    return run_metric(client, name, APP, f, t, by, **p)


def col(rows: list[dict], name: str) -> dict[str, Any]:
    return {r["day"][5:]: r[name] for r in rows if r[name]}


def test_dau_users_and_devices(ch_client, metrics_dataset):
    rows = m(ch_client, "dau")
    assert len(rows) == 20  # every day of the range, zeros filled
    # Oct 1: u1,u2 | Oct 2: u1,u3 | Oct 3: u2 | Oct 8: u1 | Oct 15: u4 | Oct 20: u3
    assert col(rows, "dau") == {"10-01": 2, "10-02": 2, "10-03": 1, "10-08": 1, "10-15": 1, "10-20": 1}
    # devices: Oct 1 d1,d2 | Oct 2 d1,d4 | Oct 3 d3 | Oct 8 d1 | Oct 15 d5 | Oct 20 d4
    rows = m(ch_client, "dau", by="devices")
    assert col(rows, "dau") == {"10-01": 2, "10-02": 2, "10-03": 1, "10-08": 1, "10-15": 1, "10-20": 1}


def test_wau_and_mau(ch_client, metrics_dataset):
    wau = {r["day"][5:]: r["wau"] for r in m(ch_client, "wau")}
    # Oct 7 = Oct 1..7: u1,u2,u3 | Oct 9 = 3..9: u2,u1 | Oct 10 = 4..10: u1 | Oct 20 = 14..20: u4,u3
    assert (wau["10-07"], wau["10-08"], wau["10-09"], wau["10-10"], wau["10-20"]) == (3, 3, 2, 1, 2)
    assert wau["10-16"] == 1  # Oct 10..16: u4
    wau_d = {r["day"][5:]: r["wau"] for r in m(ch_client, "wau", by="devices")}
    assert wau_d["10-07"] == 4  # d1, d2, d3, d4
    mau = {r["day"][5:]: r["mau"] for r in m(ch_client, "mau")}
    # Oct 1 = Sep 2..Oct 1: u1,u2 (u4's Sep 1 is outside) | Oct 20 = Sep 21..Oct 20: u1..u4
    assert (mau["10-01"], mau["10-20"]) == (2, 4)
    sep30 = m(ch_client, "mau", "2026-09-30", "2026-09-30")
    assert sep30 == [{"day": "2026-09-30", "mau": 1}]  # Sep 1..30: u4


def test_active_series_combines(ch_client, metrics_dataset):
    rows = m(ch_client, "active-series", "2026-10-07", "2026-10-08")
    assert rows == [
        {"day": "2026-10-07", "dau": 0, "wau": 3, "mau": 3},
        {"day": "2026-10-08", "dau": 1, "wau": 3, "mau": 3},
    ]


def test_new_users(ch_client, metrics_dataset):
    assert col(m(ch_client, "new-users"), "new_users") == {"10-01": 2, "10-02": 1}  # u4 is from Sep 1
    # devices: d1,d2 on Oct 1; d4 on Oct 2; u2's second device d3 on Oct 3; d5 first seen Sep 1
    assert col(m(ch_client, "new-users", by="devices"), "new_devices") == {"10-01": 2, "10-02": 1, "10-03": 1}


def test_retained_reengaged_and_user_types(ch_client, metrics_dataset):
    # X = 30: Oct 2 u1 (Oct 1) | Oct 3 u2 (Oct 1) | Oct 8 u1 (Oct 2) | Oct 20 u3 (Oct 2)
    assert col(m(ch_client, "retained"), "retained") == {"10-02": 1, "10-03": 1, "10-08": 1, "10-20": 1}
    # u4 on Oct 15: last active Sep 1, outside Sep 15..Oct 14, not new
    assert col(m(ch_client, "reengaged"), "reengaged") == {"10-15": 1}
    # X = 7: u3 on Oct 20 was last active Oct 2, outside Oct 13..19: re-engaged instead
    assert col(m(ch_client, "retained", window_days=7), "retained") == {"10-02": 1, "10-03": 1, "10-08": 1}
    assert col(m(ch_client, "reengaged", window_days=7), "reengaged") == {"10-15": 1, "10-20": 1}
    types = m(ch_client, "user-types")
    dau = m(ch_client, "dau")
    for t, d in zip(types, dau, strict=True):
        assert t["new"] + t["retained"] + t["reengaged"] == d["dau"]
    assert types[0] == {"day": "2026-10-01", "new": 2, "retained": 0, "reengaged": 0}


def test_retention_matrix(ch_client, metrics_dataset):
    rows = m(ch_client, "retention", max_day=7)
    cells = {(r["cohort"], r["day"]): (r["cohort_size"], r["active"]) for r in rows}
    # cohort Oct 1 = {u1, u2}: day 1 u1 (Oct 2), day 2 u2 (Oct 3), day 7 u1 (Oct 8)
    assert [cells[("2026-10-01", n)][1] for n in range(8)] == [2, 1, 1, 0, 0, 0, 0, 1]
    # cohort Oct 2 = {u3}: only day 0 within 7 days
    assert [cells[("2026-10-02", n)][1] for n in range(8)] == [1, 0, 0, 0, 0, 0, 0, 0]
    pooled = {r["day"]: r["rate"] for r in rows if r["cohort"] == "all"}
    assert pooled[0] == 1.0
    assert pooled[1] == pytest.approx(1 / 3, abs=1e-6)
    assert pooled[7] == pytest.approx(1 / 3, abs=1e-6)
    # a range ending Oct 3: cohort Oct 2 is only observed up to day 1; day 2 pools Oct 1 only (1 of 2)
    short = m(ch_client, "retention", "2026-10-01", "2026-10-03", max_day=7)
    assert {(r["cohort"], r["day"]) for r in short if r["cohort"] == "2026-10-02"} == {
        ("2026-10-02", 0), ("2026-10-02", 1)}
    assert next(r for r in short if r["cohort"] == "all" and r["day"] == 2)["rate"] == 0.5


def test_sessions_and_histogram(ch_client, metrics_dataset):
    rows = {r["day"]: r for r in m(ch_client, "sessions", "2026-10-01", "2026-10-02")}
    # Oct 1: s1 (latest version: 10 s), s2 20 s, s3 40 s; p50 = sorted[floor(1.5)] = 20, p90 = sorted[2] = 40
    assert rows["2026-10-01"] == {"day": "2026-10-01", "sessions": 3, "users": 2, "p50_s": 20.0,
                                  "p90_s": 40.0, "mean_s": pytest.approx(70 / 3, abs=1e-5)}
    assert rows["2026-10-02"]["sessions"] == 1 and rows["2026-10-02"]["p90_s"] == 400.0
    hist = {r["bucket"]: r["sessions"] for r in m(ch_client, "session-histogram")}
    assert hist == {"0-10s": 0, "10-30s": 2, "30-60s": 1, "60-300s": 0, "300-900s": 1, "900-1800s": 0,
                    "1800-3600s": 0, "3600s+": 0}


def test_funnel_window(ch_client, metrics_dataset):
    # 1 h window: u1 open->view->buy in 20 min (3); u2's buy is 2 h after open (2); u3 only opens (1)
    rows = m(ch_client, "funnel", steps="open,view,buy", window=3600)
    assert [(r["name"], r["users"]) for r in rows] == [("open", 3), ("view", 2), ("buy", 1)]
    assert rows[2]["conversion"] == pytest.approx(1 / 3, abs=1e-6)
    assert rows[2]["from_previous"] == 0.5
    day = m(ch_client, "funnel", steps=["open", "view", "buy"], window=86400)
    assert [r["users"] for r in day] == [3, 2, 2]


def test_errors_by_level_and_code(ch_client, metrics_dataset):
    rows = m(ch_client, "errors")
    assert rows == [
        {"level": "Error", "code": "E1", "events": 3, "users": 2,
         "top_messages": [{"message": "boom", "events": 2}, {"message": "bang", "events": 1}]},
        {"level": "Warning", "code": "W1", "events": 1, "users": 1,
         "top_messages": [{"message": "slow", "events": 1}]},
    ]


def test_revenue_by_day_and_product(ch_client, metrics_dataset):
    rows = {r["day"]: r for r in m(ch_client, "revenue")}
    assert set(rows) == {"2026-10-01", "2026-10-02", "2026-10-15"}
    oct1 = rows["2026-10-01"]  # 11 + 5 USD, 8 + 4 GBP, u1 and u2
    assert (oct1["revenue_usd"], oct1["revenue_reporting"], oct1["purchases"], oct1["payers"]) == (16.0, 12.0, 2, 2)
    assert oct1["reporting_currency"] == "GBP"
    assert rows["2026-10-02"]["revenue_usd"] == -2.0  # the refund
    oct15 = rows["2026-10-15"]  # 20000 USD out of range: excluded and counted
    assert (oct15["revenue_usd"], oct15["purchases"], oct15["out_of_range"], oct15["out_of_range_usd"]) == (
        0.0, 0, 1, 20000.0)
    prod = {r["product_id"]: r for r in m(ch_client, "revenue", group="product")}
    assert (prod["p1"]["revenue_usd"], prod["p1"]["purchases"], prod["p1"]["out_of_range"]) == (9.0, 2, 1)
    assert (prod["p2"]["revenue_usd"], prod["p2"]["payers"]) == (5.0, 1)
    cur = {r["currency"]: r for r in m(ch_client, "revenue-by-currency")}
    assert (cur["EUR"]["revenue"], cur["EUR"]["revenue_usd"]) == (10.0, 11.0)
    assert (cur["USD"]["revenue"], cur["USD"]["purchases"], cur["USD"]["out_of_range"]) == (3.0, 2, 1)


def test_attribution(ch_client, metrics_dataset):
    rows = m(ch_client, "attribution")
    assert rows == [
        # u1: 11 - 2, u2: 5; both bought within a day of their first google/c1 event
        {"media_source": "google", "campaign": "c1", "users": 2, "revenue_usd": 14.0, "payers": 2,
         "purchased_within": 2},
        {"media_source": "(none)", "campaign": "(none)", "users": 1, "revenue_usd": 0.0, "payers": 0,
         "purchased_within": 0},  # u4's purchase is out of range
        {"media_source": "fb", "campaign": "c2", "users": 1, "revenue_usd": 0.0, "payers": 0,
         "purchased_within": 0},
    ]
    hour = {r["campaign"]: r["purchased_within"] for r in m(ch_client, "attribution", within=3600)}
    assert hour["c1"] == 1  # u1 bought 20 min after first touch, u2 2 h after


def test_dead_letters(ch_client, metrics_dataset):
    rows = m(ch_client, "dead-letters")
    assert [(r["stage"], r["reason"], r["events"]) for r in rows] == [
        ("validate", "invalid_event_name", 2), ("validate", "missing_field", 1)]


def test_rollups_follow_the_base_tables(ch_client, metrics_dataset):
    q = ch_client.query
    dau = q("SELECT day, uniqMerge(users), uniqMerge(devices) FROM daily_active WHERE app_id = 'm-app' "
            "AND day = '2026-10-01' GROUP BY day").result_rows
    assert dau[0][1:] == (2, 2)
    first = q("SELECT min(first_seen) FROM first_seen WHERE app_id = 'm-app' AND kind = 'users' AND key = 'u4'")
    assert first.result_rows[0][0].date().isoformat() == "2026-09-01"
    rev = q("SELECT sum(revenue_usd), sum(out_of_range) FROM revenue_daily WHERE app_id = 'm-app'").result_rows
    assert rev[0] == (14.0, 1)
    errs = q("SELECT level, code, sum(events) FROM errors_daily WHERE app_id = 'm-app' GROUP BY level, code "
             "ORDER BY level").result_rows
    assert errs == [("Error", "E1", 3), ("Warning", "W1", 1)]


def test_bad_parameters_name_the_parameter(ch_client, metrics_dataset):
    from sinks.exceptions import MetricError

    for kwargs, param in [
        ({"name": "nope"}, "metric"), ({"f": "2026-13-01"}, "from"), ({"by": "cats"}, "by"),
        ({"name": "funnel", "steps": "one"}, "steps"), ({"name": "retained", "window_days": "x"}, "window_days"),
        ({"f": "2026-10-05", "t": "2026-10-01"}, "to"),
    ]:
        name = kwargs.pop("name", "dau")
        with pytest.raises(MetricError) as exc:
            m(ch_client, name, **kwargs)
        assert exc.value.param == param


def test_replayed_batches_change_nothing(ch_client, metrics_dataset):
    import sink_dataset

    from sinks.clickhouse import ClickHouseSink

    before = ch_client.query("SELECT count() FROM events WHERE app_id = 'm-app'").result_rows[0][0]
    rollup = ch_client.query("SELECT sum(revenue_usd) FROM revenue_daily WHERE app_id = 'm-app'").result_rows
    ClickHouseSink(ch_client, group="test-metrics").write(sink_dataset.batches())
    assert ch_client.query("SELECT count() FROM events WHERE app_id = 'm-app'").result_rows[0][0] == before == 16
    assert ch_client.query("SELECT sum(revenue_usd) FROM revenue_daily WHERE app_id = 'm-app'").result_rows == rollup
