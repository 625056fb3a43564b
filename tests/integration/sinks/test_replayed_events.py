"""Events and dead letters re-emitted at new offsets (a restarted pipeline worker) are stored and
counted once: ClickHouse ``count()`` without ``FINAL`` and the Redis live counters are exact.

Redis learns which events to count from the ClickHouse sink's replay lookup (``Batch.meta[LIVE]``),
so events go through ``ClickHouseSink.write`` first, as in the sink loop."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from schemas import defaults
from sinks.base import Batch
from sinks.clickhouse import ClickHouseSink
from sinks.redis import RedisSink, live_tiles

pytestmark = pytest.mark.integration


def _events(app: str, t: int, n: int = 20) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        r = defaults("enriched_event")
        r.update(message_id=f"{app}-m{i}", type="track", event="buy" if i % 4 == 0 else "open", app_id=app,
                 anonymous_id=f"d{i % 3}", user_id=f"u{i % 5}", user_key=f"u{i % 5}", device_id=f"d{i % 3}",
                 received_at=t, event_time=t + i, processed_at=t + 5, reporting_currency="USD",
                 error_level="Error" if i % 5 == 0 else None)
        if i % 4 == 0:
            r.update(revenue=2.5, currency="USD", revenue_usd=2.5, revenue_reporting=2.5, fx_status="ok")
        out.append(r)
    return out


def _dead_letters(app: str, t: int, failed_at: int) -> list[dict[str, Any]]:
    base = {"app_id": app, "stage": "validate", "payload": "{}", "received_at": t, "failed_at": failed_at,
            "field": None, "message": "bad", "source_topic": None, "source_partition": None, "source_offset": None}
    return [
        {**base, "message_id": "x1", "reason": "invalid_event_name"},
        {**base, "message_id": "x2", "reason": "missing_field"},
        # an undecodable payload: no message id, but the raw record's position identifies it
        {**base, "message_id": "", "stage": "decode", "reason": "undecodable", "source_topic": "raw",
         "source_partition": 1, "source_offset": 7},
        # neither id nor position: never dropped
        {**base, "message_id": "", "stage": "decode", "reason": "undecodable"},
    ]


def _arrow(records: list[dict[str, Any]]) -> Any:
    from schemas import codec
    from sinks.decode import ArrowDecoder

    c = codec("enriched_event")
    table, fallback = ArrowDecoder("enriched_event", c).decode([c.encode(r, "t") for r in records], "t")
    assert table is not None and fallback == []
    return table


def _batch(topic: str, first: int, records: list[dict[str, Any]], kind: str = "events", arrow: bool = False) -> Batch:
    offsets = list(range(first, first + len(records)))
    if arrow:
        return Batch(topic, 0, offsets, [], kind, table=_arrow(records))
    return Batch(topic, 0, offsets, [dict(r) for r in records], kind)


def _count(ch: Any, sql: str, app: str) -> int:
    return int(ch.query(sql, parameters={"a": app}).result_rows[0][0])


@pytest.mark.parametrize("arrow", [False, True], ids=["records", "arrow"])
def test_events_re_emitted_at_new_offsets_are_stored_and_counted_once(ch_client, tf_env, arrow):
    app = f"re-{uuid.uuid4().hex[:8]}"
    now = time.time()
    t = int(now * 1000) - 30
    evs = _events(app, t)
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    prefix = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6] + ":"
    ch = ClickHouseSink(ch_client, group="test-replays")
    rs = RedisSink(r, prefix, "g")
    topic = f"re.{app}"
    first = [_batch(topic, 0, evs[:12], arrow=arrow)]
    # a crash after the ClickHouse insert, before Redis: ClickHouse has rows Redis has not counted
    ch.write(first)
    # the restarted sink writes the same range again: ClickHouse stores nothing more, and its
    # lookup finds the rows at their own positions, so Redis counts them now
    for sink in (ch, rs):
        sink.write(first)
    assert _count(ch_client, "SELECT count() FROM events WHERE app_id = {a:String}", app) == 12
    # the worker re-emits everything at new offsets: the first 12 again, then the rest, repeated
    # within the batch too; then the same batch once more (a sink replay with the same token)
    replay = [_batch(topic, 100, evs[:12] + evs[12:] + evs[15:], arrow=arrow)]
    for sink in (ch, rs):
        sink.write(replay)
        sink.write(replay)
    # and again at yet another offset, through both (the same batch, as in the loop)
    third = [_batch(topic, 300, evs, arrow=arrow)]
    for sink in (ch, rs):
        sink.write(third)
    assert _count(ch_client, "SELECT count() FROM events WHERE app_id = {a:String}", app) == len(evs)
    assert _count(ch_client, "SELECT uniqExact(message_id) FROM events WHERE app_id = {a:String}", app) == len(evs)
    assert _count(ch_client, "SELECT sum(events) FROM daily_active WHERE app_id = {a:String}", app) == len(evs)
    tiles = live_tiles(r, prefix, app, now)
    assert tiles["events_this_minute"] + sum(tiles["events_last_minute_by_name"].values()) == len(evs)
    assert tiles["revenue_today_usd"] == pytest.approx(5 * 2.5)  # i = 0, 4, 8, 12, 16
    assert tiles["errors_last_hour"] == {"Error": 4}  # i = 0, 5, 10, 15
    assert (tiles["dau_users"], tiles["dau_devices"]) == (5, 3)
    r.close()


def _dead_letter_sinks(ch_client, tf_env):
    """(now, a millisecond time just before it, Redis client, key prefix, ClickHouse sink, Redis sink)."""
    now = time.time()
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    prefix = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6] + ":"
    return now, int(now * 1000) - 30, r, prefix, ClickHouseSink(ch_client, group="test-replays"), RedisSink(r, prefix, "g")


def test_dead_letters_re_emitted_at_new_offsets_are_stored_and_counted_once(ch_client, tf_env):
    app = f"dl-{uuid.uuid4().hex[:8]}"
    now, t, r, prefix, ch, rs = _dead_letter_sinks(ch_client, tf_env)
    topic = f"dl.{app}"
    first = _dead_letters(app, t, t)
    batch = [_batch(topic, 0, first, "invalid")]
    for sink in (ch, rs):
        sink.write(batch)
    # re-processed by a restarted worker: failed_at is set anew, the offsets are new
    again = _dead_letters(app, t, t + 10)
    batch = [_batch(topic, 50, again + again[:2], "invalid")]
    for sink in (ch, rs):
        sink.write(batch)
    rows = ch_client.query(
        "SELECT reason, message_id, count() FROM invalid_events WHERE app_id = {a:String} "
        "GROUP BY reason, message_id ORDER BY reason, message_id", parameters={"a": app}).result_rows
    # the dead letter with neither id nor position is kept each time it comes
    assert rows == [("invalid_event_name", "x1", 1), ("missing_field", "x2", 1), ("undecodable", "", 3)]
    tiles = live_tiles(r, prefix, app, now)
    assert tiles["dead_letters_last_hour"] == {"invalid_event_name": 1, "missing_field": 1, "undecodable": 3}
    r.close()


def test_an_invalid_event_retried_at_another_raw_position_is_one_dead_letter(ch_client, tf_env):
    # a request answered 503 still reached Kafka and the client retried it: the worker dead-letters
    # the same event twice, from two raw positions (in one batch, then in a later one)
    app = f"dl2-{uuid.uuid4().hex[:8]}"
    now, t, r, prefix, ch, rs = _dead_letter_sinks(ch_client, tf_env)
    topic = f"dl2.{app}"
    base = _dead_letters(app, t, t)[0]  # x1, invalid_event_name
    at = [{**base, "source_topic": "raw", "source_partition": p, "source_offset": o} for p, o in ((0, 5), (2, 9), (1, 70))]
    batches = [[_batch(topic, 0, at[:2], "invalid")], [_batch(topic, 10, at[2:], "invalid")]]
    for batch in batches:
        for sink in (ch, rs):
            sink.write(batch)
    rows = ch_client.query(
        "SELECT message_id, reason, count() FROM invalid_events WHERE app_id = {a:String} GROUP BY message_id, reason",
        parameters={"a": app}).result_rows
    assert rows == [("x1", "invalid_event_name", 1)]
    assert live_tiles(r, prefix, app, now)["dead_letters_last_hour"] == {"invalid_event_name": 1}
    r.close()


def test_message_ids_with_quotes_backslashes_and_percents_are_matched_exactly(ch_client, tf_env):
    # the replay filter writes the ids into its query text: each must still match only itself
    app = f"esc-{uuid.uuid4().hex[:8]}"
    t = int(time.time() * 1000) - 30
    mids = ["it's", "back\\slash", "100%s", "%(apps)s", 'q"uote', "\\'", "ünï\tcode"]
    evs = _events(app, t, len(mids) + 1)
    for r, mid in zip(evs, mids, strict=False):
        r["message_id"] = mid
    ch = ClickHouseSink(ch_client, group="test-replays")
    topic = f"esc.{app}"
    ch.write([_batch(topic, 0, evs[:-1], arrow=True)])
    # re-emitted at new offsets with one new event ("<app>-m7"): only that one is added
    ch.write([_batch(topic, 50, evs, arrow=True)])
    rows = ch_client.query("SELECT message_id, count() FROM events WHERE app_id = {a:String} GROUP BY message_id",
                           parameters={"a": app}).result_rows
    assert sorted(rows) == sorted([(m, 1) for m in mids] + [(f"{app}-m7", 1)])
    # dead letters too
    base = _dead_letters(app, t, t)[0]
    letters = [{**base, "message_id": m} for m in mids]
    ch.write([_batch(topic + ".dl", 0, letters, "invalid")])
    ch.write([_batch(topic + ".dl", 20, letters, "invalid")])
    assert _count(ch_client, "SELECT count() FROM invalid_events WHERE app_id = {a:String}", app) == len(mids)


def test_an_existing_installation_gets_its_recent_ids_into_the_lookup_table(ch_client):
    # an installation migrated before 002_event_ids: its stored events are copied into event_ids,
    # so a replay of them right after the upgrade is still dropped
    from sinks.clickhouse import drop_stored_events
    from sinks.migrate import migrate, migrations, render
    from sinks.rows import EVENTS

    db = f"tf_upgrade_{uuid.uuid4().hex[:8]}"
    ch_client.command(f"CREATE DATABASE `{db}`")
    try:
        for stmt in render(migrations()[0].template, database=db):
            ch_client.command(stmt)
        app = "up"
        evs = _events(app, int(time.time() * 1000) - 30, 5)
        ch_client.insert_arrow(f"`{db}`.events", EVENTS.to_arrow(evs, "t", 0, list(range(5))))
        applied = [m["name"] for m in migrate(ch_client, database=db)]
        assert "event_ids" in applied
        ids = ch_client.query(f"SELECT message_id FROM `{db}`.event_ids ORDER BY message_id").result_rows
        assert [r[0] for r in ids] == sorted(e["message_id"] for e in evs)
        replay = EVENTS.to_arrow(evs + _events("up2", 0, 1), "t", 0, list(range(100, 106)))
        kept = drop_stored_events(ch_client, replay, ids_table=f"`{db}`.event_ids")
        assert kept.column("message_id").to_pylist() == ["up2-m0"]
    finally:
        ch_client.command(f"DROP DATABASE IF EXISTS `{db}`")


def test_an_event_in_two_batches_of_one_flush_is_stored_once(ch_client):
    # a re-emit that landed on another partition, consumed in the same flush as the original
    app = f"two-{uuid.uuid4().hex[:8]}"
    evs = _events(app, int(time.time() * 1000) - 30, 6)
    ch = ClickHouseSink(ch_client, group="test-replays")
    ch.write([_batch(f"two.{app}", 0, evs[:4], arrow=True),
              Batch(f"two.{app}", 1, [0, 1, 2, 3], [], "events", table=_arrow(evs[2:]))])
    rows = ch_client.query("SELECT message_id, count() FROM events WHERE app_id = {a:String} GROUP BY message_id",
                           parameters={"a": app}).result_rows
    assert sorted(rows) == sorted((e["message_id"], 1) for e in evs)
    assert _count(ch_client, "SELECT sum(events) FROM daily_active WHERE app_id = {a:String}", app) == 6


def test_a_large_batch_with_repeats_and_its_re_emit_are_counted_once(ch_client, tf_env):
    # a batch larger than one Lua unpack() may take (8,000 values), with repeats far apart and empty
    # ids, then a re-emit of part of it at new offsets, through both sinks as in the loop
    app = f"big-{uuid.uuid4().hex[:8]}"
    now = time.time()
    t = int(now * 1000) - 30
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    prefix = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6] + ":"
    ch, rs = ClickHouseSink(ch_client, group="test-replays"), RedisSink(r, prefix, "g")

    def evs(mids: list[str]) -> list[dict[str, Any]]:
        base = _events(app, t, 1)[0]
        return [dict(base, message_id=m, user_key=f"u{i % 10_000}") for i, m in enumerate(mids)]

    ids = [f"m{i}" for i in range(9000)]
    topic = f"big.{app}"
    first = [_batch(topic, 0, evs([*ids, "m10", "m3999", "m4000", "", ""]), arrow=True)]  # 3 repeats, 2 empty
    for sink in (ch, rs):
        sink.write(first)
    tiles = live_tiles(r, prefix, app, now)
    assert tiles["events_this_minute"] + sum(tiles["events_last_minute_by_name"].values()) == 9000 + 2
    # re-emitted at new offsets (a restarted worker): 5,000 known ids, 100 new, one empty id
    again = [_batch(topic, 20_000, evs(ids[2000:7000] + [f"n{i}" for i in range(100)] + [""]), arrow=True)]
    for sink in (ch, rs):
        sink.write(again)
    tiles = live_tiles(r, prefix, app, now)
    assert tiles["events_this_minute"] + sum(tiles["events_last_minute_by_name"].values()) == 9000 + 2 + 100 + 1
    assert _count(ch_client, "SELECT count() FROM events WHERE app_id = {a:String}", app) == 9000 + 2 + 100 + 1
    r.close()


def test_dead_letters_inserted_before_a_crash_are_counted_when_their_batch_comes_again(ch_client, tf_env):
    # a crash after the ClickHouse insert, before Redis: the same range again finds the dead letters
    # at their own positions and counts them; a later re-emit at new offsets is not counted
    app = f"dl3-{uuid.uuid4().hex[:8]}"
    now, t, r, prefix, ch, rs = _dead_letter_sinks(ch_client, tf_env)
    topic = f"dl3.{app}"
    batch = [_batch(topic, 0, _dead_letters(app, t, t), "invalid")]
    ch.write(batch)
    for sink in (ch, rs):
        sink.write(batch)
    again = [_batch(topic, 40, _dead_letters(app, t, t + 10), "invalid")]
    for sink in (ch, rs):
        sink.write(again)
    assert _count(ch_client, "SELECT count() FROM invalid_events WHERE app_id = {a:String}", app) == 5
    # x1, x2, the one at raw/1/7, and the one with neither id nor position (twice: never deduplicated)
    assert live_tiles(r, prefix, app, now)["dead_letters_last_hour"] == {
        "invalid_event_name": 1, "missing_field": 1, "undecodable": 3}
    assert not list(r.scan_iter(match=f"{prefix}live:{app}:seen-invalid:*"))
    r.close()
