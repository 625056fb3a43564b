"""Live counters in Redis: planned from a batch (pure), applied by a Lua script (idempotent).

Keys (``P`` = ``RedisSettings.redis_key_prefix``, ``A`` = app id, minutes and days in UTC)::

    P live:A:epm:<minute epoch s>       hash  event name -> events in that minute      TTL 2 h
    P live:A:dau:users:<YYYYMMDD>       HLL   user keys active that day                TTL 3 d
    P live:A:dau:devices:<YYYYMMDD>     HLL   device ids active that day               TTL 3 d
    P live:A:online                     zset  user key -> last event time (ms)         TTL 2 x window
    P live:A:revenue_usd:<YYYYMMDD>     int   in-range revenue that day, micro-USD     TTL 3 d
    P live:A:errors:<minute epoch s>    hash  error level -> error events              TTL 2 h
    P live:A:invalid:<minute epoch s>   hash  dead-letter reason -> count              TTL 2 h
    P sink:offsets:<group>              hash  "topic/partition" -> last applied offset

Buckets follow the event's time. :func:`plan` aggregates a batch into few operations (one HINCRBY
per minute and name, one PFADD per day, ...); ``live.lua`` applies them and records the batch's
last offset in the same atomic step, so a replayed batch changes nothing. An event or dead letter
re-emitted at new offsets (a restarted pipeline worker) is left out before planning: the ClickHouse
sink's replay lookup marks the rows to count (:data:`sinks.base.LIVE`). :func:`live_tiles` reads the
dashboard's live tiles.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
import redis as redis_lib

from sinks.base import LIVE, Batch, Record
from sinks.exceptions import StorageUnavailable

MINUTE_TTL_S = 2 * 3600
DAY_TTL_S = 3 * 86400
CHUNK = 1000
Op = tuple[str, str, int, list[str]]


def delete_prefixed(client: redis_lib.Redis[Any], prefix: str) -> int:
    """Delete every key that starts with ``prefix`` (SCAN, then UNLINK in groups); returns how many."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    return sum(int(client.unlink(*keys[i : i + 500])) for i in range(0, len(keys), 500))


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d")


def live_key(prefix: str, app_id: str, *parts: object) -> str:
    """``<prefix>live:<app>:<part>:...``."""
    return ":".join([f"{prefix}live", app_id, *(str(p) for p in parts)])


def offsets_key(prefix: str, group: str) -> str:
    return f"{prefix}sink:offsets:{group}"


def plan(records: Sequence[Record], kind: str, prefix: str, online_window_s: int = 300) -> list[Op]:
    """The counter updates of a batch, aggregated (pure).

    Every record given is counted (the ClickHouse sink's replay lookup has left out the re-emitted
    ones, see :data:`sinks.base.LIVE`), so the counts go in as plain increments.
    """
    if kind == "invalid":
        return _plan_invalid(records, prefix)
    if kind != "events":
        return []
    epm: dict[tuple[str, int, str], int] = defaultdict(int)
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    devices: dict[tuple[str, str], set[str]] = defaultdict(set)
    online: dict[str, dict[str, int]] = defaultdict(dict)
    revenue: dict[tuple[str, str], int] = defaultdict(int)
    errors: dict[tuple[str, int, str], int] = defaultdict(int)
    for r in records:
        app = r["app_id"]
        ts = int(r["event_time"])
        minute = ts // 60_000 * 60
        day = _day(ts)
        epm[(app, minute, r.get("event") or r.get("type") or "")] += 1
        users[(app, day)].add(r["user_key"])
        devices[(app, day)].add(r.get("device_id") or r["user_key"])
        seen = online[app]
        if ts > seen.get(r["user_key"], -1):
            seen[r["user_key"]] = ts
        usd = r.get("revenue_usd")
        if usd is not None and r.get("revenue_in_range", True):
            revenue[(app, day)] += round(float(usd) * 1_000_000)
        level = r.get("error_level")
        if level:
            errors[(app, minute, level)] += 1
    return _event_ops(
        prefix, online_window_s, epm, users, devices,
        {app: list(seen.items()) for app, seen in online.items()}, revenue, errors,
    )


