"""The sink's consumer loop: Kafka -> batches -> ClickHouse and Redis -> offset commit.

At-least-once delivery made effectively exactly-once by idempotent writes:

1. records are decoded and buffered per partition (:class:`sinks.batch.Batcher`);
2. when a flush is due, the buffers are cut into deterministic batches, written to every sink in
   order (ClickHouse first, then Redis), and only then are the offsets committed
   (``enable.auto.commit=false``);
3. a failed write keeps the same batches and retries them with exponential back-off; meanwhile the
   assigned partitions are paused (no unbounded memory), and ``poll`` keeps the group membership;
4. on assignment, the ranges a previous owner recorded but did not commit are planned again, so the
   replay carries the same deduplication tokens.

``TRACKFLOW_SINK_CRASH_AFTER_INSERT=1`` (tests only) makes the process ``os._exit(99)`` right after its
first ClickHouse insert, before Redis and before the commit; ``TRACKFLOW_SINK_CRASH_AFTER_REDIS=1``
``os._exit(98)`` after ClickHouse and Redis, before the commit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from schemas import Codec
from sinks.base import AGAIN, Batch, Sink
from sinks.batch import Batcher
from sinks.clickhouse import ClickHouseSink
from sinks.decode import ArrowDecoder
from sinks.exceptions import SinkError
from sinks.settings import SinkSettings
from trackflow.config import KafkaSettings, Topics
from trackflow.offsets import read_committed

log = logging.getLogger("trackflow.sink")

#: librdkafka's ``fetch.queue.backoff.ms`` for the sink's consumer (see :meth:`SinkLoop._make_consumer`)
FETCH_QUEUE_BACKOFF_MS = 10
#: how long a full buffer waits for the write in flight before pausing the partitions
FULL_WAIT_S = 1.0
#: records per ``consume`` call; a call that returns this many means a backlog (see ``Batcher.due``)
CONSUME_BATCH = 10_000


def consumer_config(kafka: KafkaSettings, settings: SinkSettings) -> dict[str, Any]:
    """The sink consumer's librdkafka configuration (also read by ``bench/sink/consume.py``)."""
    return {
        **kafka.client_config(),
        "group.id": settings.group_id(kafka.topic_prefix),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": settings.sink_session_timeout_ms,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        # once a partition's local queue holds queued.min.messages (100k), librdkafka postpones
        # its next fetch by this long (default 1 s): with the sink busy inserting, the queue
        # ran dry and reading stalled, capping reads at 220k-400k records/s where 10 ms gives
        # 1.3-1.9M (bench/sink/consume.py); memory stays bounded by queued.max.messages.kbytes
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    }


def group_runs(msgs: Sequence[Any]) -> dict[tuple[str, int], tuple[list[int], list[Any], tuple[int, int]]]:
    """The messages of one ``consume`` call per partition: ``(offsets, values, timestamp of the
    first)``, in the order read. Errors are logged (end of partition silently) and left out."""
    runs: dict[tuple[str, int], tuple[list[int], list[Any], tuple[int, int]]] = {}
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
            continue
        tp = (m.topic(), m.partition())
        run = runs.get(tp)
        if run is None:
            run = runs[tp] = ([], [], m.timestamp())
        run[0].append(m.offset())
        run[1].append(m.value())
    return runs


