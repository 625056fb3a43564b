"""The worker's guards around Faust's offset bookkeeping, on plain stand-ins (no broker).

- the raw topic's commit point never passes an offset no agent acknowledged (gap or head hole);
- the stall watchdog reports a partition with unread records and no progress, and only that.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from pipeline.worker import StallWatchdog, _guard_offsets

RAW = "tf.events.raw"


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    """The attributes of faust's Consumer that the guards read and replace."""

    def __init__(self) -> None:
        self._acked: dict[Any, list[int]] = defaultdict(list)
        self._acked_index: dict[Any, set[int]] = defaultdict(set)
        self._committed_offset: dict[Any, int | None] = {}
        self._read_offset: dict[Any, int | None] = {}
        self.gaps: list[tuple[Any, int, int]] = []
        self.highwaters: dict[Any, int] = {}
        self.broker_committed: dict[Any, int | None] = {}
        self.seeks: list[tuple[Any, int]] = []

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    def _new_offset(self, tp: Any) -> int | None:
        return -999  # marks "Faust's own computation was used"

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Any:
        # Faust's: the partitions holding acknowledgements are the commit's candidates
        return (tp for tp in self._acked if topics is None or tp in topics or tp.topic in topics)

    def ack(self, tp: Any, *offsets: int) -> None:
        for o in offsets:
            self._acked[tp].append(o)
            self._acked_index[tp].add(o)

    def assignment(self) -> set[Any]:
        return set(self.highwaters)

    async def seek_to_committed(self) -> dict[Any, int | None]:
        return dict(self.broker_committed)

    async def _seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: Any) -> int:
        return self.highwaters[tp]


def guarded() -> FakeConsumer:
    c = FakeConsumer()
    _guard_offsets(c, RAW)
    return c


def test_a_contiguous_run_from_the_committed_offset_commits_to_its_end() -> None:
    c, tp = guarded(), TP(RAW, 0)
    c._committed_offset[tp] = 10
    c.ack(tp, 12, 10, 11, 13)
    assert c._new_offset(tp) == 14
    assert c._acked[tp] == [] and c._acked_index[tp] == set()


def test_a_hole_at_the_committed_offset_blocks_the_commit() -> None:
    c, tp = guarded(), TP(RAW, 0)
    c._committed_offset[tp] = 37
    c.ack(tp, 38, 39)  # record 37 was never acknowledged: Faust itself would commit 40 here
    assert c._new_offset(tp) is None
    assert c._acked[tp] == [38, 39]
    c.ack(tp, 37)
    assert c._new_offset(tp) == 40


def test_committed_offset_zero_is_not_treated_as_unknown() -> None:
    c, tp = guarded(), TP(RAW, 1)
    c._committed_offset[tp] = 0
    c.ack(tp, 5, 6)
    assert c._new_offset(tp) is None


def test_a_hole_in_the_middle_commits_only_up_to_it() -> None:
    c, tp = guarded(), TP(RAW, 0)
    c._committed_offset[tp] = 0
    c.ack(tp, 0, 1, 2, 5, 6)
    assert c._new_offset(tp) == 3
    assert c._acked[tp] == [5, 6]


def test_a_commit_never_passes_the_last_record_processed_in_order() -> None:
    # the agent processed 100..150; 151..160 came first from a buffer of before the seek back, were
    # skipped past the hole and acknowledged: committing 161 would lose them if the worker died now
    c, tp = FakeConsumer(), TP(RAW, 0)
    frontier = {tp: 150}
    _guard_offsets(c, RAW, processed=lambda t: frontier[t] + 1 if t in frontier else None)
    c._committed_offset[tp] = 100
    c.ack(tp, *range(151, 161), *range(100, 151))
    assert c._new_offset(tp) == 151
    assert c._acked[tp] == list(range(151, 161))  # kept for when they are processed
    c._committed_offset[tp] = 151  # Faust committed it
    assert c._new_offset(tp) is None  # nothing past the frontier
    frontier[tp] = 155  # processed now (re-read in order)
    assert c._new_offset(tp) == 156 and c._acked[tp] == list(range(156, 161))
    assert c._acked_index[tp] == set(range(156, 161))
    frontier[tp] = -2  # unknown (a database closing): hold the commit
    c._committed_offset[tp] = 156
    assert c._new_offset(tp) is None and c._acked[tp] == list(range(156, 161))
    other = TP(RAW, 1)  # no cap known (a revoked partition): the run decides
    c._committed_offset[other] = 0
    c.ack(other, 0, 1, 2)
    assert c._new_offset(other) == 3


