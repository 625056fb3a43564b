"""The ClickHouse sink's parallel inserts (one per batch of a flush) on the real engine: every row
once, a failed insert fails the flush with the batch named, and the retry stores nothing twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from schemas import defaults
from sinks.base import Batch
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


def test_a_flush_inserted_in_parallel_stores_every_row_once_also_when_retried(fresh_db: ClickHouseSettings) -> None:
    app = f"par-{uuid.uuid4().hex[:6]}"
    sink = _sink(fresh_db)
    try:
        flush = _flush(app, int(time.time() * 1000))
        sink.write(flush)
        assert sink.inserts == 5
        sink.write(flush)  # a retry of the same flush: the same tokens
        assert _count(sink.client, "events", app) == 100
        assert _count(sink.client, "sessions", app) == 1
    finally:
        sink.close()


def test_a_failed_parallel_insert_fails_the_flush_and_the_retry_stores_nothing_twice(
    fresh_db: ClickHouseSettings,
) -> None:
    app = f"par-{uuid.uuid4().hex[:6]}"
    db = fresh_db.clickhouse_database
    sink = _sink(fresh_db)
    try:
        flush = _flush(app, int(time.time() * 1000))
        sink.client.command(f"RENAME TABLE `{db}`.sessions TO `{db}`.sessions_away")
        with pytest.raises(StorageUnavailable) as err:
            sink.write(flush)
        assert "insert into sessions failed" in str(err.value)
        assert err.value.topic == f"{app}.sessions"
        # the events batches went in while the sessions insert failed: the retry must not double them
        assert _count(sink.client, "events", app) == 100
        sink.client.command(f"RENAME TABLE `{db}`.sessions_away TO `{db}`.sessions")
        sink.write(flush)
        assert _count(sink.client, "events", app) == 100
        assert _count(sink.client, "sessions", app) == 1
    finally:
        sink.close()
