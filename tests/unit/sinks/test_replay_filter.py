"""The ClickHouse sink's pre-insert filter of events and dead letters already stored (fake client)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from sinks.clickhouse import drop_stored_events, lookup_stored_dead_letters


class FakeClient:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any], settings: Any = None) -> Any:
        self.queries.append((sql, parameters))
        return type("R", (), {"result_rows": self.rows})()


def _events(mids: list[str], apps: list[str] | None = None, partition: int = 0) -> pa.Table:
    n = len(mids)
    return pa.table({
        "app_id": apps or ["a"] * n, "message_id": mids,
        "event_time": pa.array([1_790_856_000_000 + i for i in range(n)], pa.timestamp("ms", tz="UTC")),
        "_topic": ["t"] * n, "_partition": pa.array([partition] * n, pa.uint32()),
        "_offset": pa.array(range(n), pa.uint64()),
    })


def _stored(app: str, mid: str, partition: int = 9, offset: int = 99) -> tuple[Any, ...]:
    """A row of the lookup: an id stored at ``t``/``partition``/``offset``."""
    return (app, mid, "t", partition, offset)


def test_events_already_stored_or_repeated_in_the_batch_are_dropped():
    client = FakeClient([_stored("a", "m2")])
    data = _events(["m1", "m2", "m1", "", "", "m3"], ["a", "a", "a", "a", "a", "b"])
    out = drop_stored_events(client, data)
    # m1 kept once (the first), m2 stored already, empty ids always kept, m3 of app b kept
    assert out.column("_offset").to_pylist() == [0, 3, 4, 5]
    (sql, params), = client.queries
    assert "FROM event_ids" in sql and "message_id IN" in sql
    assert params["apps"] == ("a", "b")
    assert """JSONExtract('["m1","m2","m3"]', 'Array(String)')""" in sql


def test_message_ids_are_escaped_into_the_query_text():
    client = FakeClient([])
    drop_stored_events(client, _events(["it's", "back\\slash", "100%s"]))
    (sql, _), = client.queries
    # JSON first ("\\" for a backslash), then the SQL string literal ("\\\\", "\\'"), then "%%" for the
    # client's %-binding of the other parameters
    assert """'["it\\'s","back\\\\\\\\slash","100%%s"]'""" in sql  # in the batch's order


def test_a_same_message_id_in_another_app_is_not_a_duplicate():
    out = drop_stored_events(FakeClient([_stored("b", "m1")]), _events(["m1"]))
    assert out.num_rows == 1


def test_a_batch_of_empty_ids_needs_no_lookup():
    client = FakeClient([])
    assert drop_stored_events(client, _events(["", ""])).num_rows == 2
    assert client.queries == []


def _letters(n: int, **cols: list[Any]) -> pa.Table:
    ts = pa.array([1_790_856_000_000] * n, pa.timestamp("ms", tz="UTC"))
    base = {"app_id": ["a"] * n, "stage": ["validate"] * n, "reason": ["bad"] * n, "source_topic": [None] * n,
            "source_partition": pa.array([None] * n, pa.int32()), "source_offset": pa.array([None] * n, pa.int64()),
            "failed_at": ts, "_topic": ["dl"] * n, "_partition": pa.array([0] * n, pa.uint32()),
            "_offset": pa.array(range(n), pa.uint64())}
    return pa.table(base | cols)


def test_dead_letters_are_identified_by_id_else_position_never_by_nothing():
    data = _letters(5, message_id=["x1", "x1", "", "", "x2"],
                    reason=["bad", "bad", "undecodable", "undecodable", "bad"],
                    source_topic=[None, None, "raw", None, "raw"],
                    source_partition=pa.array([None, None, 1, None, 0], pa.int32()),
                    source_offset=pa.array([None, None, 7, None, 9], pa.int64()))
    # stored already: the one at raw/0/9 (its failed_at differs: a replay sets it anew), written
    # from another position of the dead-letter topic (a re-emit)
    client = FakeClient([("a", "x2", "validate", "bad", "raw", 0, 9, "dl", 3, 40)])
    kept, live = lookup_stored_dead_letters(client, "invalid_events", data)
    assert kept.column("_offset").to_pylist() == [0, 2, 3]
    assert live.to_pylist() == [True, False, True, True, False]
    (_, params), = client.queries
    assert [str(params["lo"]), str(params["hi"])] == ["2026-09-30", "2026-10-01"]