def _event_ops(
    prefix: str,
    online_window_s: int,
    epm: dict[tuple[str, int, str], int],
    users: dict[tuple[str, str], set[str]] | dict[tuple[str, str], list[str]],
    devices: dict[tuple[str, str], set[str]] | dict[tuple[str, str], list[str]],
    online: dict[str, list[tuple[str, int]]],
    revenue: dict[tuple[str, str], int],
    errors: dict[tuple[str, int, str], int],
) -> list[Op]:
    """The operations of :func:`plan` from its aggregates, in a fixed order (shared by
    :func:`plan_table`)."""
    ops: list[Op] = []
    for (app, minute, name), n in sorted(epm.items()):
        ops.append(("H", live_key(prefix, app, "epm", minute), MINUTE_TTL_S, [name, str(n)]))
    for kind, groups in (("users", users), ("devices", devices)):
        for (app, day), members in sorted(groups.items()):
            ops.extend(_chunks("P", live_key(prefix, app, "dau", kind, day), DAY_TTL_S, sorted(members)))
    for app, seen in sorted(online.items()):
        key = live_key(prefix, app, "online")
        pairs = [x for user, ts in sorted(seen) for x in (str(ts), user)]
        for i in range(0, len(pairs), 2 * CHUNK):
            ops.append(("Z", key, 2 * online_window_s, pairs[i : i + 2 * CHUNK]))
        horizon = max(ts for _, ts in seen) - 2 * online_window_s * 1000
        ops.append(("R", key, 2 * online_window_s, [str(horizon)]))
    for (app, day), micros in sorted(revenue.items()):
        ops.append(("I", live_key(prefix, app, "revenue_usd", day), DAY_TTL_S, [str(micros)]))
    for (app, minute, level), n in sorted(errors.items()):
        ops.append(("H", live_key(prefix, app, "errors", minute), MINUTE_TTL_S, [level, str(n)]))
    return ops


def plan_table(table: Any, prefix: str, online_window_s: int = 300) -> list[Op]:
    """:func:`plan` for events decoded as an Arrow table, aggregated with Arrow's group-by (same ops)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    ts = pc.cast(table.column("event_time"), pa.int64())
    ev = table.column("event")
    name = pc.if_else(pc.fill_null(pc.equal(ev, ""), True), table.column("type"), ev)
    dev = table.column("device_id")
    device = pc.if_else(pc.fill_null(pc.equal(dev, ""), True), table.column("user_key"), dev)
    # the UTC day as text, formatted once per distinct day (pc.strftime per row was ~40% of the plan)
    days, day_of_row = np.unique(np.floor_divide(ts.to_numpy(), 86_400_000), return_inverse=True)
    day = pa.array([_day(int(d) * 86_400_000) for d in days], pa.string()).take(pa.array(day_of_row))
    minute = pc.multiply(pc.divide(ts, 60_000), 60)
    t = pa.table({"app": table.column("app_id"), "minute": minute, "ev": name, "day": day,
                  "user": table.column("user_key"), "dev": device, "ts": ts})
    epm = {(r["app"], r["minute"], r["ev"]): r["count_all"]
           for r in t.group_by(["app", "minute", "ev"], use_threads=False).aggregate([([], "count_all")]).to_pylist()}
    members: dict[str, dict[tuple[str, str], list[str]]] = {}
    for col in ("user", "dev"):
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in t.group_by(["app", "day", col]).aggregate([]).to_pylist():
            groups[(r["app"], r["day"])].append(r[col])
        members[col] = groups
    online: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in t.group_by(["app", "user"]).aggregate([("ts", "max")]).to_pylist():
        online[r["app"]].append((r["user"], r["ts_max"]))
    revenue: dict[tuple[str, str], int] = {}
    usd = table.column("revenue_usd")
    paid = pc.and_(pc.is_valid(usd), pc.fill_null(table.column("revenue_in_range"), True))
    if pc.any(paid).as_py():
        # rounded per event before the sum, as plan() does
        rev = pa.table({"app": t.column("app"), "day": t.column("day"),
                        "micros": pc.cast(pc.round(pc.multiply(usd, 1_000_000)), pa.int64())}).filter(paid)
        revenue = {(r["app"], r["day"]): r["micros_sum"]
                   for r in rev.group_by(["app", "day"], use_threads=False).aggregate([("micros", "sum")]).to_pylist()}
    errors: dict[tuple[str, int, str], int] = {}
    lvl = table.column("error_level")
    has_err = pc.fill_null(pc.not_equal(lvl, ""), False)
    if pc.any(has_err).as_py():
        errs = pa.table({"app": t.column("app"), "minute": t.column("minute"), "lvl": lvl}).filter(has_err)
        errors = {(r["app"], r["minute"], r["lvl"]): r["count_all"]
                  for r in errs.group_by(["app", "minute", "lvl"], use_threads=False)
                  .aggregate([([], "count_all")]).to_pylist()}
    return _event_ops(prefix, online_window_s, epm, members["user"], members["dev"], online, revenue, errors)


def dead_letter_id(r: Record) -> str:
    """What identifies a dead letter across replays and retries: its ``message_id`` (plus stage and
    reason) when it has one, else the raw record's Kafka position (plus stage and reason); ``""``
    when neither is known (never deduplicated). ``failed_at`` is not part of it: a replay sets it anew.

    The message id comes first because a client's retry of a request the collector answered 503
    can still reach Kafka twice (the first attempt was delivered after the answer): the same event
    at two positions is one dead letter, as it is one event when valid (the pipeline drops a
    repeated message id). The collector gives every event a message id, so the position only
    identifies records that were never decodable.
    """
    mid = r.get("message_id") or ""
    if mid:
        return f"id:{mid}/{r.get('stage') or ''}/{r.get('reason') or ''}"
    topic, offset = r.get("source_topic"), r.get("source_offset")
    if topic and offset is not None:
        return f"src:{topic}/{r.get('source_partition')}/{offset}/{r.get('stage') or ''}/{r.get('reason') or ''}"
    return ""


def _plan_invalid(records: Sequence[Record], prefix: str) -> list[Op]:
    counts: dict[tuple[str, int, str], int] = defaultdict(int)
    for r in records:
        app = r.get("app_id") or ""
        if app:
            counts[(app, int(r.get("failed_at") or 0) // 60_000 * 60, r.get("reason") or "")] += 1
    return [("H", live_key(prefix, app, "invalid", minute), MINUTE_TTL_S, [reason, str(n)])
            for (app, minute, reason), n in sorted(counts.items())]


def _chunks(op: str, key: str, ttl: int, members: list[str]) -> list[Op]:
    return [(op, key, ttl, members[i : i + CHUNK]) for i in range(0, len(members), CHUNK)]


def script_args(batch: Batch, ops: list[Op]) -> list[str | bytes]:
    """ARGV of ``live.lua`` for a batch (pure): each operation's values as one JSON array."""
    args: list[str | bytes] = [f"{batch.topic}/{batch.partition}", str(batch.first_offset), str(batch.last_offset)]
    for op, key, ttl, values in ops:
        args.extend([op, key, str(ttl), orjson.dumps(values)])
    return args


