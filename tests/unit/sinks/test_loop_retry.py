"""The sink loop keeps failed batches, backs off, pauses consumption and commits only after writes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sinks.base import AGAIN
from sinks.exceptions import StorageUnavailable
from sinks.loop import SinkLoop
from sinks.settings import SinkSettings
from trackflow.config import KafkaSettings


class FlakySink:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[list[str]] = []
        self.again: list[list[bool]] = []  # per write: which batches were flagged as written again
        self.inserts = 0
        self.looks_up = True  # False: fails (or has no rows) before its replay lookup

    def write(self, batches: Any, on_lookup: Any = None) -> None:
        self.again.append([bool(b.meta.get(AGAIN)) for b in batches])
        if on_lookup is not None and self.looks_up:
            on_lookup()  # as ClickHouse does once its replay lookup is done, before its inserts
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("ClickHouse is down")
        self.written.append([b.token for b in batches])
        self.inserts += 1

    def close(self) -> None:
        pass


class FakeConsumer:
    def __init__(self) -> None:
        self.paused = False
        self.commits: list[list[tuple[str, int, int]]] = []

    def assignment(self) -> list[str]:
        return ["tp"]

    def pause(self, _: Any) -> None:
        self.paused = True

    def resume(self, _: Any) -> None:
        self.paused = False

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.commits.append([(o.topic, o.partition, o.offset) for o in offsets])


def test_failed_writes_are_retried_with_the_same_batches_and_committed_after():
    settings = SinkSettings(sink_batch_rows=3, sink_batch_age_s=60, sink_max_buffer_rows=5, sink_retry_max_s=0.01)
    ch = FlakySink(failures=2)
    redis = FlakySink(failures=1)
    loop = SinkLoop(KafkaSettings(topic_prefix="x."), settings, ch, [redis], codecs={})  # type: ignore[arg-type]
    consumer = FakeConsumer()
    loop._consumer = consumer  # type: ignore[assignment]
    for o in range(3):
        loop.batcher.add("x.events.enriched", 0, o, {"o": o}, "events", 0.0)
    for _ in range(4):
        try:
            loop._flush(force=True)
        except StorageUnavailable:
            assert consumer.paused and loop.pending and not consumer.commits  # kept, paused, not committed
    # ClickHouse failed twice, Redis once: always the same batch, committed once, after both succeeded
    token = ["x.events.enriched/0/0-2"]
    assert ch.written == [token]
    assert redis.written and all(w == token for w in redis.written)
    assert consumer.commits == [[("x.events.enriched", 0, 3)]]
    assert not consumer.paused and not loop.pending
    assert loop.stats["write_failures"] == 2 and loop.stats["rows_written"] == 3
    # the first attempt is a first write; every retry may find some of it written already
    assert ch.again == [[False], [True], [True]]


def test_redis_starts_only_once_clickhouse_has_looked_up_the_replays():
    # Redis counts the rows the lookup keeps: a ClickHouse write that fails before it (or has
    # nothing to look up) leaves Redis to run after it, or not at all
    settings = SinkSettings(sink_batch_rows=3, sink_batch_age_s=60, sink_retry_max_s=0.01)
    ch, redis = FlakySink(failures=1), FlakySink(failures=0)
    ch.looks_up = False
    loop = SinkLoop(KafkaSettings(topic_prefix="x."), settings, ch, [redis], codecs={})  # type: ignore[arg-type]
    loop._consumer = FakeConsumer()  # type: ignore[assignment]
    for o in range(3):
        loop.batcher.add("x.events.enriched", 0, o, {"o": o}, "events", 0.0)
    with pytest.raises(StorageUnavailable):
        loop._flush(force=True)
    assert redis.written == []  # ClickHouse failed before its lookup: Redis was not written
    loop._flush(force=True)  # ClickHouse succeeds without calling on_lookup: Redis runs after it
    assert ch.written == redis.written == [["x.events.enriched/0/0-2"]]
    assert loop._consumer.commits == [[("x.events.enriched", 0, 3)]]  # type: ignore[attr-defined]


class Answer:
    """A partition as confluent-kafka returns it from ``commit``/``committed``."""

    def __init__(self, topic: str, partition: int, offset: int, error: Any = None) -> None:
        self.topic, self.partition, self.offset, self.error = topic, partition, offset, error


class RefusingConsumer(FakeConsumer):
    """Refuses the first ``refusals`` commits: as an exception, then per partition."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def commit(self, offsets: Any, asynchronous: bool) -> Any:
        if self.refusals:
            self.refusals -= 1
            if self.refusals % 2:
                raise RuntimeError("KafkaError{code=COORDINATOR_NOT_AVAILABLE}")
            return [Answer(o.topic, o.partition, o.offset, error="NOT_COORDINATOR") for o in offsets]
        super().commit(offsets, asynchronous)
        return [Answer(o.topic, o.partition, o.offset) for o in offsets]