def test_a_record_processed_in_order_but_never_acknowledged_does_not_hold_the_commit() -> None:
    # seen after a rebalance: the agent processed 3124 and everything after it in order, but Faust
    # had no acknowledgement for 3124, and the commit waited there until the stall watchdog
    c, tp = FakeConsumer(), TP(RAW, 3)
    frontier = {tp: 3200}
    _guard_offsets(c, RAW, processed=lambda t: frontier[t] + 1 if t in frontier else None)
    c._committed_offset[tp] = 3124
    c.ack(tp, *range(3125, 3205))  # 3201..3204: skipped past a hole, not processed yet
    assert c._new_offset(tp) == 3201
    assert c._acked[tp] == list(range(3201, 3205)) and c._acked_index[tp] == set(range(3201, 3205))
    other = TP(RAW, 0)  # nothing acknowledged at all: the frontier still decides
    frontier[other] = 9
    c._committed_offset[other] = None
    assert c._new_offset(other) == 10
    frontier[other] = -1  # nothing processed yet
    assert c._new_offset(other) is None


def test_every_assigned_raw_partition_is_a_commit_candidate_without_acknowledgements() -> None:
    # the agent acknowledges nothing (pipeline.fastpath.record_batches): Faust alone would never
    # look at a raw partition, since it commits only partitions holding acknowledgements
    c = FakeConsumer()
    raw0, raw1, other = TP(RAW, 0), TP(RAW, 1), TP("tf.other", 0)
    c.highwaters = {raw0: 50, raw1: 50, other: 5}
    c.ack(other, 0)
    assert set(c._filter_tps_with_pending_acks()) == {other}
    _guard_offsets(c, RAW, processed=lambda t: 10)
    assert set(c._filter_tps_with_pending_acks()) == {raw0, raw1, other}
    assert set(c._filter_tps_with_pending_acks({RAW})) == {raw0, raw1}
    assert set(c._filter_tps_with_pending_acks({other})) == {other}
    plain = FakeConsumer()  # without a frontier, acknowledgements decide as in Faust
    plain.highwaters = {raw0: 50}
    _guard_offsets(plain, RAW)
    assert set(plain._filter_tps_with_pending_acks()) == set()


def test_re_acknowledged_offsets_below_the_commit_are_dropped() -> None:
    c, tp = guarded(), TP(RAW, 0)
    c._committed_offset[tp] = 20
    c.ack(tp, 18, 19, 20, 21)  # re-read after a seek back
    assert c._new_offset(tp) == 22


def test_other_topics_keep_fausts_own_rules() -> None:
    c, tp = guarded(), TP("changelog", 0)
    c._committed_offset[tp] = 3
    c.ack(tp, 9)
    assert c._new_offset(tp) == -999
    asyncio.run(c._add_gap(tp, 4, 8))
    assert c.gaps == [(tp, 4, 8)]


def test_gaps_on_the_raw_topic_are_not_acknowledged() -> None:
    c, tp = guarded(), TP(RAW, 2)
    asyncio.run(c._add_gap(tp, 4, 8))
    assert c.gaps == []


def test_nothing_is_committed_before_the_seek_and_every_partition_is_sought_to_the_broker_offset() -> None:
    c = FakeConsumer()
    p0, p1 = TP(RAW, 0), TP(RAW, 1)
    c.highwaters = {p0: 100, p1: 100}
    c.broker_committed = {p0: 7, p1: 0}  # what aiokafka believes (it does not seek a committed 0)
    broker = {0: 952, 1: 0}  # what the broker says
    known = _guard_offsets(c, RAW, resume=lambda parts: {p: broker[p] for p in parts})
    c.ack(p0, 0, 1)  # fetched from a stale position before the seek
    assert c._new_offset(p0) is None  # never moves the group's offset back to 2
    offsets = asyncio.run(c.seek_to_committed())
    assert sorted(c.seeks) == [(p0, 952), (p1, 0)] and offsets == known == {p0: 952, p1: 0}
    c.ack(p0, 952, 953)
    assert c._new_offset(p0) == 954  # the stale 0 and 1 are dropped
    c.ack(p1, 0)
    assert c._new_offset(p1) == 1


