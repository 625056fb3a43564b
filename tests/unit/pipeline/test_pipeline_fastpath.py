"""The worker's cheaper path through Faust (pipeline.fastpath), on mode's real queues and flow control.

The whole path runs against the broker in every worker integration test (tests/integration/pipeline);
these pin its decisions: when a record may be delivered without Faust's ``wait_first``, how an agent's
events are batched, and which events a batch leaves out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from pipeline import fastpath


def _message(generation: int, offset: int = 0) -> Any:
    return SimpleNamespace(generation_id=generation, offset=offset, topic="raw")


def _event(generation: int, offset: int = 0) -> Any:
    return SimpleNamespace(message=_message(generation, offset))


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


def test_every_queued_event_comes_in_batches_of_at_most_max_batch_in_queue_order() -> None:
    s = _Stream()
    for i in range(10):
        s.channel.queue.put_nowait(_event(1, i))
    got = _take(s, 3, max_batch=4)
    assert s.started
    assert [[m.offset for m in b] for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_messages_put_by_the_fetch_loop_and_events_from_the_conductor_both_come_as_messages() -> None:
    s = _Stream()
    s.channel.queue.put_nowait(_event(1, 0))  # through Faust's conductor
    s.channel.queue.put_nowait(_message(1, 1))  # put directly by the fast fetch loop
    (batch,) = _take(s, 1)
    assert [m.offset for m in batch] == [0, 1] and all(not hasattr(m, "message") for m in batch)


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


def test_events_of_an_earlier_rebalance_generation_are_left_out() -> None:
    s = _Stream()
    s.app.consumer_generation_id = 3
    for i, gen in enumerate([2, 3, 2, 3]):
        s.channel.queue.put_nowait(_event(gen, i))
    (batch,) = _take(s, 1)
    assert [m.offset for m in batch] == [1, 3]


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

    assert [m.offset for m in asyncio.run(run())] == [1]


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
    assert waited and [m.offset for m in batch] == [7]


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


class _AiokafkaTP(NamedTuple):  # what Faust's getmany yields beside each record (aiokafka's type)
    topic: str
    partition: int


class _DrainConsumer:
    """The attributes of Faust's Consumer that the fast fetch loop reads, over mode's real queue."""

    consumer_stopped_errors = ()

    def __init__(self, records: list[Any], queue_size: int) -> None:
        self.flow = FlowControlEvent(initially_suspended=False)
        self.queue = ThrowableQueue(maxsize=queue_size, flow_control=self.flow)
        self.full: list[Any] = []
        self.dropped: list[Any] = []
        self.delivered: list[Any] = []
        self.app = SimpleNamespace(
            flow_control=self.flow,
            topics=SimpleNamespace(
                _topic_name_index={"raw": [SimpleNamespace(queue=self.queue)], "other": []},
                acks_enabled_for=lambda topic: True,
            ),
            sensors=SimpleNamespace(on_topic_buffer_full=lambda tp: None),
        )
        self._records = records
        self._stopped = asyncio.Event()
        self._read_offset: dict[Any, Any] = defaultdict(lambda: None)  # as Faust's
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self._commit_every = None
        self.flow_active = True
        self.suspend_flow = asyncio.Event()
        self.should_stop = False
        self.log = logging.getLogger("test.fastpath")

    async def getmany(self, timeout: float) -> Any:  # noqa: ASYNC109 - Faust's signature
        for item in self._records:
            yield item
        self._stopped.set()  # one fetch, then the loop ends

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(s)

    async def callback(self, message: Any) -> None:  # the conductor's
        self.delivered.append(message)

    def on_buffer_full(self, tp: Any) -> None:
        self.full.append(tp)

    def on_buffer_drop(self, tp: Any) -> None:
        self.dropped.append(tp)


def test_the_fast_loop_puts_direct_records_in_the_queue_and_reports_pressure_with_faust_partitions() -> None:
    # a queue of 10 is "high" from 8 records on: the fetch loop must tell Faust's consumer which
    # partition to stop fetching with Faust's TP (aiokafka's TopicPartition crashed the worker:
    # Faust's active-partition set asserts its type, seen in the SIGKILL test on a clean clone)
    from faust.types import TP

    # Faust's messages carry aiokafka's partition type too (its _to_message passes it on)
    raw = [
        (_AiokafkaTP("raw", 0), SimpleNamespace(topic="raw", partition=0, offset=i, tp=_AiokafkaTP("raw", 0)))
        for i in range(9)
    ]
    other_tp = _AiokafkaTP("other", 0)
    other = (other_tp, SimpleNamespace(topic="other", partition=0, offset=0, tp=other_tp))
    c = _DrainConsumer([*raw, other], queue_size=10)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    asyncio.run(fastpath._drain_messages(c, fetcher, frozenset({"raw"})))
    assert [m.offset for m in c.queue._queue] == list(range(9))  # straight into the agent's queue
    assert c.delivered == [other[1]]  # a topic not handed over directly goes through the conductor
    assert c.full and all(type(tp) is TP for tp in c.full)
    assert c._read_offset == {_AiokafkaTP("raw", 0): 8, _AiokafkaTP("other", 0): 0}
    while not c.queue.empty():  # the agent drains the queue: fetching resumes, with Faust's TP too
        c.queue.get_nowait()
    assert c.dropped == [TP("raw", 0)] and type(c.dropped[0]) is TP
