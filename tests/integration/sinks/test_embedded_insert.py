"""The sink's inserts on embedded ClickHouse read the Arrow table in memory (``sinks.clickhouse.insert_arrow``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pyarrow as pa
import pytest

from schemas import defaults
from sinks.clickhouse import _chdb_handle, insert_arrow, insert_settings
from sinks.rows import EVENTS
from trackflow.config import ClickHouseSettings

pytestmark = pytest.mark.integration


def _rows(app: str, n: int) -> pa.Table:
    t = int(time.time() * 1000)
    recs = []
    for i in range(n):
        r = defaults("enriched_event")
        r.update(message_id=f"{app}-{i}", type="track", event="open", app_id=app, anonymous_id="d", user_key="u",
                 received_at=t, event_time=t, processed_at=t, retention_months=24,
                 properties='{"k": "it\'s"}' if i % 2 else None)
        recs.append(r)
    table = EVENTS.to_arrow(recs, f"emb.{app}", 0, list(range(n)))
    # decoded events arrive with large strings (polars): the in-memory read takes them as they are
    i = table.schema.get_field_index("message_id")
    return table.set_column(i, "message_id", table.column(i).cast(pa.large_string()))


def _count(ch_client: Any, app: str) -> int:
    return int(ch_client.query("SELECT count() FROM events WHERE app_id = {a:String}", parameters={"a": app})
               .result_rows[0][0])


def test_embedded_inserts_read_the_arrow_table_in_memory(ch_client):
    # a clickhouse-connect upgrade that moves the chdb handle would silently bring back the slower
    # route through a temporary file: this says so
    embedded = ClickHouseSettings().is_embedded()
    assert (_chdb_handle(ch_client) is not None) == embedded


def test_an_in_memory_insert_stores_the_rows_once_per_token_and_feeds_the_views(ch_client):
    app = f"emb-{uuid.uuid4().hex[:8]}"
    data = _rows(app, 3000)
    settings = insert_settings("events", data, f"emb/{app}/0-2999")
    insert_arrow(ch_client, "events", data, settings)
    insert_arrow(ch_client, "events", data, settings)  # a retry with the same token: dropped
    assert _count(ch_client, app) == 3000
    assert ch_client.query("SELECT count() FROM event_ids WHERE app_id = {a:String} AND _offset = 2999",
                           parameters={"a": app}).result_rows[0][0] == 1
    stored = ch_client.query("SELECT properties FROM events WHERE app_id = {a:String} AND message_id = {m:String}",
                             parameters={"a": app, "m": f"{app}-1"}).result_rows
    assert stored == [('{"k": "it\'s"}',)]
    # the same rows as two chunks under the same token (chdb would make other blocks of them, and
    # store them again): made one chunk first, so they are dropped
    two = pa.concat_tables([data.slice(0, 1000), data.slice(1000)])
    assert two.column(0).num_chunks == 2
    insert_arrow(ch_client, "events", two, settings)
    assert _count(ch_client, app) == 3000


def test_a_failed_in_memory_insert_raises_and_stores_nothing(ch_client):
    app = f"emb-{uuid.uuid4().hex[:8]}"
    data = _rows(app, 10).drop_columns(["app_id"])  # a column the table requires is missing
    with pytest.raises(Exception, match=r"app_id|[Cc]olumn"):
        insert_arrow(ch_client, "events", data.append_column("no_such_column", pa.array([1] * 10)), {})
    assert _count(ch_client, app) == 0


def test_the_replay_lookup_finds_the_same_stored_ids_in_memory_as_through_the_query_text(ch_client, monkeypatch):
    import sinks.clickhouse as chmod

    app = f"emb-{uuid.uuid4().hex[:8]}'s"  # a quote in the app id
    data = _rows(app, 2000)
    insert_arrow(ch_client, "events", data, insert_settings("events", data, f"emb/{app}/0-1999"))
    ids = pa.array([f"{app}-{i}" for i in range(1990, 2010)] + ["it's-not-stored"], pa.string())
    found = sorted(chmod.stored_event_ids(ch_client, ids, [app, "other"]))
    assert [(r[1], r[4]) for r in found] == sorted((f"{app}-{i}", i) for i in range(1990, 2000))
    assert {(r[0], r[2], r[3]) for r in found} == {(app, f"emb.{app}", 0)}
    monkeypatch.setattr(chmod, "_chdb_handle", lambda client: None)  # a server: ids in the query text
    assert sorted(chmod.stored_event_ids(ch_client, ids, [app, "other"])) == found
    assert chmod.stored_event_ids(ch_client, pa.array(["nope"], pa.string()), [app]) == []


def test_a_replay_lookup_on_a_missing_table_raises(ch_client):
    from sinks.clickhouse import stored_event_ids

    with pytest.raises(Exception, match=r"(?i)table|exist"):
        stored_event_ids(ch_client, pa.array(["x"], pa.string()), ["a"], ids_table="no_such_ids")