@pytest.fixture
def clock(monkeypatch: Any) -> list[float]:
    """The watchdog's monotonic clock, set by the test: ``clock[0]``."""
    now = [0.0]
    monkeypatch.setattr("pipeline.worker.time.monotonic", lambda: now[0])
    return now


class FakeApp:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.rebalancing = False
        # Faust's table recovery: the changelog offsets read so far
        self.tables = SimpleNamespace(
            recovery=SimpleNamespace(active_offsets=Counter(), standby_offsets=Counter())
        )


def test_committed_offset_none_means_zero() -> None:
    c, tp = guarded(), TP(RAW, 3)
    c._committed_offset[tp] = None  # how Faust keeps a committed offset of 0
    c.ack(tp, 1, 2)
    assert c._new_offset(tp) is None
    c.ack(tp, 0)
    assert c._new_offset(tp) == 3


def test_watchdog_reports_partitions_whose_commit_is_stuck_below_the_records(clock: list[float]) -> None:
    clock[0] = 1000.0
    c = FakeConsumer()
    stuck, busy, idle = TP(RAW, 0), TP(RAW, 1), TP(RAW, 2)
    c.highwaters = {stuck: 100, busy: 100, idle: 50, TP("other", 0): 10}
    c._committed_offset = {stuck: 40, busy: 40, idle: 50, TP("other", 0): 0}
    app, dog = FakeApp(c), StallWatchdog(30)
    assert dog.check(app, RAW) == set()
    clock[0] += 20
    c._committed_offset[busy] = 70  # progress
    assert dog.check(app, RAW) == set()
    clock[0] += 15
    c._committed_offset[busy] = 80
    assert dog.check(app, RAW) == {0}  # 35 s without a commit, 60 records above it
    app.rebalancing = True
    assert dog.check(app, RAW) == set()  # never during a rebalance; the clock restarts
    app.rebalancing = False
    assert dog.check(app, RAW) == set()
    c._committed_offset[stuck] = c._committed_offset[busy] = 100  # caught up: never stalled
    clock[0] += 100
    assert dog.check(app, RAW) == set()
    clock[0] += 100
    assert dog.check(app, RAW) == set()


def test_watchdog_treats_an_unknown_commit_as_zero(clock: list[float]) -> None:
    c = FakeConsumer()
    tp = TP(RAW, 0)
    c.highwaters = {tp: 0}
    dog = StallWatchdog(5)
    assert dog.check(FakeApp(c), RAW) == set()  # empty partition
    c.highwaters[tp] = 12
    assert dog.check(FakeApp(c), RAW) == set()
    clock[0] += 6
    assert dog.check(FakeApp(c), RAW) == {0}


def test_watchdog_reads_the_broker_high_watermark_not_the_last_fetched_one(clock: list[float]) -> None:
    # a consumer that stopped fetching keeps the high watermark of its last fetch: it looks caught up
    c = FakeConsumer()
    tp = TP(RAW, 0)
    c.highwaters, c._committed_offset = {tp: 40}, {tp: 40}
    dog, blind = StallWatchdog(30), StallWatchdog(30)
    assert dog.check(FakeApp(c), RAW, {0: 90}) == blind.check(FakeApp(c), RAW) == set()
    clock[0] += 31
    assert blind.check(FakeApp(c), RAW) == set()  # by the stale value alone: nothing to do
    assert dog.check(FakeApp(c), RAW, {0: 90}) == {0}


def test_watchdog_seeks_a_partition_back_at_most_once_per_stall_period(clock: list[float]) -> None:
    c = FakeConsumer()
    tp = TP(RAW, 0)
    c.highwaters, c._committed_offset = {tp: 100}, {tp: 10}
    app, dog = FakeApp(c), StallWatchdog(30, restart_s=90)
    dog.check(app, RAW)
    clock[0] += 30
    assert dog.check(app, RAW) == {0}
    dog.sought({0})
    clock[0] += 5
    assert dog.check(app, RAW) == set()  # just sought back: give the re-read its time
    assert dog.restart_reason() is None
    clock[0] += 25
    assert dog.check(app, RAW) == {0}  # still stuck: once more
    dog.sought({0})
    clock[0] += 30
    dog.check(app, RAW)
    assert dog.restart_reason() is not None and "{0: 90}" in (dog.restart_reason() or "")


