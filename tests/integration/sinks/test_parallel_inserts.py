"""The ClickHouse sink's inserts on the real engine.

- A flush's inserts (its events batches merged into one, the other batches one each, in parallel):
  every row once, a failed insert fails the flush with the batch named, and the retry stores
  nothing twice; a replay whose batches come together differently stores nothing twice either.
- A batch written again (replay, retry) whose token ClickHouse holds without its rows (a process
  killed between the deduplication log and the part) gets its rows back, once.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from schemas import defaults
from sinks.base import AGAIN, Batch
from sinks.clickhouse import ClickHouseSink, ThreadClients, connect
from sinks.exceptions import StorageUnavailable
from sinks.migrate import migrate
from trackflow.config import ClickHouseSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_db(tf_env: dict[str, str]) -> Iterator[ClickHouseSettings]:
    """A database of its own, migrated (its tables are changed by the test)."""
    ch = ClickHouseSettings(clickhouse_database=f"par_{uuid.uuid4().hex[:8]}")
    admin = connect(ch, database=None)
    migrate(admin, database=ch.clickhouse_database)
    yield ch
    admin.command(f"DROP DATABASE IF EXISTS `{ch.clickhouse_database}`")
    admin.close()


def _flush(app: str, t: int) -> list[Batch]:
    """Four partitions of events and one of sessions, as one flush of the sink loop cuts them."""
    out = []
    for p in range(4):
        recs = []
        for i in range(25):
            r = defaults("enriched_event")
            u = f"u{i % 7}"
            r.update(message_id=f"{app}-p{p}-m{i}", type="track", event="open", app_id=app, anonymous_id=f"d{u}",
                     user_id=u, user_key=u, device_id=f"d{u}", received_at=t, event_time=t + i, processed_at=t,
                     reporting_currency="USD")
            recs.append(r)
        out.append(Batch(f"{app}.enriched", p, list(range(100 * p, 100 * p + 25)), recs, "events"))
    s = defaults("session")
    s.update(app_id=app, session_id="s1", user_key="u1", device_id="du1", user_id="u1", started_at=t,
             ended_at=t + 5000, duration_s=5.0, events=3, heartbeats=1, screens=1, closed=True,
             close_reason="inactivity", version=1)
    out.append(Batch(f"{app}.sessions", 0, [0], [s], "sessions"))
    return out


def _count(client: Any, table: str, app: str) -> int:
    return int(client.query(f"SELECT count() FROM {table} WHERE app_id = {{a:String}}",
                            parameters={"a": app}).result_rows[0][0])


def _sink(ch: ClickHouseSettings) -> ClickHouseSink:
    return ClickHouseSink(connect(ch), group="test-parallel", clients=ThreadClients(ch), insert_threads=4)


@contextlib.contextmanager
def _new_flush(sink: ClickHouseSink) -> Iterator[tuple[str, list[Batch]]]:
    """A flush of a new app, not written yet; yields ``(app, flush)`` and closes ``sink``."""
    app = f"par-{uuid.uuid4().hex[:6]}"
    try:
        yield app, _flush(app, int(time.time() * 1000))
    finally:
        sink.close()


@contextlib.contextmanager
def _write_fails_without(sink: ClickHouseSink, table: str, flush: list[Batch]) -> Iterator[StorageUnavailable]:
    """Writes ``flush`` while ``table`` is renamed away, expecting the write to fail; yields the
    error, with the table back in place."""
    db = sink.client.database
    sink.client.command(f"RENAME TABLE `{db}`.{table} TO `{db}`.{table}_away")
    try:
        with pytest.raises(StorageUnavailable) as err:
            sink.write(flush)
    finally:
        sink.client.command(f"RENAME TABLE `{db}`.{table}_away TO `{db}`.{table}")
    yield err.value


def _assert_every_row_once(client: Any, app: str) -> None:
    assert _count(client, "events", app) == 100
    assert _count(client, "sessions", app) == 1


def test_a_flush_inserted_in_parallel_stores_every_row_once_also_when_retried(fresh_db: ClickHouseSettings) -> None:
    sink = _sink(fresh_db)
    with _new_flush(sink) as (app, flush):
        sink.write(flush)
        assert sink.inserts == 2  # the four events batches in one insert, the sessions batch
        sink.write(flush)  # a retry of the same flush: the same tokens
        _assert_every_row_once(sink.client, app)


def test_a_replay_grouped_differently_stores_nothing_twice(fresh_db: ClickHouseSettings) -> None:
    # after a restart the recorded ranges come back, but not necessarily in the same flushes: the
    # merged insert's token differs, and the message-id lookup drops what is stored
    sink = _sink(fresh_db)
    with _new_flush(sink) as (app, flush):
        sink.write(flush)
        sink.write([flush[1], flush[2]])
        sink.write([flush[3], flush[0], flush[4]])
        _assert_every_row_once(sink.client, app)


def test_a_failed_merged_insert_names_its_batches(fresh_db: ClickHouseSettings) -> None:
    sink = _sink(fresh_db)
    with _new_flush(sink) as (app, flush), _write_fails_without(sink, "events", flush) as err:
        assert f"insert into events (4 batches from {app}.enriched/0/0-24 on) failed" in str(err)
        sink.write(flush)  # the retry: every row once
        _assert_every_row_once(sink.client, app)


def test_a_failed_parallel_insert_fails_the_flush_and_the_retry_stores_nothing_twice(
    fresh_db: ClickHouseSettings,
) -> None:
    sink = _sink(fresh_db)
    with _new_flush(sink) as (app, flush), _write_fails_without(sink, "sessions", flush) as err:
        assert "insert into sessions failed" in str(err)
        assert err.topic == f"{app}.sessions"
        # the events batches went in while the sessions insert failed: the retry must not double them
        assert _count(sink.client, "events", app) == 100
        sink.write(flush)
        _assert_every_row_once(sink.client, app)


def _lose_rows(client: Any, app: str, partition: int) -> None:
    """Delete one events batch's rows (and their message-id entries) while its token stays in the
    deduplication log: what a process killed between the log and the part leaves behind."""
    where = f"app_id = '{app}' AND startsWith(message_id, '{app}-p{partition}-')"
    for table in ("events", "event_ids"):
        client.command(f"ALTER TABLE {table} DELETE WHERE {where}", settings={"mutations_sync": 2})
    client.command(f"ALTER TABLE sessions DELETE WHERE app_id = '{app}'", settings={"mutations_sync": 2})


@contextlib.contextmanager
def _lost_flush(sink: ClickHouseSink) -> Iterator[tuple[str, list[Batch]]]:
    """A flush written by ``sink``, then partition 1's events and the session lost (token kept);
    yields ``(app, flush)`` and closes the sink."""
    with _new_flush(sink) as (app, flush):
        sink.write(flush)
        _lose_rows(sink.client, app, 1)
        yield app, flush


def _again(flush: list[Batch]) -> list[Batch]:
    for b in flush:
        b.meta[AGAIN] = True
    return flush


def test_a_token_without_its_rows_drops_a_plain_rewrite(fresh_db: ClickHouseSettings) -> None:
    # the premise: ClickHouse drops a block whose token it has seen, whether or not its rows exist
    sink = _sink(fresh_db)
    with _lost_flush(sink) as (app, flush):
        sink.write(flush)  # not marked as written again: no check
        assert _count(sink.client, "events", app) == 75
        assert _count(sink.client, "sessions", app) == 0


def test_a_rewritten_batch_gets_back_the_rows_its_token_dropped_once(fresh_db: ClickHouseSettings) -> None:
    sink = _sink(fresh_db)
    with _lost_flush(sink) as (app, flush):
        sink.write(_again(flush))
        assert sink.reinserted == 26  # 25 events of partition 1 and the session
        _assert_every_row_once(sink.client, app)
        distinct = sink.client.query(
            "SELECT uniqExact(message_id) FROM events WHERE app_id = {a:String}", parameters={"a": app}
        ).result_rows[0][0]
        assert distinct == 100
        sink.write(flush)  # and once more, now that every row is there: nothing changes
        assert sink.reinserted == 26
        assert _count(sink.client, "events", app) == 100


def test_a_cluster_sink_does_not_check_rewrites(fresh_db: ClickHouseSettings) -> None:
    # replicated tables keep block ids with their parts, and a Distributed insert may not be visible
    # yet: checking there would insert rows twice
    sink = ClickHouseSink(connect(fresh_db), group="test-parallel", check_rewrites=False)
    with _lost_flush(sink) as (app, flush):
        sink.write(_again(flush))
        assert sink.reinserted == 0
        assert _count(sink.client, "events", app) == 75


def test_a_cluster_sink_inserts_each_batch_with_its_own_token(fresh_db: ClickHouseSettings) -> None:
    # on a cluster a replay grouped differently could miss rows a Distributed insert has not made
    # visible yet: each batch keeps its own insert and token there
    sink = ClickHouseSink(connect(fresh_db), group="test-parallel", clients=ThreadClients(fresh_db),
                          insert_threads=4, check_rewrites=False, merge_events=False)
    with _new_flush(sink) as (app, flush):
        sink.write(flush)
        assert sink.inserts == 5
        sink.write(flush)
        assert _count(sink.client, "events", app) == 100
