"""A cheaper per-record path through Faust's consumer, for ``trackflow worker``.

faust-streaming's fetch loop (``Consumer._drain_messages``) hands every record to the conductor
through ``Service.wait_first(callback(message), suspend_flow.wait())``: four asyncio tasks and an
``asyncio.wait`` per record, so that a callback blocked on a full buffer can be abandoned when a
rebalance suspends the flow. That machinery was ~13 % of the worker's event-loop time in a
profile (2026-11-24, pyinstrument), and the bare pass-through agent pays it too.

:func:`install_fast_drain` replaces the loop with the same loop in which a record whose delivery
cannot block is delivered by awaiting the callback directly. It cannot block when the flow is
active (no rebalance suspending it), the flow control is not suspended (the conductor's first
await) and the channel queues of the record's topic have room (its other await). Otherwise the
record goes through ``wait_first`` as before. Everything else (offset bookkeeping, gaps,
commit-every, the yield to the loop every 100 records) is Faust's loop unchanged.

For the topics named in ``direct_topics`` (the worker's raw topic) it goes one step further: a
record that can be delivered now is put straight into the queue of the topic's one channel (the
agent's) as the Faust ``Message`` it is, without the conductor's per-record decode (the raw
serializer returns the bytes unchanged) and ``Event`` construction. :func:`record_batches` reads
both kinds of items (an ``Event`` from the conductor, a ``Message`` put here) as Messages.

Written against faust-streaming 0.15.3; :data:`FAUST_VERSIONS` lists the versions whose loop it
was compared with. For any other version the stock loop stays (logged), since this copies its body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

#: the faust-streaming versions whose ``Consumer._drain_messages`` this loop reproduces
FAUST_VERSIONS = frozenset({"0.15.3"})


def install_fast_drain(consumer: Any, direct_topics: frozenset[str] = frozenset()) -> bool:
    """Give ``consumer`` (Faust's) the fast fetch loop; ``False`` (stock loop kept) on another Faust version.

    ``direct_topics``: topics read by exactly one agent through :func:`record_batches` with the
    raw serializer, whose records go straight into that agent's queue (see the module).
    """
    from importlib.metadata import version

    found = version("faust-streaming")
    if found not in FAUST_VERSIONS:
        log.warning(
            "faust-streaming %s: keeping its own fetch loop (fast path written for %s)",
            found,
            sorted(FAUST_VERSIONS),
        )
        return False

    async def drain(fetcher: Any) -> None:
        await _drain_messages(consumer, fetcher, direct_topics)

    consumer._drain_messages = drain
    return True


def _flowing(app: Any, consumer: Any) -> bool:
    """Whether the consumer's flow runs: no rebalance, no suspended flow or flow control."""
    return bool(consumer.flow_active and not consumer.suspend_flow.is_set() and app.flow_control.is_active())


def _can_deliver_now(app: Any, consumer: Any, topic: str) -> bool:
    """Whether the conductor's callback for a record of ``topic`` completes without awaiting."""
    if not _flowing(app, consumer):
        return False
    return not any(chan.queue.full() for chan in app.topics._topic_name_index.get(topic, ()))


def _direct_queue(app: Any, topic: str) -> Any:
    """The queue of the one channel reading ``topic``, or ``None`` (no channel, or several)."""
    chans = app.topics._topic_name_index.get(topic)
    if not chans or len(chans) != 1:
        return None
    return next(iter(chans)).queue


async def _drain_messages(
    self: Any, fetcher: Any, direct_topics: frozenset[str] = frozenset()
) -> None:  # pragma: no cover - Faust's loop, run by every worker test
    """faust-streaming 0.15.3 ``Consumer._drain_messages`` with the direct delivery (see the module)."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    app = self.app

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    from faust.transport.consumer import CONSUMER_FETCHING
    from faust.types import TP

    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    on_topic_buffer_full = app.sensors.on_topic_buffer_full
    #: partition -> (on pressure high, on pressure drop): one pair per partition, as the conductor's
    pressure: dict[Any, tuple[Any, Any]] = {}

    def pressure_callbacks(key: Any) -> tuple[Any, Any]:
        # the callbacks get Faust's TP: the loop's (and the message's) partition is aiokafka's
        # TopicPartition, which Faust's active-partition set rejects (an assertion that crashed
        # the worker in the SIGKILL test on a clean clone)
        tp = TP(key.topic, key.partition)

        def high() -> None:
            on_topic_buffer_full(tp)
            self.on_buffer_full(tp)

        def drop() -> None:
            self.on_buffer_drop(tp)

        pair = pressure[key] = (high, drop)
        return pair

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        topic = message.topic
                        queue = _direct_queue(app, topic) if topic in direct_topics else None
                        if queue is not None and _flowing(app, self) and not queue.full():
                            # _can_deliver_now for the one channel of a direct topic
                            high, drop = pressure.get(tp) or pressure_callbacks(tp)
                            queue.put_nowait_enhanced(message, on_pressure_high=high, on_pressure_drop=drop)
                        elif queue is None and _can_deliver_now(app, self, topic):
                            await callback(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


#: an agent's batch holds at most this many events: the event loop (timers, the commit, the fetch
#: loop) runs between batches, so a batch of ~150 µs events keeps it waiting ~40 ms at most
MAX_BATCH = 256


async def record_batches(stream: Any, max_batch: int = MAX_BATCH) -> Any:
    """The records of an agent's ``stream`` in batches (lists of Faust ``Message``), read straight
    from its channel's queue.

    Iterating a Faust stream costs, per event, a pass through the event loop (``sleep(0)``), the
    sensors and the acknowledgement bookkeeping. The worker needs none of it per event: it decides
    the raw topic's commits from its own frontier (:func:`pipeline.worker._commit_to_frontier`),
    not from Faust's acknowledgements, and its processing does not await. So this takes every item
    already queued (up to ``max_batch``) and yields their messages together, with one pass through
    the loop per batch. An item is an ``Event`` (delivered by Faust's conductor) or a ``Message``
    (put by the fast fetch loop for a direct topic). As Faust's stream does, it skips records from
    before the current rebalance generation, and records taken while the flow is suspended (a
    rebalance in progress: Faust clears the queues and the partitions are read again from the
    committed offsets). A message's ``value`` is the record's bytes: use the raw serializer.

    Nothing here acknowledges records. Faust's commit-every-N-acks trigger and its wait for unacked
    events at a rebalance therefore do not apply; the commit timer and the frontier do.
    """
    await stream.maybe_start()
    app = stream.app
    queue = stream.channel.queue
    flow_control = app.flow_control
    while True:
        first = await queue.get()
        batch = [first]
        while len(batch) < max_batch and not queue.empty():
            batch.append(queue.get_nowait())
        generation = app.consumer_generation_id
        if flow_control.is_active():
            yield [m for item in batch if (m := getattr(item, "message", item)).generation_id == generation]
        await asyncio.sleep(0)
