"""Aggregation of live-counter updates (pure) and the Lua script's ARGV layout."""

from __future__ import annotations

from datetime import UTC, datetime

from sinks.base import Batch
from sinks.redis import live_key, plan, script_args

T0 = int(datetime(2026, 10, 1, 12, 0, 30, tzinfo=UTC).timestamp() * 1000)
MIN = T0 // 60_000 * 60


def ev(user, event="open", t=T0, **kw):
    return {"app_id": "a", "user_key": user, "device_id": "d-" + user, "event": event, "type": "track",
            "event_time": t, **kw}


def test_events_are_aggregated_into_few_operations():
    recs = [ev("u1", message_id="m1"), ev("u1", message_id="m2"),
            ev("u2", "buy", revenue_usd=1.5, revenue_in_range=True, message_id="m3"),
            ev("u3", "buy", revenue_usd=99999.0, revenue_in_range=False, message_id="m4"),
            ev("u2", "error", error_level="Error", t=T0 + 1000, message_id="m5")]
    ops = plan(recs, "events", "p:", online_window_s=300)
    # every record given is counted (the sink left out re-emits before): plain increments, no ids
    assert all(op != "S" for op, *_ in ops)
    by_key = {}
    for op, key, _ttl, args in ops:
        by_key.setdefault((op, key), []).append(args)
    epm = live_key("p:", "a", "epm", MIN)
    assert sorted(by_key[("H", epm)]) == [["buy", "2"], ["error", "1"], ["open", "2"]]
    assert by_key[("P", "p:live:a:dau:users:20261001")] == [["u1", "u2", "u3"]]
    assert by_key[("P", "p:live:a:dau:devices:20261001")] == [["d-u1", "d-u2", "d-u3"]]
    # revenue in micro-USD, out-of-range amounts excluded
    assert by_key[("I", "p:live:a:revenue_usd:20261001")] == [["1500000"]]
    assert by_key[("H", live_key("p:", "a", "errors", MIN))] == [["Error", "1"]]
    # online: the latest time per user, then old members trimmed
    z = by_key[("Z", "p:live:a:online")][0]
    assert dict(zip(z[1::2], z[0::2], strict=True)) == {"u1": str(T0), "u2": str(T0 + 1000), "u3": str(T0)}
    assert by_key[("R", "p:live:a:online")] == [[str(T0 + 1000 - 600_000)]]


def test_invalid_records_count_reasons_and_other_kinds_nothing():
    # every dead letter given is counted (the sink left out re-emits before); no app: not counted
    recs = [{"app_id": "a", "reason": "bad", "failed_at": T0}, {"app_id": "", "reason": "x", "failed_at": T0},
            {"app_id": "a", "reason": "bad", "stage": "validate", "failed_at": T0 + 5, "message_id": "m1"},
            {"app_id": "a", "reason": "late", "failed_at": T0 + 60_000}]
    assert plan(recs, "invalid", "p:") == [
        ("H", live_key("p:", "a", "invalid", MIN), 7200, ["bad", "2"]),
        ("H", live_key("p:", "a", "invalid", MIN + 60), 7200, ["late", "1"]),
    ]
    assert plan([{"app_id": "a"}], "sessions", "p:") == []


def test_script_args_carry_the_partition_and_range():
    b = Batch("t", 3, [5, 6], [ev("u1"), ev("u1")], "events")
    args = script_args(b, [("H", "k", 60, ["f", "2"])])
    assert args == ["t/3", "5", "6", "H", "k", "60", b'["f","2"]']


def test_many_members_are_chunked():
    recs = [ev(f"u{i:05d}") for i in range(2500)]
    pf = [o for o in plan(recs, "events", "p:") if o[0] == "P" and "users" in o[1]]
    assert [len(o[3]) for o in pf] == [1000, 1000, 500]


