"""The worker's cheaper path through Faust (pipeline.fastpath), on mode's real queues and flow control.

The whole path runs against the broker in every worker integration test (tests/integration/pipeline);
these pin its decisions: when a record may be delivered without Faust's ``wait_first``, how the fetch
loop hands a direct topic's records over in runs (gaps, read offsets, back-pressure, rebalances), how
an agent's events are batched, and which events a batch leaves out.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from pipeline import fastpath


class _AiokafkaTP(NamedTuple):  # the partition type of aiokafka's fetch results (and Faust's messages)
    topic: str
    partition: int


RAW0 = _AiokafkaTP("raw", 0)


def _record(offset: int, tp: _AiokafkaTP = RAW0) -> Any:
    """An aiokafka ``ConsumerRecord``'s attributes that the fast path reads."""
    return SimpleNamespace(
        topic=tp.topic, partition=tp.partition, offset=offset, key=b"k", value=b"v%d" % offset
    )


def _message(generation: int, offset: int = 0, tp: _AiokafkaTP = RAW0) -> Any:
    """A Faust ``Message``'s attributes that the fast path reads."""
    return SimpleNamespace(
        generation_id=generation, offset=offset, topic=tp.topic, tp=tp, value=b"v%d" % offset
    )


def _event(generation: int, offset: int = 0, tp: _AiokafkaTP = RAW0) -> Any:
    return SimpleNamespace(message=_message(generation, offset, tp))


def _run(generation: int, offsets: range, tp: _AiokafkaTP = RAW0) -> fastpath.Run:
    return fastpath.Run(tp, generation, [_record(o, tp) for o in offsets])


class _Stream:
    """The attributes of a Faust stream that :func:`fastpath.record_batches` reads."""

    def __init__(self, maxsize: int = 100) -> None:
        self.flow = FlowControlEvent(initially_suspended=False)
        self.app = SimpleNamespace(flow_control=self.flow, consumer_generation_id=1)
        self.channel = SimpleNamespace(queue=ThrowableQueue(maxsize=maxsize, flow_control=self.flow))
        self.started = False

    async def maybe_start(self) -> None:
        self.started = True


def _take(stream: _Stream, batches: int, max_batch: int = fastpath.MAX_BATCH) -> list[list[Any]]:
    async def run() -> list[list[Any]]:
        it = fastpath.record_batches(stream, max_batch=max_batch)
        out = [await asyncio.wait_for(it.__anext__(), 1.0) for _ in range(batches)]
        await it.aclose()
        return out

    return asyncio.run(run())


def _offsets(batch: list[tuple[Any, list[Any]]]) -> list[tuple[int, list[int]]]:
    return [(tp.partition, [r.offset for r in records]) for tp, records in batch]