def _loop(consumer: Any) -> SinkLoop:
    settings = SinkSettings(sink_batch_rows=3, sink_batch_age_s=60, sink_retry_max_s=0.01)
    loop = SinkLoop(KafkaSettings(topic_prefix="x."), settings, FlakySink(0), [], codecs={})  # type: ignore[arg-type]
    loop._consumer = consumer
    return loop


def test_a_refused_commit_is_kept_and_committed_again_until_the_broker_takes_it():
    consumer = RefusingConsumer(refusals=2)
    loop = _loop(consumer)
    loop._commit_offsets({("x.events.enriched", 0): 3})  # raises inside: kept
    assert loop.uncommitted == {("x.events.enriched", 0): 3} and not consumer.commits
    loop._commit_offsets({("x.events.enriched", 1): 7})  # per-partition error: kept, merged
    assert loop.uncommitted == {("x.events.enriched", 0): 3, ("x.events.enriched", 1): 7}
    loop._commit_offsets({("x.events.enriched", 0): 5})  # taken: the highest offsets of both
    assert consumer.commits == [[("x.events.enriched", 0, 5), ("x.events.enriched", 1, 7)]]
    assert loop.uncommitted == {} and loop.stats["commit_failures"] == 2


def test_revoking_a_partition_forgets_its_uncommitted_offset():
    loop = _loop(RefusingConsumer(refusals=1))
    loop._commit_offsets({("x.events.enriched", 0): 3, ("x.events.enriched", 1): 4})
    assert len(loop.uncommitted) == 2
    loop._on_revoke(loop._consumer, [Answer("x.events.enriched", 0, -1001)])  # type: ignore[arg-type]
    assert loop.uncommitted == {("x.events.enriched", 1): 4}


class LoadingCoordinator:
    """``committed`` answers a per-partition error first (offsets still loading), then the offset."""

    def __init__(self) -> None:
        self.calls = 0

    def committed(self, partitions: Any, timeout: float) -> list[Answer]:
        self.calls += 1
        if self.calls == 1:
            return [Answer(p.topic, p.partition, -1001, error="COORDINATOR_LOAD_IN_PROGRESS") for p in partitions]
        return [Answer(p.topic, p.partition, 40 + p.partition) for p in partitions]


def test_committed_offsets_with_errors_are_asked_again_not_read_as_zero(monkeypatch: Any):
    monkeypatch.setattr("sinks.loop.time.sleep", lambda s: None)
    loop = _loop(FakeConsumer())
    coordinator = LoadingCoordinator()
    got = loop._committed(coordinator, [Answer("x.events.enriched", p, -1001) for p in (0, 1)])  # type: ignore[arg-type]
    assert got == {("x.events.enriched", 0): 40, ("x.events.enriched", 1): 41} and coordinator.calls == 2


