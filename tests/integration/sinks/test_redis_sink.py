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


def test_event_ids_are_counted_once_in_a_large_batch_and_its_re_emit(tf_env):
    # a batch larger than one Lua unpack() may take (8,000 values), with repeats far apart and empty
    # ids, then a re-emit of part of it at new offsets
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    prefix = tf_env["TRACKFLOW_REDIS_KEY_PREFIX"] + uuid.uuid4().hex[:6] + ":"
    now = time.time()
    t = int(now * 1000)

    def ev(mid: str) -> dict:
        return {"app_id": "a", "user_key": "u", "device_id": "d", "event": "open", "type": "track",
                "event_time": t, "message_id": mid}

    ids = [f"m{i}" for i in range(9000)]
    first = [ev(m) for m in ids] + [ev("m10"), ev("m3999"), ev("m4000"), ev(""), ev("")]  # 3 repeats, 2 empty
    sink = RedisSink(r, prefix, "g")
    sink.write([Batch("t", 0, list(range(len(first))), first)])
    assert live_tiles(r, prefix, "a", now)["events_this_minute"] == 9000 + 2
    # re-emitted at new offsets (a restarted worker): 5,000 known ids, 100 new, one empty id
    again = [ev(m) for m in ids[2000:7000]] + [ev(f"n{i}") for i in range(100)] + [ev("")]
    sink.write([Batch("t", 0, list(range(20_000, 20_000 + len(again))), again)])
    assert live_tiles(r, prefix, "a", now)["events_this_minute"] == 9000 + 2 + 100 + 1
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