def test_every_queued_event_comes_in_batches_of_at_most_max_batch_records_in_queue_order() -> None:
    s = _Stream()
    for i in range(10):
        s.channel.queue.put_nowait(_event(1, i))
    got = _take(s, 3, max_batch=4)
    assert s.started
    assert [[o for _, (o,) in _offsets(b)] for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_runs_put_by_the_fetch_loop_count_their_records_toward_a_batch() -> None:
    s = _Stream()
    s.channel.queue.put_nowait(_run(1, range(0, 3)))
    s.channel.queue.put_nowait(_run(1, range(3, 5)))
    s.channel.queue.put_nowait(_run(1, range(5, 6)))
    got = _take(s, 2, max_batch=4)
    # a run is never split: the first batch ends once it holds at least 4 records
    assert [_offsets(b) for b in got] == [[(0, [0, 1, 2]), (0, [3, 4])], [(0, [5])]]


def test_runs_from_the_fetch_loop_and_events_from_the_conductor_both_come_as_runs() -> None:
    s = _Stream()
    s.channel.queue.put_nowait(_event(1, 0))  # through Faust's conductor
    s.channel.queue.put_nowait(_run(1, range(1, 3), _AiokafkaTP("raw", 2)))  # put by the fast fetch loop
    (batch,) = _take(s, 1)
    assert _offsets(batch) == [(0, [0]), (2, [1, 2])]
    assert [r.value for _, records in batch for r in records] == [b"v0", b"v1", b"v2"]


def test_only_a_topic_read_by_exactly_one_channel_is_handed_over_directly() -> None:
    flow = FlowControlEvent(initially_suspended=False)
    q1, q2 = (ThrowableQueue(maxsize=2, flow_control=flow) for _ in range(2))
    app = SimpleNamespace(
        topics=SimpleNamespace(
            _topic_name_index={
                "one": [SimpleNamespace(queue=q1)],
                "two": [SimpleNamespace(queue=q1), SimpleNamespace(queue=q2)],
            }
        )
    )
    assert fastpath._direct_queue(app, "one") is q1
    assert fastpath._direct_queue(app, "two") is None  # the conductor delivers to each channel
    assert fastpath._direct_queue(app, "none") is None


def test_events_and_runs_of_an_earlier_rebalance_generation_are_left_out() -> None:
    s = _Stream()
    s.app.consumer_generation_id = 3
    for i, gen in enumerate([2, 3, 2, 3]):
        s.channel.queue.put_nowait(_event(gen, i))
    s.channel.queue.put_nowait(_run(2, range(4, 6)))
    s.channel.queue.put_nowait(_run(3, range(6, 8)))
    (batch,) = _take(s, 1)
    assert _offsets(batch) == [(0, [1]), (0, [3]), (0, [6, 7])]


def test_a_batch_taken_while_the_flow_is_suspended_is_dropped() -> None:
    s = _Stream()
    s.channel.queue.put_nowait(_event(1, 0))
    s.flow.suspend()  # a rebalance in progress: the partitions are read again from the commit

    async def run() -> list[Any]:
        it = fastpath.record_batches(s)
        task = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.05)
        assert not task.done()  # the suspended batch was not handed over
        s.flow.resume()
        s.channel.queue.put_nowait(_event(1, 1))
        batch: list[Any] = await asyncio.wait_for(task, 1.0)
        await it.aclose()
        return batch

    assert _offsets(asyncio.run(run())) == [(0, [1])]


def test_an_agent_waits_for_its_first_event_without_spinning() -> None:
    s = _Stream()

    async def run() -> tuple[bool, list[Any]]:
        it = fastpath.record_batches(s)
        task = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.05)
        waited = not task.done()
        s.channel.queue.put_nowait(_event(1, 7))
        batch: list[Any] = await asyncio.wait_for(task, 1.0)
        await it.aclose()
        return waited, batch

    waited, batch = asyncio.run(run())
    assert waited and _offsets(batch) == [(0, [7])]


def _delivery_case(**over: Any) -> tuple[Any, Any]:
    flow = FlowControlEvent(initially_suspended=False)
    queue = ThrowableQueue(maxsize=2, flow_control=flow)
    app = SimpleNamespace(
        flow_control=flow, topics=SimpleNamespace(_topic_name_index={"raw": [SimpleNamespace(queue=queue)]})
    )
    consumer = SimpleNamespace(flow_active=True, suspend_flow=asyncio.Event())
    for name, value in over.items():
        if name == "queued":
            for i in range(value):
                queue.put_nowait(i)
        elif name == "suspended_flow_control":
            flow.suspend()
        elif name == "suspend_flow":
            consumer.suspend_flow.set()
        else:
            setattr(consumer, name, value)
    return app, consumer


@pytest.mark.parametrize(
    ("case", "direct"),
    [
        ({}, True),
        ({"queued": 1}, True),  # room left in the channel's queue
        ({"queued": 2}, False),  # full: the conductor would await room
        ({"flow_active": False}, False),  # the consumer's flow stopped (a rebalance)
        ({"suspend_flow": True}, False),
        ({"suspended_flow_control": True}, False),  # the conductor would await the resume
    ],
)
def test_a_record_is_delivered_directly_only_when_its_delivery_cannot_wait(
    case: dict[str, Any], direct: bool
) -> None:
    app, consumer = _delivery_case(**case)
    assert fastpath._can_deliver_now(app, consumer, "raw") is direct
    assert fastpath._can_deliver_now(app, consumer, "a topic no channel reads") is (
        direct or "queued" in case
    )


def test_another_faust_version_keeps_its_own_fetch_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = SimpleNamespace(_drain_messages="faust's own")
    monkeypatch.setattr("importlib.metadata.version", lambda name: "9.9.9")
    assert fastpath.install_fast_drain(consumer) is False
    assert consumer._drain_messages == "faust's own"
    assert "faust-streaming 9.9.9: keeping its own fetch loop" in caplog.text