LUA = resources.files("sinks").joinpath("live.lua").read_text(encoding="utf-8")


class RedisSink:
    """Applies the live counters of events and dead letters, idempotently per batch.

    Parameters:
        client: a ``redis.Redis``.
        prefix: the key prefix (``RedisSettings.redis_key_prefix``).
        group: the consumer group; last applied offsets are kept per group and partition.
        online_window_s: the "online now" window.
    """

    name = "redis"

    def __init__(self, client: redis_lib.Redis[Any], prefix: str, group: str, online_window_s: int = 300) -> None:
        self.client = client
        self.prefix = prefix
        self.group = group
        self.online_window_s = online_window_s
        self._script = client.register_script(LUA)

    def write(self, batches: Sequence[Batch]) -> None:
        relevant = [b for b in batches if b.kind in ("events", "invalid") and len(b)]
        if not relevant:
            return
        okey = offsets_key(self.prefix, self.group)
        try:
            fields = [f"{b.topic}/{b.partition}" for b in relevant]
            applied = self.client.hmget(okey, fields)
            pipe = self.client.pipeline(transaction=False)
            n = 0
            for batch, last in zip(relevant, applied, strict=True):
                b = batch if last is None else _after(batch, int(last))
                if not len(b):
                    continue
                table, records = _counted(b)
                if table is not None:
                    ops = plan_table(table, self.prefix, self.online_window_s)
                else:
                    ops = plan(records, b.kind, self.prefix, self.online_window_s)
                self._script(keys=[okey], args=script_args(b, ops), client=pipe)
                n += 1
            if n:
                pipe.execute()
        except redis_lib.RedisError as exc:
            b0 = relevant[0]
            raise StorageUnavailable(
                f"redis write failed: {exc}", topic=b0.topic, partition=b0.partition,
                first_offset=b0.first_offset, last_offset=b0.last_offset,
            ) from exc

    def close(self) -> None:
        self.client.close()