def test_watchdog_restart_needs_no_progress_for_the_whole_period(clock: list[float]) -> None:
    c = FakeConsumer()
    tp = TP(RAW, 0)
    c.highwaters, c._committed_offset = {tp: 1000}, {tp: 10}
    app, dog = FakeApp(c), StallWatchdog(30, restart_s=90)
    for _ in range(10):  # slow but steady commits: never a restart
        dog.check(app, RAW)
        assert dog.restart_reason() is None
        clock[0] += 20
        c._committed_offset[tp] = (c._committed_offset[tp] or 0) + 5
    never = StallWatchdog(30, restart_s=0)
    never.check(app, RAW)
    clock[0] += 10_000
    never.check(app, RAW)
    assert never.restart_reason() is None  # restart_s=0: never


def test_watchdog_restarts_after_a_rebalance_without_recovery_progress(clock: list[float]) -> None:
    c = FakeConsumer()
    app, dog = FakeApp(c), StallWatchdog(30, restart_s=90)
    app.rebalancing = True
    for _ in range(6):  # table recovery reading its changelogs: progress, however long it takes
        assert dog.check(app, RAW) == set()
        assert dog.restart_reason() is None
        clock[0] += 60
        app.tables.recovery.active_offsets[TP("changelog", 0)] += 1000
    dog.check(app, RAW)
    clock[0] += 89
    dog.check(app, RAW)
    assert dog.restart_reason() is None
    clock[0] += 2
    dog.check(app, RAW)
    assert "rebalance made no progress for 91 s" in (dog.restart_reason() or "")
    app.rebalancing = False  # the rebalance ends: its clock is gone
    dog.check(app, RAW)
    assert dog.restart_reason() is None


# -- TableState: what a flush stores is exactly what was processed before it began ----------------


class _Changelog:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class _Store:
    def __init__(self, root: Any) -> None:
        from rocksdict import Options, Rdict

        self._dbs = {p: Rdict(str(root / f"p{p}"), Options(raw_mode=True)) for p in range(2)}

    def _db_for_partition(self, p: int) -> Any:
        return self._dbs[p]


class _Table:
    def __init__(self, root: Any, changelog: str = "changelog") -> None:
        self.data = _Store(root)
        self.changelog_topic = _Changelog(changelog)


class _Outputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        self.sent.append((topic, key, value, partition))


def _flush(st: Any) -> None:
    snap = st.snapshot()
    for step in st.STEPS:
        st.write(snap, step)
    st.done()


def test_a_flush_stores_the_snapshot_not_later_changes(tmp_path: Any) -> None:
    import orjson

    from pipeline.worker import APPLIED_KEY, TableState

    out = _Outputs()
    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), out)  # type: ignore[arg-type]
    st.partition = 1
    assert st.frontier(1, None) == -1
    dev = {"n": 1}
    st.put_device("a:d1", dev)
    st.put_seen("a:m1", [99, 1, 0])
    st.advance(1, 0)
    snap = st.snapshot()
    # the agent keeps going while the outputs are awaited: a later event mutates the same device
    dev["n"] = 2
    st.put_device("a:d1", dev)
    st.advance(1, 1)
    assert st.get_device("a:d1") == {"n": 2}  # the cache wins
    assert st.get_seen("a:m1") == [99, 1, 0]  # from the snapshot being flushed
    assert [st.write(snap, step) for step in st.STEPS] == [1, 1, 1]  # a device, an id, a frontier
    st.done()
    db = st.devices.data._db_for_partition(1)
    assert orjson.loads(db[b"a:d1"]) == {"n": 1} and db[APPLIED_KEY] == b"0"
    assert (b"a:m1" in st.seen.data._db_for_partition(1)) and (
        b"a:m1" not in st.seen.data._db_for_partition(0)
    )
    assert ("changelog", APPLIED_KEY, b"0", 1) in out.sent
    # the next flush carries the later change and frontier
    _flush(st)
    assert orjson.loads(db[b"a:d1"]) == {"n": 2} and db[APPLIED_KEY] == b"1"
    # after a restart the frontier starts from the marker, or just below the commit if higher
    st.reset_marks()
    assert st.frontier(1, None) == 1
    st.reset_marks()
    assert st.frontier(1, 10) == 9


