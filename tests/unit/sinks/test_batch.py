"""Batching decisions of the sink loop: flush by rows and age, replay plans, revocation."""

from __future__ import annotations

from sinks.base import AGAIN
from sinks.batch import Batcher


def _fill(b: Batcher, offsets, t=0.0, tp=("t", 0)):
    for o in offsets:
        b.add(tp[0], tp[1], o, {"o": o}, "events", t)


def test_flushes_by_rows_and_by_age():
    b = Batcher(max_rows=5, max_age_s=1.0)
    _fill(b, range(4))
    assert not b.due(0.5)
    assert b.due(1.0)  # the oldest row is 1 s old
    _fill(b, [4])
    assert b.due(0.1)  # 5 rows
    batches = b.take(0.1)
    assert [(x.first_offset, x.last_offset, x.token) for x in batches] == [(0, 4, "t/0/0-4")]
    assert b.rows == 0 and not b.due(10.0)


def test_one_batch_per_partition_and_redeliveries_ignored():
    b = Batcher(max_rows=100, max_age_s=1.0)
    _fill(b, [0, 1, 2], tp=("t", 0))
    _fill(b, [7, 8], tp=("t", 1))
    _fill(b, [1, 2], tp=("t", 0))  # redelivered: already buffered
    out = {x.partition: list(x.offsets) for x in b.take(2.0)}
    assert out == {0: [0, 1, 2], 1: [7, 8]}


def test_replay_plan_recuts_the_same_ranges():
    b = Batcher(max_rows=1000, max_age_s=0.1)
    b.plan("t", 0, [(10, 14), (15, 19)], "events", 0.0)
    _fill(b, range(10, 17))
    first = b.take(1.0)
    # only the first planned range is complete; 15, 16 wait for the rest of (15, 19)
    assert [x.token for x in first] == ["t/0/10-14"]
    assert b.rows == 2
    _fill(b, range(17, 23))
    second = b.take(2.0)
    assert [x.token for x in second] == ["t/0/15-19", "t/0/20-22"]
    assert b.rows == 0
    # the replayed ranges are flagged as written again (the sink checks what ClickHouse kept);
    # what follows them is new
    assert [bool(x.meta.get(AGAIN)) for x in first + second] == [True, True, False]


def test_plan_gives_up_after_timeout_on_gaps():
    b = Batcher(max_rows=1000, max_age_s=0.1, plan_timeout_s=5.0)
    b.plan("t", 0, [(0, 9)], "events", 0.0)
    _fill(b, [0, 1, 2])  # offsets 3..9 never come (e.g. transaction markers)
    assert b.take(1.0) == []
    late = b.take(6.0)
    assert [x.token for x in late] == ["t/0/0-2"]


def test_drop_forgets_revoked_partitions():
    b = Batcher(max_rows=1000, max_age_s=1.0)
    _fill(b, range(3), tp=("t", 0))
    _fill(b, range(2), tp=("t", 1))
    b.drop([("t", 0)])
    assert b.rows == 2
    assert [x.partition for x in b.take(5.0)] == [1]


def test_add_many_equals_adding_one_by_one():
    a, b = Batcher(max_rows=100, max_age_s=1.0), Batcher(max_rows=100, max_age_s=1.0)
    for offsets in ([0, 1, 2], [2, 3, 4], [7, 8], [6, 9], []):
        for o in offsets:
            a.add("t", 0, o, {"o": o}, "events", 0.0)
        b.add_many("t", 0, list(offsets), [{"o": o} for o in offsets], "events", 0.0)
    assert a.rows == b.rows == 8  # 2 and 6 are redeliveries
    assert [(x.token, list(x.offsets), list(x.records)) for x in a.take(2.0)] == \
        [(x.token, list(x.offsets), list(x.records)) for x in b.take(2.0)]


def test_a_plan_the_consumer_is_already_past_is_dropped_not_waited_for():
    # a plan from a stale committed offset (e.g. read while the broker was loading its offsets):
    # the records of (0, 9) never come, and the partition must not wait for them forever
    b = Batcher(max_rows=1000, max_age_s=0.1, plan_timeout_s=3600.0)
    b.plan("t", 0, [(0, 9), (10, 19), (20, 24)], "events", 0.0)
    _fill(b, range(20, 27))
    out = b.take(1.0)
    assert [x.token for x in out] == ["t/0/20-24", "t/0/25-26"]
    assert b.rows == 0


def test_age_counts_from_when_kafka_got_the_first_record():
    b = Batcher(max_rows=100, max_age_s=1.0)
    # read at t=10.0, written to Kafka 0.7 s earlier (it waited while the sink flushed)
    b.add_many("t", 0, [0, 1], [{}, {}], "events", 10.0, written=9.3)
    assert not b.due(10.2) and b.due(10.3)
    # later records do not make the buffer younger, nor older
    b.add_many("t", 0, [2], [{}], "events", 10.25, written=5.0)
    assert not b.due(10.29)
    assert b.oldest_age(10.3) == 10.3 - 9.3


def test_a_record_stamped_in_the_future_counts_from_when_it_was_read():
    b = Batcher(max_rows=100, max_age_s=1.0)
    b.add_many("t", 1, [0], [{}], "events", 20.0, written=25.0)  # the producer's clock is ahead
    assert not b.due(20.9) and b.due(21.0)


def test_a_backlog_is_flushed_in_full_batches_only():
    b = Batcher(max_rows=5, max_age_s=1.0)
    b.add_many("t", 0, [0, 1, 2], [{}, {}, {}], "events", 0.0, written=-60.0)  # a minute late
    assert b.due(0.0) and not b.due(0.0, backlog=True)
    b.add_many("t", 0, [3, 4], [{}, {}], "events", 0.1)
    assert b.due(0.1, backlog=True)  # 5 rows: a full batch