def _after(batch: Batch, last: int) -> Batch:
    """The part of a batch beyond an already applied offset (its :data:`LIVE` rows with it)."""
    if batch.first_offset > last:
        return batch
    idx = [i for i, o in enumerate(batch.offsets) if o > last]
    span = (batch.offsets[idx[0]], batch.last_offset) if idx else None
    live = batch.meta.get(LIVE)
    meta = {} if live is None else {LIVE: live.take(idx) if idx else live.slice(0, 0)}
    offsets = [batch.offsets[i] for i in idx]
    if batch.table is not None:
        table = batch.table.slice(0, 0) if not idx else batch.table.take(idx)
        return Batch(batch.topic, batch.partition, offsets, [], batch.kind, table=table, span=span, meta=meta)
    return Batch(batch.topic, batch.partition, offsets, [batch.records[i] for i in idx], batch.kind, span=span,
                 meta=meta)


def _counted(batch: Batch) -> tuple[Any, Sequence[Record]]:
    """``(table, records)`` of ``batch`` limited to the rows its :data:`LIVE` mask counts."""
    live = batch.meta.get(LIVE)
    if live is None:
        return batch.table, batch.records
    if batch.table is not None:
        return batch.table.filter(live), []
    return None, [r for r, keep in zip(batch.records, live.to_pylist(), strict=True) if keep]


def live_tiles(
    client: redis_lib.Redis[Any], prefix: str, app_id: str, now: float | None = None, online_window_s: int = 300
) -> dict[str, Any]:
    """The dashboard's live tiles of one app.

    Returns ``events_per_minute`` (sliding 60 s: this minute plus the elapsed share of the previous
    one), ``events_last_minute_by_name`` (the previous complete minute), ``events_series`` (totals of
    the last 30 minutes, oldest first), ``online_now`` (users with an event or heartbeat in the last
    ``online_window_s``), ``dau_users``/``dau_devices`` (HyperLogLog, today UTC),
    ``revenue_today_usd``, ``errors_last_hour`` (level -> count) and ``dead_letters_last_hour``
    (reason -> count).
    """
    now = time.time() if now is None else now
    minute = int(now) // 60 * 60
    day = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")
    pipe = client.pipeline(transaction=False)
    series = [minute - 60 * i for i in range(29, -1, -1)]
    for m in series:
        pipe.hgetall(live_key(prefix, app_id, "epm", m))
    hour = [minute - 60 * i for i in range(59, -1, -1)]
    for m in hour:
        pipe.hgetall(live_key(prefix, app_id, "errors", m))
    for m in hour:
        pipe.hgetall(live_key(prefix, app_id, "invalid", m))
    pipe.zcount(live_key(prefix, app_id, "online"), int((now - online_window_s) * 1000), "+inf")
    pipe.pfcount(live_key(prefix, app_id, "dau", "users", day))
    pipe.pfcount(live_key(prefix, app_id, "dau", "devices", day))
    pipe.get(live_key(prefix, app_id, "revenue_usd", day))
    res = pipe.execute()
    epm = [_decode_hash(h) for h in res[:30]]
    errors = _sum_hashes(res[30:90])
    invalid = _sum_hashes(res[90:150])
    online, dau_u, dau_d, rev = res[150:154]
    this_minute = sum(epm[-1].values())
    prev_minute = sum(epm[-2].values())
    share = 1.0 - (now - minute) / 60.0
    return {
        "app_id": app_id,
        "as_of": datetime.fromtimestamp(now, UTC).isoformat(),
        "events_per_minute": round(this_minute + prev_minute * share),
        "events_this_minute": this_minute,
        "events_last_minute_by_name": dict(sorted(epm[-2].items())),
        "events_series": [
            {"minute": datetime.fromtimestamp(m, UTC).isoformat(), "events": sum(h.values())}
            for m, h in zip(series, epm, strict=True)
        ],
        "online_now": int(online),
        "dau_users": int(dau_u),
        "dau_devices": int(dau_d),
        "revenue_today_usd": round(int(rev or 0) / 1_000_000, 6),
        "errors_last_hour": errors,
        "dead_letters_last_hour": invalid,
    }


def _decode_hash(h: dict[Any, Any]) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in h.items()}


def _sum_hashes(hashes: list[dict[Any, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for h in hashes:
        for k, v in _decode_hash(h).items():
            out[k] += v
    return dict(sorted(out.items()))