def test_committed_offsets_that_never_come_are_left_out(monkeypatch: Any):
    monkeypatch.setattr("sinks.loop.time.sleep", lambda s: None)

    class Loading(LoadingCoordinator):
        def committed(self, partitions: Any, timeout: float) -> list[Answer]:
            self.calls += 1
            return [Answer(p.topic, p.partition, -1001, error="COORDINATOR_LOAD_IN_PROGRESS") for p in partitions]

    coordinator = Loading()
    assert _loop(FakeConsumer())._committed(coordinator, [Answer("x.events.enriched", 0, -1001)]) == {}  # type: ignore[arg-type]
    assert coordinator.calls == 5


class Msg:
    """A record as confluent-kafka's ``consume`` returns it."""

    def __init__(self, topic: str, partition: int, offset: int, ts_ms: int) -> None:
        self._t, self._p, self._o, self._ts = topic, partition, offset, ts_ms

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return b"x"

    def timestamp(self) -> tuple[int, int]:
        from confluent_kafka import TIMESTAMP_CREATE_TIME

        return TIMESTAMP_CREATE_TIME, self._ts


class ScriptedConsumer(FakeConsumer):
    """Answers ``consume`` from a script of message lists, then stops the loop."""

    def __init__(self, loop: SinkLoop, script: list[list[Msg]]) -> None:
        super().__init__()
        self.loop, self.script = loop, script

    def subscribe(self, *_: Any, **__: Any) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        if not self.script:
            self.loop.stop()
            return []
        return self.script.pop(0)

    def close(self) -> None:
        pass


def test_the_loop_ages_buffers_from_kafka_timestamps_and_sees_a_backlog(monkeypatch):
    import time

    import sinks.loop as loop_mod

    monkeypatch.setattr(loop_mod, "CONSUME_BATCH", 3)
    settings = SinkSettings(sink_batch_rows=100, sink_batch_age_s=60)
    ch = FlakySink(failures=0)
    codec = type("Codec", (), {"decode": lambda self, v, topic: {"v": v}})()
    loop = SinkLoop(KafkaSettings(topic_prefix="x."), settings, ch, [], codecs={"events": codec})  # type: ignore[arg-type]
    topic = "x.events.enriched"
    old = int(time.time() * 1000) - 30_000  # written 30 s ago
    seen: list[tuple[bool, float]] = []
    consumer = ScriptedConsumer(loop, [[Msg(topic, 0, 0, old), Msg(topic, 0, 1, old), Msg(topic, 0, 2, old)],
                                       [Msg(topic, 1, 0, old)]])
    real_consume = consumer.consume

    def observe(num_messages: int, timeout: float) -> list[Msg]:
        if loop.batcher.rows:
            seen.append((loop.backlog, loop.batcher.oldest_age(time.monotonic())))
        return real_consume(num_messages, timeout)

    consumer.consume = observe  # type: ignore[method-assign]
    monkeypatch.setattr(loop, "_make_consumer", lambda: consumer)
    loop.run()
    # after a full consume call (3 = CONSUME_BATCH): a backlog, so no flush by age yet; the buffer
    # is 30 s old (its Kafka timestamp), not as old as the read
    backlog, age = seen[0]
    assert backlog and 29 < age < 40
    # after the short call: no backlog, overdue by age, flushed (and the final flush took the rest)
    assert ch.written == [["x.events.enriched/0/0-2", "x.events.enriched/1/0-0"]]


def test_a_flush_decodes_its_batches_in_parallel_and_counts_undecodable_records():
    class Codec:
        def decode(self, v: bytes, topic: str) -> dict:
            if v == b"bad":
                raise ValueError("not Avro")
            return {"v": v}

    settings = SinkSettings(sink_batch_rows=100, sink_batch_age_s=60)
    ch = FlakySink(failures=0)
    loop = SinkLoop(KafkaSettings(topic_prefix="x."), settings, ch, [], codecs={"events": Codec()})  # type: ignore[arg-type]
    loop._consumer = FakeConsumer()  # type: ignore[assignment]
    topic = "x.events.enriched"
    loop.batcher.add_many(topic, 0, [0, 1, 2], [b"a", b"bad", b"c"], "events", 0.0)
    loop.batcher.add_many(topic, 1, [5, 6], [b"bad", b"d"], "events", 0.0)
    loop._flush(force=True)
    assert ch.written == [["x.events.enriched/0/0-2", "x.events.enriched/1/5-6"]]
    assert loop.stats["decode_errors"] == 2 and loop.stats["rows_written"] == 3
    assert loop._consumer.commits == [[(topic, 0, 3), (topic, 1, 7)]]  # type: ignore[attr-defined]