def test_a_dead_letter_retried_at_another_position_is_stored_once():
    # a request answered 503 whose events still reached Kafka, then retried by the client: the same
    # invalid event at two raw positions, one in this batch and one already stored
    data = _letters(3, message_id=["x1", "x1", "x3"], source_topic=["raw"] * 3,
                    source_partition=pa.array([0, 1, 1], pa.int32()), source_offset=pa.array([5, 8, 9], pa.int64()))
    assert lookup_stored_dead_letters(FakeClient([]), "invalid_events", data)[0].column("_offset").to_pylist() == [0, 2]
    stored = FakeClient([("a", "x3", "validate", "bad", "raw", 3, 77, "dl", 0, 900)])
    assert lookup_stored_dead_letters(stored, "invalid_events", data)[0].column("_offset").to_pylist() == [0]


def test_a_dead_letter_stored_at_its_own_position_is_counted_live_but_not_stored_again():
    # a crash after the insert, before Redis: the same batch again finds x1 at its own position
    data = _letters(2, message_id=["x1", "x2"])
    client = FakeClient([("a", "x1", "validate", "bad", None, None, None, "dl", 0, 0)])
    kept, live = lookup_stored_dead_letters(client, "invalid_events", data)
    assert kept.column("message_id").to_pylist() == ["x2"] and live.to_pylist() == [True, True]
    nothing = FakeClient([])
    assert lookup_stored_dead_letters(nothing, "invalid_events", data) == (data, None)


def test_the_batches_of_a_flush_share_one_lookup_and_see_each_other():
    from sinks.clickhouse import lookup_stored_events

    client = FakeClient([_stored("a", "m2")])
    first = _events(["m1", "m2", "m3"])
    # another partition's batch: m1 again (a re-emit on another partition), m1 of another app, new m4
    second = _events(["m1", "m1", "m4", ""], ["a", "b", "a", "a"], partition=1)
    out, live = lookup_stored_events(client, [first, second])
    assert [t.column("message_id").to_pylist() for t in out] == [["m1", "m3"], ["m1", "m4", ""]]
    assert out[1].column("app_id").to_pylist() == ["b", "a", "a"]
    # the live counters count what is inserted: m2 is stored at another position (a re-emit)
    assert [m.to_pylist() for m in live] == [[True, False, True], [False, True, True, True]]
    (sql, params), = client.queries  # one query for both
    assert "_topic, _partition, _offset FROM event_ids" in sql
    assert params["apps"] == ("a", "b") and """'["m1","m2","m3","m4"]'""" in sql


def test_a_row_stored_at_its_own_position_is_not_inserted_again_but_is_counted_live():
    # a crash after the ClickHouse insert, before Redis: the replay finds m0 and m1 stored at their
    # own positions (t/0/0, t/0/1), and m2 stored at t/0/7, an earlier copy (this is the re-emit)
    from sinks.clickhouse import lookup_stored_events

    client = FakeClient([_stored("a", "m0", 0, 0), _stored("a", "m1", 0, 1), _stored("a", "m2", 0, 7),
                         _stored("b", "m3", 0, 3)])
    data = _events(["m0", "m1", "m2", "m3", "m4"])
    (kept,), (live,) = lookup_stored_events(client, [data])
    assert kept.column("message_id").to_pylist() == ["m3", "m4"]  # m3 is stored for app b only
    assert live.to_pylist() == [True, True, False, True, True]


def test_nothing_stored_and_no_repeat_counts_every_row():
    from sinks.clickhouse import lookup_stored_events

    data = _events(["m0", "m1"])
    (kept,), (live,) = lookup_stored_events(FakeClient([]), [data])
    assert kept is data and live is None


def test_an_app_id_and_message_id_split_differently_are_different_keys():
    from sinks.clickhouse import lookup_stored_events

    # "a:b" + "c" and "a" + "b:c" would collide in a key joined with ":" alone
    out, _ = lookup_stored_events(FakeClient([_stored("a:b", "c")]), [_events(["b:c"], ["a"])])
    assert out[0].num_rows == 1


def test_strings_joins_arrays_and_chunked_arrays_chunk_by_chunk():
    from sinks.clickhouse import _strings

    parts = [pa.chunked_array([pa.array(["a", "b"]), pa.array(["c"])]), pa.array(["d"]), pa.chunked_array([], pa.string())]
    out = _strings(parts)
    assert out.to_pylist() == ["a", "b", "c", "d"] and out.num_chunks == 3