def test_the_installed_faust_gets_the_fast_fetch_loop() -> None:
    consumer = SimpleNamespace(_drain_messages="faust's own")
    assert fastpath.install_fast_drain(consumer) is True
    assert consumer._drain_messages != "faust's own" and asyncio.iscoroutinefunction(consumer._drain_messages)


class _DrainConsumer:
    """The attributes of Faust's Consumer that the fast fetch loop reads, over mode's real queue.

    ``fetches``: what each ``_wait_next_records`` returns (a map of partition -> records); the
    loop stops after the last one.
    """

    consumer_stopped_errors = ()

    def __init__(self, fetches: list[dict[Any, list[Any]]], queue_size: int = 100) -> None:
        self.flow = FlowControlEvent(initially_suspended=False)
        self.queue = ThrowableQueue(maxsize=queue_size, flow_control=self.flow)
        self.full: list[Any] = []
        self.dropped: list[Any] = []
        self.delivered: list[Any] = []
        self.gaps: list[tuple[Any, int, int]] = []
        self.seeks = 0
        self.tracked: list[tuple[Any, int]] = []
        self.app = SimpleNamespace(
            flow_control=self.flow,
            consumer_generation_id=1,
            topics=SimpleNamespace(
                _topic_name_index={"raw": [SimpleNamespace(queue=self.queue)], "other": []},
                acks_enabled_for=lambda topic: True,
            ),
            sensors=SimpleNamespace(on_topic_buffer_full=lambda tp: None),
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: self.tracked.append((tp, hw))),
        )
        self._fetches = list(fetches)
        self._stopped = asyncio.Event()
        self._read_offset: dict[Any, Any] = defaultdict(lambda: None)  # as Faust's
        self._buffered_partitions: set[Any] = set()
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self._commit_every = None
        self._n_acked = 0
        self.flow_active = True
        self.suspend_flow = asyncio.Event()
        self.should_stop = False
        self.log = SimpleNamespace(dev=lambda *a: None, info=lambda *a: None, warning=lambda *a: None)

    async def _wait_next_records(self, timeout: float) -> tuple[dict[Any, list[Any]], None]:  # noqa: ASYNC109
        records = self._fetches.pop(0)
        if not self._fetches:
            self._stopped.set()  # the loop ends after this fetch
        return records, None

    def highwater(self, tp: Any) -> int:
        return 1000

    def _to_message(self, tp: Any, record: Any) -> Any:
        return _message(self.app.consumer_generation_id, record.offset, tp)

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(s)

    async def wait_first(self, *coros: Any) -> None:  # mode's Service.wait_first: the first to end wins
        tasks = [asyncio.ensure_future(c) for c in coros]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    async def perform_seek(self) -> None:
        self.seeks += 1

    async def callback(self, message: Any) -> None:  # the conductor's
        self.delivered.append(message)

    def on_buffer_full(self, tp: Any) -> None:
        self.full.append(tp)

    def on_buffer_drop(self, tp: Any) -> None:
        self.dropped.append(tp)


def _drain(c: _DrainConsumer) -> None:
    asyncio.run(fastpath._drain_messages(c, SimpleNamespace(_stopped=asyncio.Event()), frozenset({"raw"})))


def _queued(c: _DrainConsumer) -> list[tuple[int, int, int, int]]:
    """Each queued run as (partition, generation, first offset, last offset)."""
    return [
        (r.tp.partition, r.generation_id, r.records[0].offset, r.records[-1].offset) for r in c.queue._queue
    ]