class SinkLoop:
    """Consumes the enriched, sessions, invalid and FX topics into the sinks.

    Parameters:
        kafka: Kafka settings (bootstrap, topics).
        settings: batching and retry settings.
        clickhouse: the ClickHouse sink (also the keeper of batch intents).
        others: further sinks written after ClickHouse (Redis).
        codecs: decoder per kind (``events``, ``sessions``, ``invalid``, ``fx``).
        topics: the topic names; default from ``kafka``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: SinkSettings,
        clickhouse: ClickHouseSink,
        others: Sequence[Sink],
        codecs: dict[str, Codec],
        topics: Topics | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.clickhouse = clickhouse
        self.sinks: list[Any] = [clickhouse, *others]
        self.codecs = codecs
        self.decoders: dict[str, ArrowDecoder] = {}
        if "events" in codecs:
            self.decoders["events"] = ArrowDecoder("enriched_event", codecs["events"])
        t = topics or kafka.topics
        self.kinds = {t.enriched: "events", t.sessions: "sessions", t.invalid: "invalid", t.fx: "fx"}
        self.batcher = Batcher(settings.sink_batch_rows, settings.sink_batch_age_s)
        self.stop_event = threading.Event()
        self.pending: list[Batch] = []
        self.paused = False
        self.backlog = False  # the last consume call returned a full CONSUME_BATCH
        self.stats: dict[str, Any] = {
            "rows_written": 0, "batches_written": 0, "flushes": 0, "write_failures": 0,
            "decode_errors": 0, "commit_failures": 0, "last_flush_at": None, "last_error": None, "healthy": True,
        }
        self._consumer: Consumer | None = None
        # written but not yet committed (a commit failed): committed again until it succeeds
        self.uncommitted: dict[tuple[str, int], int] = {}
        self._commit_retry_at = 0.0
        self._backoff = 0.0
        self._retry_at = 0.0
        self.on_flush: Callable[[list[Batch]], None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-redis")
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sink-decode")
        #: writes a flush while the loop consumes the next one (see :meth:`_flush`)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-write")
        self._inflight: Future[None] | None = None

    # -- Kafka plumbing --------------------------------------------------------------------

    def _make_consumer(self) -> Consumer:
        return Consumer(consumer_config(self.kafka, self.settings))

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The group's committed offset per partition, only where the broker answered without error.

        Right after a broker restart the coordinator may still be loading its offsets and answer
        with a per-partition error (and offset -1001); reading that as 0 planned every range the
        group ever recorded, none of which the consumer would deliver again.
        """
        try:
            offsets, missing = read_committed(consumer, [(tp.topic, tp.partition) for tp in partitions])
        except Exception as exc:
            log.warning("could not read committed offsets: %s", exc)
            offsets, missing = {}, [(tp.topic, tp.partition) for tp in partitions]
        if missing:
            log.warning(
                "no committed offset for %s: their recorded batch ranges are not replayed (the "
                "sink's message-id filter still drops rows stored before)",
                ", ".join(f"{t}/{p}" for t, p in missing),
            )
        return {tp: max(o, 0) for tp, o in offsets.items()}

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._inflight is not None:  # its client reads the intents below; its commit comes first
            try:
                self._settle()
            except SinkError as exc:
                log.warning("write in flight failed at assignment; it is retried: %s", exc)
        offsets = self._committed(consumer, partitions)
        if not offsets:
            return
        for attempt in range(5):
            try:
                plans = self.clickhouse.intents(offsets)
                break
            except Exception as exc:
                log.warning("could not read batch intents (attempt %d): %s", attempt + 1, exc)
                time.sleep(min(2**attempt, 5))
        else:
            plans = {}
        now = time.monotonic()
        for (topic, partition), ranges in plans.items():
            log.info("replaying %d recorded batch range(s) of %s/%d", len(ranges), topic, partition)
            self.batcher.plan(topic, partition, ranges, self.kinds[topic], now)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._flush(force=True)
        except SinkError as exc:
            log.warning("flush on revoke failed, the records will be redelivered: %s", exc)
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.batcher.drop(tps)
        for tp in tps:
            self.uncommitted.pop(tp, None)  # the next owner starts from the committed offset
        self.pending = [b for b in self.pending if (b.topic, b.partition) not in tps]

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until :meth:`stop`; flush and commit what is buffered before returning."""
        consumer = self._consumer = self._make_consumer()
        consumer.subscribe(list(self.kinds), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stop_event.is_set():
                if self._inflight is not None:
                    timeout = 0.01  # back soon to commit it
                elif self.paused or self.pending:
                    timeout = 0.1
                else:
                    timeout = min(0.25, self.settings.sink_batch_age_s)
                msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=timeout)
                now, wall = time.monotonic(), time.time()
                self.backlog = len(msgs) >= CONSUME_BATCH
                for (topic, partition), (offsets, values, (ts_type, ts)) in group_runs(msgs).items():
                    kind = self.kinds.get(topic)
                    if kind is not None:  # decoded per batch
                        written = None
                        if ts_type != TIMESTAMP_NOT_AVAILABLE and ts > 0:
                            written = now - max(0.0, wall - ts / 1000)
                        self.batcher.add_many(topic, partition, offsets, values, kind, now, written)
                self._backpressure()
                if self.pending or self.batcher.due(now, self.backlog) or self.paused:
                    try:
                        self._flush()
                    except SinkError:
                        pass
                if self.uncommitted and now >= self._commit_retry_at:
                    self._commit_offsets({})
            try:
                self._flush(force=True)
            except SinkError as exc:
                log.warning("final flush failed; uncommitted records will be redelivered: %s", exc)
        finally:
            consumer.close()
            self._consumer = None
            self._pool.shutdown(wait=True)
            self._decode_pool.shutdown(wait=True)
            self._writer.shutdown(wait=True)

    def stop(self) -> None:
        self.stop_event.set()

    def _decode(self, b: Batch) -> Batch:
        """Decode a batch of raw values: Arrow for events (fast path), dicts otherwise."""
        if not b.records or not isinstance(b.records[0], (bytes, bytearray)):
            return b  # already decoded
        span = (b.first_offset, b.last_offset)
        dec = self.decoders.get(b.kind)
        if dec is not None:
            table, recs = dec.decode(b.records, b.topic)
            if table is not None:
                return Batch(b.topic, b.partition, b.offsets, [], b.kind, table=table, span=span, meta=b.meta)
        else:
            recs = []
            for v in b.records:
                try:
                    recs.append(self.codecs[b.kind].decode(v, b.topic))
                except Exception as exc:
                    log.error("undecodable record in %s/%d skipped: %s", b.topic, b.partition, exc)
                    recs.append(None)
        keep = [(o, r) for o, r in zip(b.offsets, recs, strict=True) if r is not None]
        return Batch(
            b.topic, b.partition, [o for o, _ in keep], [r for _, r in keep], b.kind, span=span, meta=b.meta
        )

    def _backpressure(self) -> None:
        """Stop reading once ``sink_max_buffer_rows`` are buffered. With a write in flight, wait
        for it first (up to :data:`FULL_WAIT_S`): it usually ends well within that, and pausing
        instead would drop librdkafka's prefetched records, fetched again after the resume (a
        0.8-0.9 s gap with nothing to write, twice every three flushes in ``bench/sink``). A
        write that takes longer (ClickHouse slow or down) pauses the partitions as before."""
        if self.paused or self.batcher.rows < self.settings.sink_max_buffer_rows:
            return
        if self._inflight is not None:
            wait([self._inflight], timeout=FULL_WAIT_S)
            if self._inflight.done():
                return  # the flush that follows commits it and takes the buffer
        self._pause()

    def _pause(self) -> None:
        if self._consumer is not None and not self.paused:
            self._consumer.pause(self._consumer.assignment())
            self.paused = True

    def _resume(self) -> None:
        if self._consumer is not None and self.paused:
            self._consumer.resume(self._consumer.assignment())
            self.paused = False

    def _flush(self, force: bool = False) -> None:
        """Write and commit what is due; raises :class:`SinkError` when a write failed (kept for a retry).

        The writes of a flush run on the writer thread while this thread goes on consuming and
        decoding: the next flush starts once the previous one is committed, so
        writes and commits stay in order. ``force`` (a revoke, the end) waits for everything.
        """
        if self._inflight is not None:
            if not (force or self._inflight.done()):
                return
            self._settle()
        now = time.monotonic()
        if self.pending and now < self._retry_at and not force:
            return
        if not self.pending:
            if not (force or self.batcher.due(now, self.backlog) or self.paused):
                return
            taken = self.batcher.take(now)
            # decoded in parallel: polars' Avro reader releases the GIL (a 4-partition flush of
            # 50k rows: ~145 ms instead of ~200-250 ms on 2 cores)
            self.pending = list(self._decode_pool.map(self._decode, taken))
            self.stats["decode_errors"] += sum(len(a) - len(b) for a, b in zip(taken, self.pending, strict=True))
        if not self.pending:
            if self.paused and self.batcher.rows < self.settings.sink_max_buffer_rows:
                self._resume()
            return
        if not force and not self._hooks():
            self._inflight = self._writer.submit(self._write, self.pending)
            return
        try:
            self._write(self.pending)
        except SinkError as exc:
            self._failed(exc)
            raise
        self._written()

    def _settle(self) -> None:
        """Wait for the write in flight, then commit it (or keep it for a retry and raise)."""
        fut, self._inflight = self._inflight, None
        if fut is None:
            return
        error = fut.exception()
        if error is None:
            self._written()
            return
        if isinstance(error, SinkError):
            self._failed(error)
        raise error

    def _failed(self, exc: SinkError) -> None:
        self.stats["write_failures"] += 1
        self.stats["last_error"] = str(exc)
        self.stats["healthy"] = False
        self._backoff = min(max(self._backoff * 2, 0.2), self.settings.sink_retry_max_s)
        self._retry_at = time.monotonic() + self._backoff
        log.warning("write failed, retrying in %.1fs (consumption paused): %s", self._backoff, exc)
        for b in self.pending:  # some of it may have been written
            b.meta[AGAIN] = True
        self._pause()

    def _written(self) -> None:
        self._commit(self.pending)
        self.stats["rows_written"] += sum(len(b) for b in self.pending)
        self.stats["batches_written"] += len(self.pending)
        self.stats["flushes"] += 1
        self.stats["last_flush_at"] = time.time()
        self.stats["healthy"] = True
        if self.on_flush is not None:
            self.on_flush(self.pending)
        self.pending = []
        self._backoff = 0.0
        if self.paused and self.batcher.rows < self.settings.sink_max_buffer_rows:
            self._resume()

    def _hooks(self) -> bool:
        return self.settings.sink_crash_after_insert or self.settings.sink_crash_after_redis

    def _write(self, batches: list[Batch]) -> None:
        if len(self.sinks) == 2 and not self._hooks():
            # Redis alongside ClickHouse's inserts (chdb and the socket release the GIL), once the
            # replay lookup has said which events to count; both must succeed before the commit,
            # and a retry is harmless for the one that did
            started: list[Future[None]] = []
            try:
                self.clickhouse.write(batches, on_lookup=lambda: started.append(
                    self._pool.submit(self.sinks[1].write, batches)))
            finally:
                for fut in started:
                    fut.result()
            if not started:  # no rows for ClickHouse (nothing looked up)
                self.sinks[1].write(batches)
            return
        for i, sink in enumerate(self.sinks):
            sink.write(batches)
            if i == 0 and self.settings.sink_crash_after_insert and self.clickhouse.inserts > 0:
                log.error("TRACKFLOW_SINK_CRASH_AFTER_INSERT: exiting after the first insert, before the commit")
                os._exit(99)
        if self.settings.sink_crash_after_redis:
            log.error("TRACKFLOW_SINK_CRASH_AFTER_REDIS: exiting after ClickHouse and Redis, before the commit")
            os._exit(98)

    def _commit(self, batches: list[Batch]) -> None:
        ends: dict[tuple[str, int], int] = {}
        for b in batches:
            tp = (b.topic, b.partition)
            ends[tp] = max(ends.get(tp, -1), b.last_offset + 1)
        self._commit_offsets(ends)

    def _commit_offsets(self, ends: dict[tuple[str, int], int]) -> None:
        """Commit ``ends`` plus whatever an earlier failed commit left, synchronously.

        A commit can fail as a whole (an exception) or per partition (``error`` on the returned
        partition), e.g. while the coordinator moves after a broker restart. The offsets stay in
        :attr:`uncommitted` and are committed again (every second) until the broker takes them or
        the partition is revoked; otherwise a partition that receives nothing more would keep its
        old committed offset, and the group's lag would never reach zero.
        """
        for key, o in ends.items():
            self.uncommitted[key] = max(self.uncommitted.get(key, -1), o)
        if not self.uncommitted or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(self.uncommitted.items())]
        try:
            answer = self._consumer.commit(offsets=offsets, asynchronous=False) or offsets
            failed = [f"{part.topic}/{part.partition}: {part.error}" for part in answer if part.error is not None]
        except Exception as exc:
            answer, failed = [], [str(exc)]
        for part in answer:
            key = (part.topic, part.partition)
            if part.error is None and self.uncommitted.get(key, -1) <= part.offset:
                self.uncommitted.pop(key, None)
        if failed:
            self.stats["commit_failures"] += 1
            self._commit_retry_at = time.monotonic() + 1.0
            log.warning(
                "offset commit failed, retrying in 1 s (a new owner would replay idempotently): %s", "; ".join(failed)
            )