def test_arrow_plan_equals_the_record_plan():
    import random

    import pyarrow as pa

    from sinks.redis import plan_table

    rnd = random.Random(7)
    recs = []
    for _ in range(300):
        recs.append({
            "app_id": rnd.choice(["a", "b"]), "user_key": f"u{rnd.randrange(40)}",
            "device_id": rnd.choice([f"d{rnd.randrange(50)}", ""]), "event": rnd.choice(["open", "buy", None, ""]),
            "type": rnd.choice(["track", "screen"]), "event_time": T0 + rnd.randrange(-200_000, 200_000),
            "revenue_usd": rnd.choice([None, 1.234567, -2.5, 0.1]), "revenue_in_range": rnd.random() > 0.1,
            "error_level": rnd.choice([None, None, "Error", "Warning"]),
            "message_id": rnd.choice([f"m{rnd.randrange(200)}", ""]),
        })
    table = pa.Table.from_pylist(recs).set_column(
        5, "event_time", pa.array([r["event_time"] for r in recs], pa.timestamp("ms", tz="UTC")))
    assert plan_table(table, "p:", 300) == plan(recs, "events", "p:", 300)


def test_a_fully_applied_arrow_batch_leaves_nothing_to_apply():
    import pyarrow as pa

    from sinks.redis import _after

    table = pa.table({"app_id": pa.array(["a", "a", "a"], pa.large_string())})
    b = Batch("t", 0, [5, 6, 7], [], table=table)
    assert len(_after(b, 7)) == 0  # a replay after a crash between Redis and the commit
    rest = _after(b, 5)
    assert list(rest.offsets) == [6, 7] and rest.table.num_rows == 2 and rest.first_offset == 6


def test_arrow_plan_equals_the_record_plan_across_days_and_midnight():
    import pyarrow as pa

    from sinks.redis import plan_table

    midnight = 1_790_899_200_000  # 2026-10-02 00:00:00 UTC
    times = [midnight + d for d in (-86_400_001, -1, 0, 1, 59_999, 60_000, 3 * 86_400_000 + 5, -1, 0)]
    recs = [{"app_id": "a", "user_key": f"u{i % 3}", "device_id": "", "event": "open", "type": "track",
             "event_time": t, "revenue_usd": None, "revenue_in_range": True, "error_level": None,
             "message_id": f"m{i}"} for i, t in enumerate(times)]
    table = pa.Table.from_pylist(recs).set_column(
        5, "event_time", pa.array(times, pa.timestamp("ms", tz="UTC")))
    ops = plan_table(table, "p:", 300)
    assert ops == plan(recs, "events", "p:", 300)
    days = [o[1].rsplit(":", 1)[1] for o in ops if o[0] == "P" and ":users:" in o[1]]
    assert days == ["20260930", "20261001", "20261002", "20261005"]


def test_only_the_rows_marked_live_are_planned_and_the_mark_follows_a_partial_replay():
    import pyarrow as pa

    from sinks.base import LIVE
    from sinks.redis import _after, _counted, plan_table

    recs = [ev(f"u{i}", message_id=f"m{i}", revenue_usd=1.0, revenue_in_range=True, error_level=None)
            for i in range(4)]
    table = pa.Table.from_pylist(recs)
    table = table.set_column(table.schema.get_field_index("event_time"), "event_time",
                             pa.array([r["event_time"] for r in recs], pa.timestamp("ms", tz="UTC")))
    live = pa.array([True, False, True, False])  # m1 and m3: re-emits of events stored elsewhere
    for b in (Batch("t", 0, [5, 6, 7, 8], recs, meta={LIVE: live}),
              Batch("t", 0, [5, 6, 7, 8], [], table=table, meta={LIVE: live})):
        table_, records = _counted(b)
        ops = plan_table(table_, "p:") if table_ is not None else plan(records, "events", "p:")
        assert ("H", live_key("p:", "a", "epm", MIN), 7200, ["open", "2"]) in ops
        assert ("I", "p:live:a:revenue_usd:20261001", 259200, ["2000000"]) in ops
        rest = _after(b, 6)  # offsets 5 and 6 applied already: m2 counts, m3 does not
        assert rest.meta[LIVE].to_pylist() == [True, False]
        table_, records = _counted(rest)
        assert [r["message_id"] for r in (table_.to_pylist() if table_ is not None else records)] == ["m2"]
    assert _counted(Batch("t", 0, [1], recs[:1])) == (None, recs[:1])  # no mark: every row counts