def test_the_fast_loop_queues_a_direct_topics_records_in_runs_and_reports_pressure_with_faust_partitions() -> (
    None
):
    # a queue of 8 runs is "high" from 6 on: the fetch loop must tell Faust's consumer which
    # partition to stop fetching with Faust's TP (aiokafka's TopicPartition crashed the worker:
    # Faust's active-partition set asserts its type, seen in the SIGKILL test on a clean clone)
    from faust.types import TP

    n = 6 * fastpath.MAX_BATCH + 10
    other_tp = _AiokafkaTP("other", 0)
    c = _DrainConsumer(
        [{RAW0: [_record(i) for i in range(n)], other_tp: [_record(0, other_tp), _record(1, other_tp)]}],
        queue_size=8,
    )
    _drain(c)
    b = fastpath.MAX_BATCH
    assert _queued(c) == [(0, 1, i * b, min(n, (i + 1) * b) - 1) for i in range(7)]  # in order, none split
    # a topic not handed over directly goes through the conductor, record by record, as Faust's messages
    assert [(m.tp, m.offset) for m in c.delivered] == [(other_tp, 0), (other_tp, 1)]
    assert c.full and all(type(tp) is TP for tp in c.full)
    assert c._read_offset == {RAW0: n - 1, other_tp: 1}
    assert c.tracked == [(RAW0, 1000), (other_tp, 1000)]  # the monitor's end offsets, once per partition
    assert not c.gaps
    while not c.queue.empty():  # the agent drains the queue: fetching resumes, with Faust's TP too
        c.queue.get_nowait()
    assert c.dropped == [TP("raw", 0)] and type(c.dropped[0]) is TP


def test_the_fast_loop_reports_offsets_missing_between_records_as_faust_does() -> None:
    c = _DrainConsumer([{RAW0: [_record(o) for o in (5, 6, 9, 10, 14)]}])
    c._read_offset[RAW0] = 3
    _drain(c)
    assert c.gaps == [(RAW0, 4, 5), (RAW0, 7, 9), (RAW0, 11, 14)]
    assert _queued(c) == [(0, 1, 5, 14)]


def test_the_fast_loop_skips_records_before_the_read_offset() -> None:
    c = _DrainConsumer([{RAW0: [_record(o) for o in range(3, 9)]}, {RAW0: [_record(o) for o in range(0, 2)]}])
    c._read_offset[RAW0] = 5
    _drain(c)
    assert _queued(c) == [(0, 1, 5, 8)]  # a fetch of records read already queues nothing


def test_a_fetch_from_an_earlier_rebalance_generation_is_not_delivered() -> None:
    c = _DrainConsumer([])
    records = {RAW0: [_record(0)], _AiokafkaTP("other", 0): [_record(0, _AiokafkaTP("other", 0))]}
    asyncio.run(fastpath._deliver(c, records, None, 0, frozenset({"raw"})))  # the app is at 1
    assert not _queued(c) and not c.delivered and c._read_offset == {}


def test_a_fetch_while_the_flow_is_stopped_seeks_back_to_the_committed_offsets() -> None:
    c = _DrainConsumer([{RAW0: [_record(0)]}])
    c.flow_active = False  # a rebalance: Faust's getmany seeks instead of delivering
    _drain(c)
    assert c.seeks == 1 and not _queued(c) and not c.delivered


def test_records_of_a_direct_topic_go_through_the_conductor_while_its_flow_control_is_suspended() -> None:
    c = _DrainConsumer([{RAW0: [_record(o) for o in range(3)]}])
    c.flow.suspend()
    _drain(c)
    assert not _queued(c)
    assert [(m.tp, m.offset, m.generation_id) for m in c.delivered] == [
        (RAW0, 0, 1),
        (RAW0, 1, 1),
        (RAW0, 2, 1),
    ]
    assert c._read_offset == {RAW0: 2}


def test_a_full_queue_makes_the_fast_loop_wait_for_room_and_lose_nothing() -> None:
    b = fastpath.MAX_BATCH
    c = _DrainConsumer([{RAW0: [_record(o) for o in range(4 * b)]}], queue_size=2)
    taken: list[tuple[int, int, int, int]] = []

    async def run() -> None:
        async def agent() -> None:
            while len(taken) < 4:
                await asyncio.sleep(0.01)
                run = await c.queue.get()
                taken.append(
                    (run.tp.partition, run.generation_id, run.records[0].offset, run.records[-1].offset)
                )

        task = asyncio.ensure_future(agent())
        await fastpath._drain_messages(c, SimpleNamespace(_stopped=asyncio.Event()), frozenset({"raw"}))
        await asyncio.wait_for(task, 2.0)

    asyncio.run(run())
    assert taken == [(0, 1, i * b, (i + 1) * b - 1) for i in range(4)]