class _Crash(Exception):
    pass


class _Broker:
    """Outputs whose flush delivers the queued records in order, and crashes after ``limit`` in all."""

    def __init__(self, limit: int = 10**9) -> None:
        self.queued: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.delivered: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.limit = limit

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        self.queued.append((topic, key, value, partition))

    async def flush(self) -> None:
        while self.queued:
            if len(self.delivered) >= self.limit:
                raise _Crash
            self.delivered.append(self.queued.pop(0))


def _agent(st: Any, proc: Any, out: _Broker, records: list[dict[str, Any]]) -> dict[int, str]:
    """The worker agent's loop on partition 0 (skip up to the frontier, process in order, emit)."""
    outcomes = {}
    st.partition = 0
    for off, rec in enumerate(records):
        if off <= st.frontier(0, None):
            continue
        st.advance(0, off)
        res = proc.process(dict(rec), pos=(0, off), topic="raw", now=rec["received_at"])
        for k, _ in res.enriched:
            out.send("enriched", k.encode(), b"", None)
        outcomes[off] = res.outcome
    return outcomes


def test_a_crash_anywhere_in_a_state_flush_lets_no_content_duplicate_through(
    tmp_path: Any, raw: Any, rates: Any, app_gbp: Any
) -> None:
    """Seen in the chaos suite (worker SIGKILL): a restarted worker stored two content duplicates.

    Its Faust recovery replays the changelog records sent since its last recovery over RocksDB,
    and the frontier marker had arrived without the device state it covers. For every point a
    crash can cut the second flush at, the restarted worker must still see B as A's duplicate.
    """
    from pipeline.process import Processor
    from pipeline.settings import PipelineSettings
    from pipeline.worker import TableState, store_state

    x = raw(message_id="x", event="opened")
    a = raw(message_id="a", properties={"k": 1})
    b = raw(message_id="b", properties={"k": 1})  # A's content, another message id
    cut_points = 0
    for limit in range(10):
        root = tmp_path / str(limit)
        devices, seen = _Table(root / "d", "devices-changelog"), _Table(root / "s", "seen-changelog")
        out = _Broker()
        st = TableState(devices, seen, out)  # type: ignore[arg-type]
        proc = Processor(PipelineSettings(), {"a1": app_gbp}.get, rates, st)
        assert _agent(st, proc, out, [x]) == {0: "enriched"}
        asyncio.run(store_state(st, out))  # the device's first state is in the changelog
        out.limit = len(out.delivered) + limit
        assert _agent(st, proc, out, [x, a]) == {1: "enriched"}
        try:
            asyncio.run(store_state(st, out))
        except _Crash:
            cut_points += 1
        # restart: Faust's recovery applies the changelog records delivered so far over RocksDB
        for topic, key, value, partition in out.delivered:
            if topic != "enriched":
                db = (devices if topic == "devices-changelog" else seen).data._db_for_partition(partition)
                if value is None:
                    db.delete(key)
                else:
                    db.put(key, value)
        st = TableState(devices, seen, _Broker())  # type: ignore[arg-type]
        proc = Processor(PipelineSettings(), {"a1": app_gbp}.get, rates, st)
        outcomes = _agent(st, proc, _Broker(), [x, a, b])
        assert outcomes[2] == "duplicate_content", (limit, out.delivered, outcomes)
    assert cut_points == 4  # A's output, its device, its message id, the frontier


def test_forget_drops_unflushed_state_of_lost_partitions(tmp_path: Any) -> None:
    from pipeline.worker import TableState

    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), _Outputs())  # type: ignore[arg-type]
    st.partition = 0
    st.put_device("a:d0", {"n": 1})
    st.partition = 1
    st.put_device("a:d1", {"n": 1})
    st.forget({1})
    assert st.get_device("a:d1") is None
    st.partition = 0
    assert st.get_device("a:d0") == {"n": 1}


