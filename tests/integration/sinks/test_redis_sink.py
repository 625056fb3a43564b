"""The Redis sink on real Redis: counters applied once per batch, whatever the replays."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from sinks.base import Batch
from sinks.redis import RedisSink, live_tiles, offsets_key

pytestmark = pytest.mark.integration


def test_replayed_and_overlapping_batches_are_applied_once(tf_env):
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    prefix = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6] + ":"
    now = time.time()
    t = int(now * 1000)
    recs = [{"app_id": "a", "user_key": f"u{i % 4}", "device_id": f"d{i % 5}", "event": "buy", "type": "track",
             "event_time": t, "revenue_usd": 2.5, "revenue_in_range": True,
             "error_level": "Error" if i % 3 == 0 else None} for i in range(10)]
    sink = RedisSink(r, prefix, "g")
    sink.write([Batch("t", 0, list(range(10)), recs)])
    sink.write([Batch("t", 0, list(range(10)), recs)])  # the same batch again
    # a replay cut differently: offsets 5..14, of which 10..14 are new
    more = [dict(x, user_key="u9") for x in recs[:5]]
    sink.write([Batch("t", 0, list(range(5, 15)), recs[5:] + more)])
    tiles = live_tiles(r, prefix, "a", now)
    assert tiles["events_this_minute"] == 15
    assert tiles["revenue_today_usd"] == pytest.approx(15 * 2.5)
    assert tiles["errors_last_hour"] == {"Error": 4 + 2}  # offsets 0,3,6,9 and the new 10,13
    assert (tiles["dau_users"], tiles["dau_devices"], tiles["online_now"]) == (5, 5, 5)
    assert r.hget(offsets_key(prefix, "g"), "t/0") == b"14"
    r.close()


def test_only_the_rows_the_replay_lookup_marks_live_are_counted(tf_env):
    # the ClickHouse sink marks re-emitted events (stored at another position) as not live
    import pyarrow as pa

    from sinks.base import LIVE

    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    prefix = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6] + ":"
    now = time.time()
    t = int(now * 1000)
    recs = [{"app_id": "a", "user_key": f"u{i}", "device_id": f"d{i}", "event": "buy", "type": "track",
             "event_time": t, "revenue_usd": 1.0, "revenue_in_range": True, "error_level": "Error"}
            for i in range(6)]
    live = pa.array([True, False, True, False, True, True])
    sink = RedisSink(r, prefix, "g")
    sink.write([Batch("t", 0, list(range(6)), recs, meta={LIVE: live})])
    sink.write([Batch("t", 0, list(range(6)), recs, meta={LIVE: live})])  # a replay: nothing more
    tiles = live_tiles(r, prefix, "a", now)
    assert tiles["events_this_minute"] == 4 and tiles["revenue_today_usd"] == pytest.approx(4.0)
    assert tiles["errors_last_hour"] == {"Error": 4}
    assert not list(r.scan_iter(match=f"{prefix}live:a:seen:*"))  # no per-event state kept in Redis
    r.close()


def test_delete_prefixed_removes_exactly_the_keys_under_the_prefix(tf_env):
    from sinks.redis import delete_prefixed

    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    base = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6]
    r.mset({f"{base}:a:{i}": i for i in range(1201)} | {f"{base}-other": 1})  # more than one UNLINK group
    assert delete_prefixed(r, f"{base}:") == 1201
    assert list(r.scan_iter(match=f"{base}*")) == [f"{base}-other".encode()]
    r.delete(f"{base}-other")
    r.close()
