"""A cheaper per-record path through Faust's consumer, for ``trackflow worker``.

faust-streaming's fetch loop (``Consumer._drain_messages``) hands every record to the conductor
through ``Service.wait_first(callback(message), suspend_flow.wait())``: four asyncio tasks and an
``asyncio.wait`` per record, so that a callback blocked on a full buffer can be abandoned when a
rebalance suspends the flow. That machinery was ~13 % of the worker's event-loop time in a
profile (2026-11-24, pyinstrument), and the bare pass-through agent pays it too.

:func:`install_fast_drain` replaces the loop with the same loop, Faust's ``getmany`` inlined, in
which a record whose delivery cannot block is delivered by awaiting the callback directly. It
cannot block when the flow is active (no rebalance suspending it), the flow control is not
suspended (the conductor's first await) and the channel queues of the record's topic have room
(its other await). Otherwise the record goes through ``wait_first`` as before. The rest is
Faust's: offset bookkeeping, gaps, commit-every, the generation and active-partition checks, the
seek when a fetch arrives while the flow is stopped, a yield to the loop every 100 records.

For the topics named in ``direct_topics`` (the worker's raw topic) it goes further, and works a
partition's fetched records at a time instead of one by one (2026-11-24 22:00 UTC). It puts them
straight into the queue of the topic's one channel (the agent's) as :class:`Run` items: up to
:data:`MAX_BATCH` consecutive records of one partition, aiokafka's own record objects. So there
is no Faust ``Message`` per record, no conductor decode or ``Event``, no queue operation, no
pass through Faust's ``getmany`` generator and no flow check per record: those cost the worker
~15 µs of its ~60 µs per event (the end offset for the monitor is also reported once per
partition and fetch, not per record). The channel's queue then counts runs, so the topic is
created with ``maxsize=`` :data:`DIRECT_QUEUE_RUNS`, and Faust's back-pressure (pause a
partition's fetching when the queue is 80 % full, resume at 40 %) still bounds the records in
memory. When the flow control is suspended (a rebalance under way) a run's records go through
the conductor one by one, as Faust would deliver them. :func:`record_batches` reads both kinds of
items (a :class:`Run`, an ``Event`` from the conductor).

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


def supported() -> bool:
    """Whether the installed faust-streaming is one this fetch loop was written for (else logged)."""
    from importlib.metadata import version

    found = version("faust-streaming")
    if found not in FAUST_VERSIONS:
        log.warning(
            "faust-streaming %s: keeping its own fetch loop (fast path written for %s)",
            found,
            sorted(FAUST_VERSIONS),
        )
        return False
    return True


def install_fast_drain(consumer: Any, direct_topics: frozenset[str] = frozenset()) -> bool:
    """Give ``consumer`` (Faust's) the fast fetch loop; ``False`` (stock loop kept) on another Faust version.

    ``direct_topics``: topics read by exactly one agent through :func:`record_batches` with the
    raw serializer, whose records go straight into that agent's queue (see the module); declare
    them with ``maxsize=DIRECT_QUEUE_RUNS``.
    """
    if not supported():
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


async def _drain_messages(self: Any, fetcher: Any, direct_topics: frozenset[str] = frozenset()) -> None:
    """faust-streaming 0.15.3 ``Consumer._drain_messages`` (with its ``getmany`` inlined), handing
    the records of a direct topic over in runs (see the module)."""
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    app = self.app

    from faust.transport.consumer import CONSUMER_FETCHING

    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            await self.sleep(0)
            if not self.should_stop:
                # Faust's getmany, up to its per-record loop
                records, active_partitions = await self._wait_next_records(1.0)
                generation_id = app.consumer_generation_id
                if records is not None and not self.should_stop:
                    if self.flow_active:
                        await _deliver(self, records, active_partitions, generation_id, direct_topics)
                    else:
                        self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
                        try:
                            await self.perform_seek()
                        except Exception as ex:
                            self.log.warning(f"exception performing seek when flow not active {ex}")
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


class Run:
    """Consecutive records of one partition, as the fetch loop hands them to a direct topic's agent.

    ``records`` are aiokafka's ``ConsumerRecord`` objects (``offset``, ``key``, ``value``, ...),
    at most :data:`MAX_BATCH` of them, in offset order.
    """

    __slots__ = ("generation_id", "records", "tp")

    def __init__(self, tp: Any, generation_id: int, records: list[Any]) -> None:
        self.tp = tp
        self.generation_id = generation_id
        self.records = records


def _pressure(self: Any, tp: Any) -> tuple[Any, Any]:
    """The (pressure high, pressure drop) callbacks of partition ``tp``, one pair per partition
    (the queue remembers a pending drop callback by identity), as Faust's conductor keeps them."""
    pairs: dict[Any, tuple[Any, Any]] = self.__dict__.setdefault("_trackflow_pressure", {})
    pair = pairs.get(tp)
    if pair is None:
        # the callbacks get Faust's TP: the fetch result's partitions are aiokafka's
        # TopicPartition, which Faust's active-partition set rejects (an assertion that crashed
        # the worker in the SIGKILL test on a clean clone)
        from faust.types import TP

        ftp = TP(tp.topic, tp.partition)
        on_topic_buffer_full = self.app.sensors.on_topic_buffer_full

        def high() -> None:
            on_topic_buffer_full(ftp)
            self.on_buffer_full(ftp)

        def drop() -> None:
            self.on_buffer_drop(ftp)

        pair = pairs[tp] = (high, drop)
    return pair


async def _deliver(
    self: Any,
    records: Any,
    active_partitions: Any,
    generation_id: int,
    direct_topics: frozenset[str],
) -> None:
    """Hand one fetch result over: Faust's ``getmany`` loop and ``_drain_messages`` body, a
    partition's records at a time (see the module)."""
    app = self.app
    callback = self.callback
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    acks_enabled_for = app.topics.acks_enabled_for
    commit_every = self._commit_every
    num_since_yield = 0
    for tp, fetched in records.items():
        if not self.flow_active:
            break
        if app.consumer_generation_id != generation_id:
            self.log.dev(
                "Generation id changed from %r to %r. Cancelling getmany.",
                generation_id,
                app.consumer_generation_id,
            )
            break
        if not fetched or not (
            active_partitions is None or tp in active_partitions or tp in self._buffered_partitions
        ):
            continue
        app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        r_offset = get_read_offset(tp)
        recs = fetched
        if r_offset is not None and fetched[0].offset < r_offset:
            recs = [r for r in fetched if r.offset >= r_offset]  # read already (a re-fetch after a seek)
            if not recs:
                continue
        topic = tp.topic
        if acks_enabled_for(topic) and (
            (r_offset and recs[0].offset - r_offset > 1) or recs[-1].offset - recs[0].offset != len(recs) - 1
        ):
            prev = r_offset
            for r in recs:  # offsets missing in between (compaction, transaction markers)
                if prev and r.offset - prev > 1:
                    await self._add_gap(tp, prev + 1, r.offset)
                prev = r.offset
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        queue = _direct_queue(app, topic) if topic in direct_topics else None
        if queue is not None:
            for i in range(0, len(recs), MAX_BATCH):
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    return  # as Faust's getmany: the rest of this fetch is read again later
                piece = recs[i : i + MAX_BATCH]
                if _flowing(app, self):
                    run = Run(tp, generation_id, piece)
                    if not queue.full():
                        high, drop = _pressure(self, tp)
                        queue.put_nowait_enhanced(run, on_pressure_high=high, on_pressure_drop=drop)
                    else:  # the agent is behind: wait for room, as Faust's conductor would
                        await self.wait_first(queue.put(run), self.suspend_flow.wait())
                else:  # a rebalance under way: Faust's own delivery, record by record
                    for r in piece:
                        await self.wait_first(callback(self._to_message(tp, r)), self.suspend_flow.wait())
                set_read_offset(tp, piece[-1].offset)
                await asyncio.sleep(0)
        else:
            for r in recs:
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    return
                num_since_yield += 1
                if num_since_yield > 100:
                    await asyncio.sleep(0)
                    num_since_yield = 0
                message = self._to_message(tp, r)
                if _can_deliver_now(app, self, topic):
                    await callback(message)
                else:
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                set_read_offset(tp, r.offset)


#: an agent's batch holds at most this many events: the event loop (timers, the commit, the fetch
#: loop) runs between batches, so a batch of ~150 µs events keeps it waiting ~40 ms at most
MAX_BATCH = 256

#: the queue size to give a direct topic's channel (``app.topic(..., maxsize=...)``): its items
#: are runs of up to :data:`MAX_BATCH` records, so 32 of them hold up to 8,192 records, and
#: Faust's back-pressure (stop fetching a partition from 80 % full, resume at 40 %) keeps
#: bounding the records waiting in memory
DIRECT_QUEUE_RUNS = 32


def _records_in(item: Any) -> int:
    """How many records a queue item holds: a :class:`Run`'s, else one (an ``Event``)."""
    return len(item.records) if item.__class__ is Run else 1


async def record_batches(stream: Any, max_batch: int = MAX_BATCH) -> Any:
    """The records of an agent's ``stream`` in batches, read straight from its channel's queue.

    A batch is a list of ``(tp, records)`` runs: consecutive records of one partition, in offset
    order, each with ``offset``, ``key`` and ``value`` (a :class:`Run` put by the fast fetch loop
    holds aiokafka's records; an ``Event`` delivered by Faust's conductor gives its ``Message``).

    Iterating a Faust stream costs, per event, a pass through the event loop (``sleep(0)``), the
    sensors and the acknowledgement bookkeeping. The worker needs none of it per event: it decides
    the raw topic's commits from its own frontier (:func:`pipeline.worker._commit_to_frontier`),
    not from Faust's acknowledgements, and its processing does not await. So this takes the items
    already queued (up to ``max_batch`` records) and yields them together, with one pass through
    the loop per batch. As Faust's stream does, it skips records from before the current
    rebalance generation, and records taken while the flow is suspended (a rebalance in
    progress: Faust clears the queues and the partitions are read again from the committed
    offsets). A record's ``value`` is its bytes: use the raw serializer.

    Nothing here acknowledges records. Faust's commit-every-N-acks trigger and its wait for unacked
    events at a rebalance therefore do not apply; the commit timer and the frontier do.
    """
    await stream.maybe_start()
    app = stream.app
    queue = stream.channel.queue
    flow_control = app.flow_control
    while True:
        items = [await queue.get()]
        n = _records_in(items[0])
        while n < max_batch and not queue.empty():
            items.append(queue.get_nowait())
            n += _records_in(items[-1])
        generation = app.consumer_generation_id
        if flow_control.is_active():
            runs: list[tuple[Any, list[Any]]] = []
            for item in items:
                if item.__class__ is Run:
                    if item.generation_id == generation:
                        runs.append((item.tp, item.records))
                else:
                    m = getattr(item, "message", item)
                    if m.generation_id == generation:
                        runs.append((m.tp, [m]))
            if runs:
                yield runs
        await asyncio.sleep(0)