def test_forget_leaves_a_flush_in_progress_whole(tmp_path: Any) -> None:
    # a revoke during a flush (the commit timer's) must not take the lost partitions' device states
    # out of the snapshot being stored while their frontier markers stay in it
    from pipeline.worker import TableState

    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), _Outputs())  # type: ignore[arg-type]
    for p in (0, 1):
        st.partition = p
        st.put_device(f"a:d{p}", {"n": p})
        st.advance(p, 10 + p)
    snap = st.snapshot()
    st.forget({1})
    assert set(snap["devices"]) == {"a:d0", "a:d1"} and snap["marks"] == {0: 10, 1: 11}
    st.partition = 1
    assert st.get_device("a:d1") is None  # forgotten for reads all the same
    st.partition = 0
    assert st.get_device("a:d0") == {"n": 0}  # read from the flush in progress


# -- parsed device states kept after a flush ---------------------------------------------------------


def _clean_state(tmp_path: Any, budget: int = 1 << 20) -> Any:
    from pipeline.worker import TableState

    return TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), _Outputs(), budget)  # type: ignore[arg-type]


def test_a_stored_device_state_is_read_back_parsed_without_touching_rocksdb(tmp_path: Any) -> None:
    st = _clean_state(tmp_path)
    st.partition = 1
    dev = {"n": 1}
    st.put_device("a:d1", dev)
    _flush(st)
    db = st.devices.data._db_for_partition(1)
    assert db[b"a:d1"] == b'{"n":1}'
    db[b"a:d1"] = b'{"n":"changed underneath"}'  # only a read of RocksDB would see this
    assert st.get_device("a:d1") is dev
    # taken out of the cache: a caller that changes it without putting it back leaves the stored one
    dev["n"] = 99
    assert st.get_device("a:d1") == {"n": "changed underneath"}


def test_no_budget_keeps_no_parsed_state(tmp_path: Any) -> None:
    st = _clean_state(tmp_path, budget=0)
    st.partition = 0
    dev = {"n": 1}
    st.put_device("a:d0", dev)
    _flush(st)
    got = st.get_device("a:d0")
    assert got == {"n": 1} and got is not dev


def test_the_parsed_states_stay_within_their_budget_the_oldest_going_first(tmp_path: Any) -> None:
    st = _clean_state(tmp_path, budget=15)  # two states of 7 bytes, not three
    st.partition = 0
    devs = {f"a:d{i}": {"n": i} for i in range(3)}
    for k, v in devs.items():
        st.put_device(k, v)
        _flush(st)  # stored (and kept) in this order
    assert st._clean_size == 14 and list(st._clean) == ["a:d1", "a:d2"]
    assert st.get_device("a:d0") is not devs["a:d0"]  # evicted: parsed from RocksDB
    assert st.get_device("a:d0") == {"n": 0}
    assert st.get_device("a:d2") is devs["a:d2"] and st._clean_size == 7
    # stored again, larger: its new size counts
    st.put_device("a:d0", {"n": 0})
    devs["a:d1"]["x"] = "y"
    st.put_device("a:d1", st.get_device("a:d1"))
    _flush(st)
    assert list(st._clean) == ["a:d1"] and st._clean_size == len(b'{"n":1,"x":"y"}') == 15


def test_parsed_states_of_lost_partitions_and_after_a_rebalance_are_dropped(tmp_path: Any) -> None:
    st = _clean_state(tmp_path)
    for p in (0, 1):
        st.partition = p
        st.put_device(f"a:d{p}", {"n": p})
    _flush(st)
    for p in (0, 1):  # what another worker stored meanwhile (restored from the changelog)
        st.devices.data._db_for_partition(p)[f"a:d{p}".encode()] = b'{"n":"theirs"}'
    st.forget({1})
    st.partition = 1
    assert st.get_device("a:d1") == {"n": "theirs"}
    st.partition = 0
    assert st._clean_size == len(b'{"n":0}') and "a:d0" in st._clean
    st.reset_marks()  # an assignment: the tables may have been recovered
    assert st.get_device("a:d0") == {"n": "theirs"} and st._clean_size == 0


