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