class GatedSink(FlakySink):
    """Writes only once :attr:`gate` is set (a slow ClickHouse), failing the first ``failures``."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(failures)
        self.gate = threading.Event()

    def write(self, batches: Any) -> None:
        assert self.gate.wait(10)
        super().write(batches)


def _overlapping(sink: GatedSink, max_buffer_rows: int = 100) -> tuple[SinkLoop, FakeConsumer]:
    settings = SinkSettings(sink_batch_rows=3, sink_batch_age_s=60, sink_max_buffer_rows=max_buffer_rows,
                            sink_retry_max_s=0.01)
    loop = SinkLoop(KafkaSettings(topic_prefix="x."), settings, sink, [], codecs={})  # type: ignore[arg-type]
    consumer = FakeConsumer()
    loop._consumer = consumer  # type: ignore[assignment]
    return loop, consumer


def _add(loop: SinkLoop, offsets: range) -> None:
    for o in offsets:
        loop.batcher.add("x.events.enriched", 0, o, {"o": o}, "events", 0.0)


def _landed(loop: SinkLoop) -> None:
    assert loop._inflight is not None
    loop._inflight.exception(10)  # the write ended (or failed)


def test_a_write_in_flight_lets_the_loop_go_on_and_is_committed_only_after_it_ends():
    sink = GatedSink()
    loop, consumer = _overlapping(sink)
    _add(loop, range(3))
    loop._flush()  # the write starts on the writer thread; the loop is back at once
    assert loop._inflight is not None and not consumer.commits
    _add(loop, range(3, 6))  # consumed meanwhile
    loop._flush()  # still writing: nothing committed, nothing else started
    assert not consumer.commits and loop.batcher.rows == 3
    sink.gate.set()
    _landed(loop)
    loop._flush()  # the first write is committed, then the next one starts
    assert consumer.commits == [[("x.events.enriched", 0, 3)]]
    _landed(loop)
    loop._flush(force=True)
    assert sink.written == [["x.events.enriched/0/0-2"], ["x.events.enriched/0/3-5"]]
    assert consumer.commits == [[("x.events.enriched", 0, 3)], [("x.events.enriched", 0, 6)]]
    loop._writer.shutdown()


def test_a_failed_write_in_flight_is_kept_paused_and_retried_as_written_again():
    sink = GatedSink(failures=1)
    sink.gate.set()
    loop, consumer = _overlapping(sink)
    _add(loop, range(3))
    loop._flush()
    _landed(loop)
    with pytest.raises(StorageUnavailable):
        loop._flush()
    assert consumer.paused and len(loop.pending) == 1 and not consumer.commits
    assert loop.stats["write_failures"] == 1 and loop.stats["healthy"] is False
    time.sleep(0.05)  # past the back-off
    loop._flush()
    _landed(loop)
    loop._flush()
    assert sink.again == [[False], [True]]
    assert consumer.commits == [[("x.events.enriched", 0, 3)]] and not consumer.paused and not loop.pending
    loop._writer.shutdown()


def test_a_forced_flush_waits_for_the_write_in_flight_then_writes_the_rest():
    # a revoke or the end of the loop: everything consumed is written and committed, in order
    sink = GatedSink()
    loop, consumer = _overlapping(sink)
    _add(loop, range(3))
    loop._flush()
    _add(loop, range(3, 4))
    threading.Timer(0.1, sink.gate.set).start()
    loop._flush(force=True)
    assert sink.written == [["x.events.enriched/0/0-2"], ["x.events.enriched/0/3-3"]]
    assert consumer.commits == [[("x.events.enriched", 0, 3)], [("x.events.enriched", 0, 4)]]
    assert loop._inflight is None and not loop.pending
    loop._writer.shutdown()


class AssigningConsumer(FakeConsumer):
    """Answers the committed offsets of an assignment: none committed yet."""

    def committed(self, partitions: Any, timeout: float) -> list[Any]:
        return [Answer(tp.topic, tp.partition, -1001) for tp in partitions]


class IntentSink(GatedSink):
    def __init__(self, failures: int = 0) -> None:
        super().__init__(failures)
        self.intents_read: list[dict[Any, int]] = []

    def intents(self, committed: dict[Any, int]) -> dict[Any, list[tuple[int, int]]]:
        assert self.gate.is_set()  # never while the write is in flight
        self.intents_read.append(committed)
        return {}


def test_an_assignment_waits_for_the_write_in_flight_and_keeps_a_failed_one_for_a_retry():
    # the assignment reads the intents through the write's client: the write ends first
    sink = IntentSink(failures=1)
    loop, _ = _overlapping(sink)
    consumer = AssigningConsumer()
    loop._consumer = consumer  # type: ignore[assignment]
    _add(loop, range(3))
    loop._flush()
    threading.Timer(0.05, sink.gate.set).start()
    loop._on_assign(consumer, [Answer("x.events.enriched", 1, -1001)])  # type: ignore[list-item]
    assert sink.intents_read == [{("x.events.enriched", 1): 0}]
    assert loop._inflight is None and not consumer.commits
    assert consumer.paused and len(loop.pending) == 1 and loop.pending[0].meta[AGAIN]
    assert loop.stats["write_failures"] == 1
    loop._writer.shutdown()


def test_a_full_buffer_waits_for_the_write_in_flight_instead_of_pausing(monkeypatch: Any):
    import sinks.loop

    monkeypatch.setattr(sinks.loop, "FULL_WAIT_S", 0.5)
    sink = GatedSink()
    loop, consumer = _overlapping(sink, max_buffer_rows=4)
    _add(loop, range(3))
    loop._flush()
    _add(loop, range(3, 8))  # 5 rows buffered, over the limit of 4, while the write waits
    threading.Timer(0.05, sink.gate.set).start()
    loop._backpressure()  # the write ends within the wait: no pause
    assert not consumer.paused and loop._inflight is not None and loop._inflight.done()
    loop._flush()  # committed, and the buffer taken
    assert consumer.commits == [[("x.events.enriched", 0, 3)]]
    loop._writer.shutdown()


def test_a_full_buffer_pauses_when_the_write_in_flight_takes_longer_than_the_wait(monkeypatch: Any):
    import sinks.loop

    monkeypatch.setattr(sinks.loop, "FULL_WAIT_S", 0.05)
    sink = GatedSink()
    loop, consumer = _overlapping(sink, max_buffer_rows=4)
    _add(loop, range(3))
    loop._flush()
    _add(loop, range(3, 5))
    loop._backpressure()  # under the limit: nothing
    assert not consumer.paused
    _add(loop, range(5, 8))
    t = time.monotonic()
    loop._backpressure()  # ClickHouse is slow: after the wait, the partitions pause
    assert consumer.paused and time.monotonic() - t >= 0.05 and not consumer.commits
    sink.gate.set()
    _landed(loop)
    loop._flush()  # committed; the 5 buffered rows are written next, still paused meanwhile
    assert consumer.commits == [[("x.events.enriched", 0, 3)]] and consumer.paused
    _landed(loop)
    loop._flush()  # written and committed: nothing buffered, consumption resumes
    assert consumer.commits[-1] == [("x.events.enriched", 0, 8)] and not consumer.paused
    loop._writer.shutdown()