def test_message_id_entries_are_stored_exactly_as_orjson_writes_them() -> None:
    import orjson

    from pipeline.worker import _seen_json

    for entry in ([1_790_086_400_000, 3, 41], [-1, -1, -1], [2**62, 65_535, 0], [1.5, 0, 1], [1, 2], []):
        assert _seen_json(entry) == orjson.dumps(entry)
    assert _seen_json(None) is None


# -- the message-id expiry index: on disk, swept in order, never in the changelog ------------------


def _index_keys(st: Any, p: int) -> list[bytes]:
    from pipeline.worker import EXPIRY_PREFIX

    return [k for k in st.seen.data._db_for_partition(p).keys() if k.startswith(EXPIRY_PREFIX)]  # noqa: SIM118 (an Rdict is not iterable)


def test_expired_message_ids_are_deleted_and_renewed_ones_kept(tmp_path: Any) -> None:
    from pipeline.worker import TableState

    out = _Outputs()
    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), out)  # type: ignore[arg-type]
    st.partition = 0
    for i, expires in enumerate((100, 200, 300)):
        st.put_seen(f"a:m{i}", [expires, 0, i])
        st.index_expiry(expires, f"a:m{i}")
    st.put_seen("a:m1", [400, 0, 9])  # m1 seen again: renewed until 400 (its new index entry below)
    st.index_expiry(400, "a:m1")
    assert st.sweep(1000) == 0  # nothing is indexed on disk before a flush
    _flush(st)
    assert len(_index_keys(st, 0)) == 4
    assert not [k for _, k, _, _ in out.sent if k.startswith(b"\x00")]  # the index is local only
    assert st.sweep(250) == 1  # m0; m1's old entry (200) is renewed, so only its index key goes
    assert st.get_seen("a:m0") is None and st.get_seen("a:m1") == [400, 0, 9]
    _flush(st)
    db = st.seen.data._db_for_partition(0)
    assert b"a:m0" not in db and b"a:m1" in db
    assert ("changelog", b"a:m0", None, 0) in out.sent  # the deletion reaches the changelog
    assert len(_index_keys(st, 0)) == 2  # 300 and 400 are left
    assert st.sweep(1000) == 2
    _flush(st)
    assert _index_keys(st, 0) == [] and b"a:m1" not in db and b"a:m2" not in db


def test_a_sweep_visits_a_bounded_number_of_entries_and_resumes(tmp_path: Any) -> None:
    from pipeline.worker import TableState

    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), _Outputs())  # type: ignore[arg-type]
    st.partition = 1
    for i in range(25):
        st.put_seen(f"a:m{i}", [i, 1, i])
        st.index_expiry(i, f"a:m{i}")
    _flush(st)
    assert st.sweep(100, limit=10) == 10
    assert st.sweep(100, limit=10) == 10  # resumes after the first ten, before their flush
    _flush(st)
    assert st.sweep(100, limit=10) == 5
    _flush(st)
    assert _index_keys(st, 1) == [] and list(st.seen.data._db_for_partition(1).keys()) == []


def test_an_entry_indexed_behind_the_cursor_is_swept_when_the_sweep_starts_over(tmp_path: Any) -> None:
    from pipeline.worker import SWEEP_RESTART_EVERY, TableState

    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), _Outputs())  # type: ignore[arg-type]
    st.partition = 0
    st.put_seen("a:late", [500, 0, 0])
    st.index_expiry(500, "a:late")
    _flush(st)
    assert st.sweep(600) == 1
    _flush(st)
    st.put_seen("a:early", [50, 0, 1])  # an expiry older than where the last sweep stopped
    st.index_expiry(50, "a:early")
    _flush(st)
    swept = sum(st.sweep(600) for _ in range(SWEEP_RESTART_EVERY + 1))
    assert swept == 1 and st.get_seen("a:early") is None


def test_forget_drops_the_unflushed_index_of_lost_partitions(tmp_path: Any) -> None:
    from pipeline.worker import TableState

    st = TableState(_Table(tmp_path / "d"), _Table(tmp_path / "s"), _Outputs())  # type: ignore[arg-type]
    st.partition = 1
    st.put_seen("a:m", [5, 1, 0])
    st.index_expiry(5, "a:m")
    st.forget({1})
    _flush(st)
    assert _index_keys(st, 1) == []
