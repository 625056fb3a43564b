"""The faust-streaming worker (``trackflow worker``): wires the pure stages to Kafka.

- One agent (concurrency 1) reads raw Avro bytes from ``<prefix>events.raw``, runs
  :class:`pipeline.process.Processor` on each event inside the event's stream context, and
  ``send_soon``s Avro records to ``events.enriched``, ``events.invalid`` and ``sessions``.
  ``processing_guarantee='at_least_once'``: Faust flushes the producer before committing offsets,
  so an offset is committed only after everything its event produced is on Kafka.
- State: two Faust tables on the ``rocksdb://`` store (rocksdict when installed), with compacted
  changelog topics ``<app id>-devices-changelog`` / ``<app id>-seen-changelog``. Keys are the
  raw topic's keys, so each table partition lives with its raw partition.
- FX: a background thread reads the compacted ``fx.rates`` topic from the beginning (every worker
  reads every partition) into a queue the agent drains into its :class:`~pipeline.fx.RateTable`;
  the agent waits (``fx_wait_s``) until the topic has been read to its end before the first event.
- A timer closes sessions idle for longer than their timeout (wall clock), so a session ends even
  when its device sends nothing more; an index of open sessions is kept in memory and rebuilt by
  scanning the table after start and periodically.
- Apps come from :func:`trackflow.apps.open_registry` (refreshed live).

The Faust app id (consumer group, changelog names) derives from the topic prefix; the local state
folder from ``TRACKFLOW_HOME`` and the worker name, so several workers can share a machine.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, cast

import orjson

from pipeline.exceptions import PipelineError
from pipeline.fastpath import DIRECT_QUEUE_RUNS, install_fast_drain, record_batches
from pipeline.fastpath import supported as fastpath_supported
from pipeline.fx import RateTable, parse_hour
from pipeline.process import Processor, Result
from pipeline.settings import PipelineSettings
from schemas import Codec, codec_from_settings
from schemas.fastcodec import fast
from trackflow.config import CoreSettings, KafkaSettings, Topics
from trackflow.offsets import COMMITTED_ATTEMPTS, read_committed
from trackflow.runtime import restart_in_place, tune_gc

log = logging.getLogger("trackflow.pipeline")

#: aiokafka's ``max_partition_fetch_bytes`` (Faust's ``consumer_max_fetch_size``, default 1 MiB).
#: aiokafka fetches a partition again only once its previous fetch is consumed, so with 1 MiB
#: (~3,000 raw events) a bare Faust agent waited on the broker between fetches: 7,164 events/s
#: at 0.49 of a core, 12,800-14,300 with 16 MiB (``bench/pipeline/run.py``). The pass-through
#: baseline uses the same value. At most this much per assigned partition is held at once.
MAX_FETCH_BYTES = 16 * 1024 * 1024

#: key of the per-partition applied-offset marker in the ``devices`` table (never a device key)
APPLIED_KEY = b"\x00trackflow:applied"
#: prefix of the expiry index in the ``seen`` databases: prefix + 13-digit expiry ms + NUL + key
EXPIRY_PREFIX = b"\x00trackflow:expires:"
#: a sweep handles at most this many index entries (so one event never waits long)
SWEEP_LIMIT = 1000
#: every this many sweeps of a partition start again at the oldest index entry (out-of-order expiries)
SWEEP_RESTART_EVERY = 64


def app_id_for(prefix: str) -> str:
    """The Faust app id (= consumer group) of the pipeline for a topic prefix."""
    return f"{prefix}pipeline"


class Outputs:
    """A librdkafka producer for everything the agent writes (outputs and changelog records).

    Faust's own producer sends message by message through a small buffer, which limited the
    worker to a few hundred events/s here; librdkafka batches in C. :meth:`flush` runs before
    every offset commit (see :func:`build_app`), which keeps the at-least-once guarantee.

    Parameters:
        kafka: connection settings.
    """

    #: a flush that delivers nothing for this long restarts the producer (see :meth:`restart`)
    STUCK_S = 60.0

    def __init__(self, kafka: KafkaSettings) -> None:
        self.errors: list[str] = []
        self._kafka = kafka
        self._purging = False
        self._resend: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.restarts = 0
        self._producer = self._new_producer()
        self.sent = 0

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(
            self._kafka.client_config()
            | {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 10,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 1_000_000,
                "delivery.report.only.error": True,
                # retry for as long as it takes (a broker restart, an outage): an output is never
                # given up on while its input offset can still be committed
                "message.timeout.ms": 0,
                # one producer-wide callback: no per-message callback object to carry through librdkafka
                "on_delivery": self._on_delivery,
            }
        )

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if self._purging:
            self._resend.append((msg.topic(), msg.key(), msg.value(), msg.partition()))
        else:
            self.errors.append(str(err))

    def restart(self) -> int:
        """Purge the producer's undelivered records and send them again through a new producer.

        Seen in the chaos suite: after a broker restart an idempotent producer sometimes
        delivered nothing more, its queue only growing. Records purged from it are re-sent (some
        may have arrived already: duplicates, which the sink and the changelogs absorb). Runs on
        the event loop's thread, so no :meth:`send` interleaves. Returns how many were re-sent.
        """
        old = self._producer
        self._purging = True
        try:
            old.purge(in_queue=True, in_flight=True, blocking=True)
            old.poll(0)
            old.flush(5)
        finally:
            self._purging = False
        resend, self._resend = self._resend, []
        self._producer = self._new_producer()
        self.restarts += 1
        for topic, key, value, partition in resend:
            self.send(
                topic, key or b"", value, partition if partition is not None and partition >= 0 else None
            )
        log.warning("output producer restarted: %d undelivered records sent again", len(resend))
        return len(resend)

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        p = self._producer
        while True:
            try:
                if partition is None:
                    p.produce(topic, value, key)
                else:
                    p.produce(topic, value, key, partition)
                break
            except BufferError:
                p.poll(0.05)
        self.sent += 1
        if self.sent % 2000 == 0:
            p.poll(0)

    async def flush(self) -> None:
        """Wait until everything sent so far is acknowledged.

        With no delivery timeout, a delivery error is permanent (authorisation, a record too
        large): the records it lost must never be covered by an offset commit, so the error is
        raised, and keeps being raised by every later flush, which stops all further commits
        (see :func:`build_app`, where it ends the process).
        """
        best, since = -1, time.monotonic()
        while True:
            remaining = await asyncio.to_thread(self._producer.flush, 10)
            if self.errors:
                raise PipelineError(f"{remaining} records undelivered; delivery errors: {self.errors[:3]}")
            if not remaining:
                return
            log.warning("%d output records still waiting for the broker", remaining)
            if best < 0 or remaining < best:
                best, since = remaining, time.monotonic()
            elif time.monotonic() - since > self.STUCK_S:
                self.restart()
                best, since = -1, time.monotonic()


class TableState:
    """:class:`pipeline.process.StateStore` over two Faust tables, with a write-back cache.

    Reads go to the cache, then to the snapshot being flushed, then to the table's RocksDB
    database of the event's partition. Writes stay in the cache until a flush (before each offset
    commit, see :func:`store_state`):

    1. :meth:`snapshot` serialises the cache and the applied frontiers, synchronously, so it holds
       exactly the events processed so far (the agent keeps running during the awaits below);
    2. the caller waits until every output produced so far is acknowledged;
    3. :meth:`write` stores the snapshot in :data:`STEPS` order, the caller waiting for each
       step's changelog records before the next: the device states, then the message-id entries,
       then the frontier markers. Each step goes to RocksDB (one write batch per partition) and
       to the compacted changelog, same partition;
    4. :meth:`done` drops the snapshot.

    So at any crash, in RocksDB and in the changelogs alike: frontier <= message-id entries <=
    device states <= outputs. That order is what a replay relies on. A record at or below the
    frontier is skipped, and a record whose message-id entry holds its own position produces
    nothing; both are safe only if the device states already hold that record's effects (its
    content digest among them). A restarted worker's Faust recovery replays the changelog records
    sent since its previous recovery over RocksDB, so a changelog delivered in part must respect
    the order too: a frontier marker sent with the states in one step once arrived without some of
    them, and a content duplicate after the frontier met a device state without its original's
    digest (the chaos suite's worker SIGKILL, one run in many).
    Set :attr:`partition` to the current event's partition before using it.

    Message-id entries expire with their window (24 h). Their expiry index lives on disk, in the
    partition's ``seen`` database under :data:`EXPIRY_PREFIX` (sorted by expiry), written in the
    same atomic batch as the state but not to the changelog: :meth:`sweep` walks it from the oldest
    entry. (It used to be a deque in memory: ~170 bytes per event for a whole day.) A partition
    restored from the changelog by another worker has no index for the entries restored; those
    are still treated as absent once expired, they only stay on disk.

    Device states stay parsed after a flush (:meth:`snapshot`): a device's next event takes its
    state from there instead of parsing the stored JSON again. Such a clean entry is exactly what
    was stored; :meth:`get_device` takes it out of that cache (a caller that changes the state
    and does not put it back leaves the stored one in force), and the states of a partition this
    worker loses or gains are dropped (:meth:`forget`, :meth:`reset_marks`). The cache holds at
    most ``clean_bytes`` bytes of serialised state, the oldest stored going first.

    Parameters:
        devices / seen: the Faust tables (``rocksdb://`` store, raw bytes).
        outputs: the producer for the changelog records.
        clean_bytes: the budget of parsed device states kept after a flush, in bytes of their
            JSON (0: none kept; a parsed state takes ~3-4x that in memory).
    """

    def __init__(self, devices: Any, seen: Any, outputs: Outputs, clean_bytes: int = 0) -> None:
        self.devices = devices
        self.seen = seen
        self.outputs = outputs
        self.partition = 0
        self._dev: dict[str, tuple[int, dict[str, Any]]] = {}
        #: device key -> (partition, parsed state, its JSON size): stored states kept parsed
        self._clean: collections.OrderedDict[str, tuple[int, dict[str, Any], int]] = collections.OrderedDict()
        self._clean_size = 0
        self._clean_max = clean_bytes
        self._seen: dict[str, tuple[int, list[Any] | None]] = {}
        self._flushing: dict[str, Mapping[str, tuple[int, bytes | None]]] = {"devices": {}, "seen": {}}
        #: partition -> the applied frontier: every raw offset up to it is processed (no holes)
        self._frontier: dict[int, int] = {}
        #: partitions whose frontier moved since the last snapshot
        self._moved: set[int] = set()
        #: expiry index entries to put / delete at the next flush: partition -> index keys
        self._index: dict[int, list[bytes]] = {}
        self._unindex: dict[int, list[bytes]] = {}
        #: partition -> (index key to resume the sweep at, sweeps since it started at the oldest)
        self._cursor: dict[int, tuple[bytes, int]] = {}

    def frontier(self, partition: int, committed: int | None) -> int:
        """The raw offset up to which every record of ``partition`` is processed (-1: none).

        Starts at the stored marker or just below the committed offset (``None``: 0), whichever
        is higher. The marker is written with the state, after the outputs of every record up to
        it were acknowledged, so a record at or below the frontier after a restart or a re-seek
        is a replay whose effects are all stored already: the agent skips it.
        """
        f = self._frontier.get(partition)
        if f is None:
            v = self._read(self.devices, partition, APPLIED_KEY.decode())
            mark = int(v) if v is not None else -1
            f = self._frontier[partition] = max(mark, (committed or 0) - 1)
        return f

    def advance(self, partition: int, offset: int) -> None:
        """Record that ``offset`` (the frontier + 1) is processed."""
        self._frontier[partition] = offset
        self._moved.add(partition)

    def forget(self, partitions: set[int]) -> None:
        """Drop cached, unflushed state of partitions this worker lost (the new owner replays them)."""
        for cache in (self._dev, self._seen):
            for key in [k for k, (p, _) in cache.items() if p in partitions]:
                del cache[key]
        for key in [k for k, (p, _, _) in self._clean.items() if p in partitions]:
            self._clean_size -= self._clean.pop(key)[2]
        # new dicts: a flush in progress holds the old ones as its snapshot, which must stay whole
        # (its frontier markers cover the partitions' states; without them a marker was stored
        # ahead of the states it stands for)
        self._flushing = {
            name: {k: v for k, v in cache.items() if v[0] not in partitions}
            for name, cache in self._flushing.items()
        }
        for p in partitions:
            self._frontier.pop(p, None)
            self._moved.discard(p)
            self._index.pop(p, None)
            self._unindex.pop(p, None)
            self._cursor.pop(p, None)

    def reset_marks(self) -> None:
        """Re-read markers and stored states after a rebalance or a re-seek (another worker may
        have advanced them, and a table recovery rewritten them)."""
        self._frontier.clear()
        self._moved.clear()
        self._clean.clear()
        self._clean_size = 0

    @staticmethod
    def _read(table: Any, partition: int, key: str) -> bytes | None:
        return table.data._db_for_partition(partition).get(key.encode())  # type: ignore[no-any-return]

    def _stored(self, name: str, table: Any, key: str) -> Any:
        """The value stored for ``key``: from the snapshot being flushed, else from RocksDB."""
        pending = self._flushing[name].get(key)
        v = pending[1] if pending is not None else self._read(table, self.partition, key)
        return orjson.loads(v) if v is not None else None

    def get_device(self, key: str) -> dict[str, Any] | None:
        hit = self._dev.get(key)
        if hit is not None:
            return hit[1]
        clean = self._clean.pop(key, None)
        if clean is not None:
            self._clean_size -= clean[2]
            return clean[1]
        return self._stored("devices", self.devices, key)  # type: ignore[no-any-return]

    def put_device(self, key: str, value: dict[str, Any]) -> None:
        self._dev[key] = (self.partition, value)

    def get_seen(self, key: str) -> list[Any] | None:
        hit = self._seen.get(key)
        if hit is not None:
            return hit[1]
        return self._stored("seen", self.seen, key)  # type: ignore[no-any-return]

    def put_seen(self, key: str, value: list[Any]) -> None:
        self._seen[key] = (self.partition, value)

    def delete_seen(self, key: str) -> None:
        self._seen[key] = (self.partition, None)

    def index_expiry(self, expires: int, key: str) -> None:
        """Index a message-id entry of the current partition under its expiry (written at the next flush)."""
        self._index.setdefault(self.partition, []).append(
            b"%s%013d\x00%s" % (EXPIRY_PREFIX, expires, key.encode())
        )

    def sweep(self, now: int, limit: int = SWEEP_LIMIT) -> int:
        """Delete the current partition's message-id entries that expired by ``now``; returns how many.

        Visits at most ``limit`` index entries (the rest wait for the next sweeps).
        Reads the flushed index from where the last sweep stopped (from the oldest entry again
        every :data:`SWEEP_RESTART_EVERY` sweeps, for entries indexed out of order); an entry is
        deleted only if its stored expiry passed (a later duplicate may have renewed it), and its
        index key is dropped at the next flush either way.
        """
        p = self.partition
        start, runs = self._cursor.get(p, (EXPIRY_PREFIX, 0))
        if runs >= SWEEP_RESTART_EVERY:
            start, runs = EXPIRY_PREFIX, 0
        db = self.seen.data._db_for_partition(p)
        head = len(EXPIRY_PREFIX)
        done = self._unindex.setdefault(p, [])
        n = 0
        last = None
        for visited, k in enumerate(db.keys(from_key=start)):
            if not k.startswith(EXPIRY_PREFIX) or visited >= limit or int(k[head : head + 13]) > now:
                break
            key = k[head + 14 :].decode()
            v = self.get_seen(key)
            if v is not None and v[0] <= now:
                self.delete_seen(key)
                n += 1
            done.append(k)
            last = k
        self._cursor[p] = ((last + b"\x00") if last is not None else start, runs + 1)
        return n

    def snapshot(self) -> dict[str, Any]:
        """Serialise and take the cache and the moved frontiers (step 1 of a flush)."""
        snap: dict[str, Any] = {
            "marks": {p: self._frontier[p] for p in self._moved},
            "index": self._index,
            "unindex": self._unindex,
        }
        self._index, self._unindex = {}, {}
        dumps = orjson.dumps
        devices = {k: (p, dumps(v)) for k, (p, v) in self._dev.items()}
        if self._clean_max:
            self._keep_clean(devices)
        seen = {k: (p, _seen_json(v)) for k, (p, v) in self._seen.items()}
        self._flushing = {"devices": devices, "seen": seen}
        snap["devices"], snap["seen"] = devices, seen
        self._dev, self._seen = {}, {}
        self._moved.clear()
        return snap

    def _keep_clean(self, stored: dict[str, tuple[int, bytes]]) -> None:
        """Keep the parsed states of a snapshot's devices (:attr:`_dev`) within the budget."""
        clean = self._clean
        size = self._clean_size
        for k, (p, v) in self._dev.items():
            n = len(stored[k][1])
            old = clean.pop(k, None)
            if old is not None:
                size -= old[2]
            clean[k] = (p, v, n)
            size += n
        while size > self._clean_max and clean:
            size -= clean.popitem(last=False)[1][2]
        self._clean_size = size

    #: the order a snapshot is stored in, each step's changelog acknowledged before the next
    STEPS = ("devices", "seen", "marks")

    def write(self, snap: dict[str, Any], step: str) -> int:
        """Write one step of a snapshot to RocksDB and the changelogs (step 3); returns how many entries."""
        from rocksdict import WriteBatch

        if step == "marks":
            return self._write_marks(snap["marks"])
        table = self.devices if step == "devices" else self.seen
        topic = table.changelog_topic.get_topic_name()
        batches: dict[int, Any] = {}
        n = 0
        for key, (partition, value) in snap[step].items():
            k = key.encode()
            wb = batches.get(partition)
            if wb is None:
                wb = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:
                wb.delete(k)
            else:
                wb.put(k, value)
            self.outputs.send(topic, k, value, partition)
            n += 1
        if step == "seen":  # the local expiry index: same atomic batch, no changelog
            for partition, keys in snap["index"].items():
                wb = batches.setdefault(partition, WriteBatch(raw_mode=True))
                for k in keys:
                    wb.put(k, b"")
            for partition, keys in snap["unindex"].items():
                wb = batches.setdefault(partition, WriteBatch(raw_mode=True))
                for k in keys:
                    wb.delete(k)
        for partition, wb in batches.items():
            table.data._db_for_partition(partition).write(wb)
        return n

    def _write_marks(self, marks: dict[int, int]) -> int:
        topic = self.devices.changelog_topic.get_topic_name()
        for partition, mark in marks.items():
            v = str(mark).encode()
            self.devices.data._db_for_partition(partition).put(APPLIED_KEY, v)
            self.outputs.send(topic, APPLIED_KEY, v, partition)
        return len(marks)

    def done(self) -> None:
        """Drop the flushed snapshot (step 4): reads go to RocksDB again."""
        self._flushing = {"devices": {}, "seen": {}}


def _seen_json(entry: list[Any] | None) -> bytes | None:
    """The stored JSON of a message-id entry ``[expires, partition, offset]`` (None: deleted).

    Formatted directly, byte for byte what :func:`orjson.dumps` gives for three integers: orjson
    starts each output in a fresh 1 KB buffer, and for the ~15,000 entries of one flush that cost
    ~1.5 us each on these machines, against ~0.3 us here.
    """
    if entry is None:
        return None
    if len(entry) == 3:
        a, b, c = entry
        if a.__class__ is int and b.__class__ is int and c.__class__ is int:
            return b"[%d,%d,%d]" % (a, b, c)
    return orjson.dumps(entry)


async def store_state(state: TableState, outputs: Any) -> None:
    """Store what the agent processed so far, before Faust commits offsets (see :class:`TableState`).

    Outputs first, then the state that says they exist, step by step, then the offsets (Faust
    chose them before calling this): a crash at any point leaves
    offsets <= frontier <= message-id entries <= device states <= outputs.
    """
    snap = state.snapshot()
    await outputs.flush()
    for step in TableState.STEPS:
        state.write(snap, step)
        await outputs.flush()
    state.done()


class FxFeed:
    """Reads the compacted FX topic from the beginning in a thread; the agent drains :attr:`queue`.

    Parameters:
        kafka: connection settings.
        topic: the FX rates topic.
        codec: the ``fx_rates`` codec.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, codec: Codec) -> None:
        self.kafka = kafka
        self.topic = topic
        self.codec = codec
        self.queue: collections.deque[tuple[int, dict[str, float]]] = collections.deque()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fx-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def drain(self, table: RateTable) -> None:
        q = self.queue
        while q:
            hour, rates = q.popleft()
            table.set_hour(hour, rates)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        conf = self.kafka.client_config() | {
            "group.id": "trackflow-fx-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        consumer = Consumer(conf)
        try:
            md = consumer.list_topics(self.topic, timeout=10)
            parts = sorted(md.topics[self.topic].partitions) if self.topic in md.topics else []
            if not parts or md.topics[self.topic].error is not None:
                log.warning("FX topic %s not found: revenue will have fx_status=no_rate", self.topic)
                self.ready.set()
                return
            tps = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts]
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] for p in parts
            }
            consumer.assign(tps)
            pending = {p for p, end in ends.items() if end > 0}
            if not pending:
                self.ready.set()
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                value = msg.value()
                if value:
                    try:
                        rec = self.codec.decode(value, self.topic)
                        self.queue.append((parse_hour(rec["hour"]), dict(rec["rates"])))
                    except Exception:
                        log.exception("skipping bad FX record at offset %s", msg.offset())
                p = msg.partition()
                off = msg.offset() or 0
                if p in pending and off + 1 >= ends[p]:
                    pending.discard(p)
                    if not pending:
                        log.info("FX topic %s read to its end", self.topic)
                        self.ready.set()
        finally:
            consumer.close()
            self.ready.set()


def ensure_topics(kafka: KafkaSettings, topics: Topics) -> int:
    """Create missing pipeline topics (FX compacted); return the raw topic's partition count."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(kafka.client_config())
    md = admin.list_topics(timeout=10)
    new = []
    for name in topics.all():
        if name not in md.topics:
            cfg = {"cleanup.policy": "compact"} if name == topics.fx else {}
            new.append(
                NewTopic(
                    name, kafka.partitions if name != topics.fx else 1, kafka.replication_factor, config=cfg
                )
            )
    if new:
        for fut in admin.create_topics(new).values():
            try:
                fut.result()
            except Exception as exc:  # created concurrently by another process
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    deadline = time.monotonic() + 15
    while True:  # metadata of freshly created topics can lag a moment
        md = admin.list_topics(timeout=10)
        raw = md.topics.get(topics.raw)
        if raw is not None and raw.error is None and raw.partitions:
            return len(raw.partitions)
        if time.monotonic() > deadline:
            raise PipelineError(f"topic {topics.raw} is not available")
        time.sleep(0.2)


def committed_positions(
    consumer: Any, topic: str, partitions: list[int], attempts: int = COMMITTED_ATTEMPTS
) -> dict[int, tuple[int, bool]]:
    """Where the group of a confluent ``consumer`` resumes on ``partitions`` of ``topic``.

    Returns ``{partition: (offset, committed)}``: the committed offset, or the low watermark
    (``committed=False``) where the group never committed. A partition the group coordinator still
    answers with an error after ``attempts`` reads (:func:`trackflow.offsets.read_committed`) is
    left out: taken for never committed, it used to be resumed at its low watermark, and
    :func:`init_offsets` committed that over the group's real offset. The callers leave such a
    partition where the consumer has it. Raises the last error if no read answered at all.
    """
    from confluent_kafka import TopicPartition

    offsets, missing = read_committed(consumer, [(topic, p) for p in partitions], attempts)
    if missing:
        log.warning(
            "no committed offset of %s for partitions %s after %d reads: left where the consumer has them",
            topic,
            [p for _, p in missing],
            attempts,
        )
    out: dict[int, tuple[int, bool]] = {}
    for (_, p), offset in offsets.items():
        if offset >= 0:
            out[p] = (offset, True)
        else:
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = (low, False)
    return out


def group_client(kafka: KafkaSettings, group: str) -> Any:
    """A confluent consumer in ``group`` that never joins it (for committed offsets and commits)."""
    from confluent_kafka import Consumer

    return Consumer(kafka.client_config() | {"group.id": group, "enable.auto.commit": False})


def init_offsets(kafka: KafkaSettings, group: str, topic: str) -> int:
    """Commit the earliest offset for partitions of ``topic`` the group has never committed.

    Faust can start a fresh group at the end of a partition when a rebalance happens before its
    first commit, skipping events that arrived meanwhile. Committing the low watermark first
    makes a new deployment start from the beginning. Fails harmlessly (returns 0) when the group
    already has members. Returns how many partitions were initialised.
    """
    from confluent_kafka import KafkaException, TopicPartition

    c = group_client(kafka, group)
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        todo = [
            TopicPartition(topic, p, off)
            for p, (off, done) in committed_positions(c, topic, parts).items()
            if not done
        ]
        if todo:
            c.commit(offsets=todo, asynchronous=False)
        return len(todo)
    except KafkaException as exc:
        log.info("offsets of %s not initialised (%s); the group is already running", group, exc)
        return 0
    finally:
        c.close()


class Watermarks:
    """The broker's low and high watermarks of the raw topic's partitions, read directly.

    Faust's ``consumer.highwater`` is what the last fetch response said: a consumer that stopped
    fetching keeps reporting the value of its last fetch, so a wedged fetch loop looks caught up.
    One long-lived client, shared by the worker's timers (librdkafka's watermark query is
    thread-safe; creating the client makes no connection yet).

    Parameters:
        kafka: connection settings.
        topic: the raw topic.
    """

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._topic = topic
        self._client = group_client(kafka, "trackflow-watermarks")

    def get(self, partitions: list[int], timeout: float = 5.0) -> dict[int, tuple[int, int]] | None:
        """``{partition: (low, high)}``, or ``None`` when the broker does not answer in time."""
        from confluent_kafka import KafkaException, TopicPartition

        get = self._client.get_watermark_offsets
        try:
            return {p: get(TopicPartition(self._topic, p), timeout=timeout) for p in partitions}
        except KafkaException as exc:
            log.info("raw watermarks unavailable: %s", exc)
            return None


def _resume_positions(kafka: KafkaSettings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    c = group_client(kafka, group)
    try:
        return {p: off for p, (off, _done) in committed_positions(c, topic, partitions).items()}
    finally:
        c.close()


def build_app(
    *,
    kafka: KafkaSettings | None = None,
    settings: PipelineSettings | None = None,
    core: CoreSettings | None = None,
    partitions: int | None = None,
) -> Any:
    """Build the Faust app of one worker (topics created if missing).

    Parameters:
        kafka / settings / core: settings (default: from the environment).
        partitions: partitions of the raw topic (default: read from the broker).
    """
    import faust

    from trackflow.apps import open_registry

    kafka = kafka or KafkaSettings()
    settings = settings or PipelineSettings()
    core = core or CoreSettings()
    topics = kafka.topics
    if partitions is None:
        partitions = ensure_topics(kafka, topics)
    app_id = app_id_for(kafka.topic_prefix)
    init_offsets(kafka, app_id, topics.raw)
    datadir = Path(core.home).resolve() / "pipeline" / app_id / settings.worker_name
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{h.strip()}" for h in kafka.kafka_bootstrap.split(",")],
        store="rocksdb://",
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_replication_factor=kafka.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10_000,
        broker_commit_interval=settings.commit_interval_s,
        # a SIGKILLed worker's partitions move after this, not Faust's default 60 s
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        producer_linger_ms=20,
        producer_max_batch_size=1_000_000,
        stream_buffer_maxsize=8192,
        consumer_max_fetch_size=MAX_FETCH_BYTES,
        table_standby_replicas=0,
    )
    fast_loop = settings.fast_fetch_loop and fastpath_supported()
    raw_topic = app.topic(
        topics.raw,
        key_serializer="raw",
        value_serializer="raw",
        # the fast fetch loop queues runs of records, not records (see pipeline.fastpath)
        maxsize=DIRECT_QUEUE_RUNS if fast_loop else None,
    )
    devices, seen = (
        app.Table(
            name,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            options=settings.rocksdb_options(),  # a fresh dict each: Faust's Store pops keys from it
        )
        for name in ("devices", "seen")
    )

    registry = open_registry()
    rates = RateTable()
    outputs = Outputs(kafka)
    state = TableState(devices, seen, outputs, settings.state_cache_mb * 1024 * 1024)
    from trackflow.gdpr import privacy_from_env

    proc = Processor(settings, registry.get, rates, state, privacy_from_env())
    raw_codec = fast(codec_from_settings("raw_event"))
    enriched_codec = fast(codec_from_settings("enriched_event"))
    invalid_codec = fast(codec_from_settings("invalid_event"))
    session_codec = fast(codec_from_settings("session"))
    fx = FxFeed(kafka, topics.fx, codec_from_settings("fx_rates"))
    open_sessions: dict[str, tuple[int, int]] = {}  # device key -> (partition, idle deadline ms)
    positions: dict[int, int] = {}  # partition -> last offset processed (for the counters log)
    next_sweep: dict[int, int] = {}  # partition -> event clock (ms) of its next expiry sweep
    scan = {"pending": True}  # look for open sessions in the stored states (at start, after a rebalance)
    watchdog = StallWatchdog(settings.stall_s, settings.stall_restart_s)
    watermarks = Watermarks(kafka, topics.raw)
    holes: dict[Any, int] = {}  # raw partition -> first record the agent has not seen

    def emit(res: Result) -> None:
        send = outputs.send
        for k, rec in res.enriched:
            send(topics.enriched, k.encode(), enriched_codec.encode(rec, topics.enriched))
        for k, rec in res.invalid:
            send(topics.invalid, k.encode(), invalid_codec.encode(rec, topics.invalid))
        for k, rec in res.sessions:
            send(topics.sessions, k.encode(), session_codec.encode(rec, topics.sessions))

    faust_flush = app.producer.flush

    flush_lock = asyncio.Lock()

    async def flush_before_commit() -> None:
        try:
            async with flush_lock:
                await store_state(state, outputs)
        except PipelineError:
            log.critical("output delivery failed permanently; exiting so no offset is committed past it")
            logging.shutdown()
            os._exit(70)
        await faust_flush()

    app.producer.flush = flush_before_commit  # type: ignore[method-assign]  # Faust flushes it before commits

    def processed_end(tp: Any) -> int | None:
        """The offset after the last raw record of ``tp`` processed in order; ``None`` for a
        partition no longer assigned (no cap), -1 when unreadable (the commit waits)."""
        c = cast(Any, app.consumer)
        if tp not in c.assignment():
            return None  # a revoked partition: Faust discards its commit anyway
        try:
            return state.frontier(tp.partition, c._committed_offset.get(tp)) + 1
        except Exception:  # its database closing: hold this commit, the next one decides
            log.warning("frontier of %s unreadable: its commit waits", tp, exc_info=True)
            return -1

    if fast_loop:
        install_fast_drain(app.consumer, direct_topics=frozenset({topics.raw}))
    # before the first assignment: its seek must already be the guarded one
    sought = _guard_offsets(
        app.consumer,
        topics.raw,
        lambda parts: _resume_positions(kafka, app_id, topics.raw, parts),
        processed_end,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def start_fx() -> None:
        fx.start()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(_app: Any, revoked: set[Any], **_: Any) -> None:
        async with flush_lock:  # a flush that started meanwhile (the commit timer) ends first
            state.forget({tp.partition for tp in revoked if tp.topic == topics.raw})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(_app: Any, assigned: set[Any], **_: Any) -> None:
        state.reset_marks()
        watchdog.reset()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_rebalanced(_app: Any, **_: Any) -> None:
        scan["pending"] = True  # the tables are recovered: find the open sessions of the partitions now held
        log.info("rebalance complete: looking for open sessions in the stored device states")

    @app.agent(raw_topic, concurrency=1)
    async def pipeline_agent(stream: Any) -> None:
        committed = cast(
            Any, app.consumer
        )._committed_offset  # Faust's: the next offset to read, per partition
        if not fx.ready.is_set():
            await asyncio.to_thread(fx.ready.wait, settings.fx_wait_s)
        frontier, advance, process_bytes = state.frontier, state.advance, proc.process_bytes
        counters = proc.counters
        async for batch in _with_test_wedge(record_batches(stream)):
            if fx.queue:
                fx.drain(rates)
            now = int(time.time() * 1000)  # the wall clock, once per batch (at most ~40 ms apart)
            for tp, records in batch:  # runs of one partition's records, in order (no await inside)
                partition = state.partition = tp.partition
                topic = tp.topic
                done = frontier(partition, committed.get(tp))
                sweep_at = next_sweep.get(partition, 0)
                for rec in records:
                    offset = rec.offset
                    if offset <= done:
                        counters["replay_skipped"] += 1  # its state and outputs are stored already
                        continue
                    if offset > done + 1:
                        # the consumer skipped records (Faust/aiokafka after a seek or a rebalance):
                        # process strictly in order, so the state never gets ahead of the frontier;
                        # refill_holes seeks back to the first missing record
                        counters["hole_skipped"] += 1
                        holes.setdefault(tp, done + 1)
                        continue
                    advance(partition, offset)
                    done = offset
                    res = process_bytes(raw_codec, rec.value, pos=(partition, offset), topic=topic, now=now)
                    emit(res)
                    dkey = res.device_key
                    if dkey is not None:
                        if res.session_open:
                            open_sessions[dkey] = (partition, res.session_deadline)
                        else:
                            open_sessions.pop(dkey, None)
                    if res.seen_key is not None and res.seen_expires is not None:
                        state.index_expiry(res.seen_expires, res.seen_key)
                    clock = res.clock
                    if clock and clock >= sweep_at:
                        sweep_at = next_sweep[partition] = clock + 1000  # once per second of event time
                        state.sweep(clock)
                positions[partition] = records[-1].offset

    @app.timer(interval=settings.session_timer_interval_s)  # type: ignore[untyped-decorator]
    async def close_idle_sessions() -> None:
        now = int(time.time() * 1000)
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topics.raw}
        if scan["pending"]:
            # once at start and after each rebalance, not periodically: the scan parses every stored
            # device state on the event loop (seconds at a million devices)
            scan["pending"] = False
            t0 = time.monotonic()
            _rebuild_index(devices, open_sessions, actives)
            log.info(
                "%d open sessions known after scanning the stored states (%.2f s)",
                len(open_sessions),
                time.monotonic() - t0,
            )
        for dkey, (part, deadline) in list(open_sessions.items()):
            if deadline >= now:
                continue
            if part not in actives:
                open_sessions.pop(dkey, None)
                continue
            state.partition = part
            closed = proc.close_idle(dkey, now)
            if closed is not None:
                k, rec = closed
                outputs.send(topics.sessions, k.encode(), session_codec.encode(rec, topics.sessions))
            open_sessions.pop(dkey, None)  # closed now, or already closed: the next event re-adds it

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def refill_holes() -> None:
        if not holes or app.rebalancing:
            return
        c = cast(Any, app.consumer)
        todo = {tp: holes.pop(tp) for tp in list(holes)}
        assigned = c.assignment()
        todo = {tp: start for tp, start in todo.items() if tp in assigned}
        if not todo:
            return
        marks = await asyncio.to_thread(watermarks.get, sorted(tp.partition for tp in todo), 10.0)
        if marks is None:  # the broker does not answer: try again at the next tick
            for tp, hole in todo.items():
                holes[tp] = min(hole, holes.get(tp, hole))
            return
        lows = {p: low for p, (low, _high) in marks.items()}
        for tp, hole in todo.items():
            start = max(state.frontier(tp.partition, c._committed_offset.get(tp)) + 1, hole)
            if lows.get(tp.partition, 0) > start:
                log.error(
                    "raw %s: records %s..%s expired before processing", tp, start, lows[tp.partition] - 1
                )
                start = lows[tp.partition]
                state.advance(tp.partition, start - 1)
            # forget acknowledgements of the records skipped since: they are read again
            acked = [o for o in c._acked[tp] if o < start]
            c._acked[tp] = acked
            c._acked_index[tp] = set(acked)
            await _seek_raw(c, tp, start)
            log.info("raw %s: records skipped by the consumer, reading again from %s", tp, start)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def stall_watchdog() -> None:
        if settings.stall_s <= 0 and settings.stall_restart_s <= 0:
            return
        c = cast(Any, app.consumer)
        raw = [tp for tp in c.assignment() if tp.topic == topics.raw]
        marks = await asyncio.to_thread(watermarks.get, sorted(tp.partition for tp in raw))
        stalled = watchdog.check(app, topics.raw, {p: high for p, (_low, high) in (marks or {}).items()})
        reason = watchdog.restart_reason()
        if reason and marks is not None:  # never while the broker is away: the restart would wait for it
            restart_in_place(f"pipeline worker wedged: {reason}", _dump_state)
        if not stalled:
            return
        log.warning(
            "raw partitions %s: committed offsets stuck below the records available for %.0f s "
            "(last processed %s): seeking every partition back to its committed offset",
            sorted(stalled),
            settings.stall_s,
            {p: positions.get(p) for p in sorted(stalled)},
        )
        proc.counters["stall_reseeks"] += 1
        state.reset_marks()
        log.warning(
            "stall diagnostics: committed %s read %s paused %s flow %s",
            {tp.partition: c._committed_offset.get(tp) for tp in raw},
            {tp.partition: c._read_offset.get(tp) for tp in raw},
            sorted(tp.partition for tp in c._paused_partitions if tp.topic == topics.raw),
            (c.flow_active, app.flow_control.is_active()),
        )
        targets = await asyncio.to_thread(_resume_positions, kafka, app_id, topics.raw, sorted(stalled))
        for tp in raw:
            if tp.partition in targets:
                off = targets[tp.partition]
                c._committed_offset[tp] = off or None  # Faust's convention: 0 is None
                if sought is not None:
                    sought[tp] = off
                await _seek_raw(c, tp, off)
        watchdog.sought(set(targets))

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def report_counters() -> None:
        log.info("pipeline counters: %s positions: %s", dict(proc.counters), dict(sorted(positions.items())))

    return app


class StallWatchdog:
    """Notices raw partitions whose committed offset stays below the records available, and a
    worker wedged beyond what re-reading can repair.

    Faust's fetch loop can lose a record on its way to the agent (it marks it read before the
    agent has it, and drops the agent's buffer at a rebalance). With :func:`_guard_offsets`
    nothing is committed past such a hole, so the group's lag stops shrinking. :meth:`check`
    returns the partitions whose high watermark is above the committed offset and whose
    committed offset has not moved for ``stall_s``; the worker then seeks back to the committed
    offsets, which is safe: records up to the applied frontier are skipped, later ones are
    replays the state and the sink recognise. A partition is sought back at most once per
    ``stall_s``.

    Some wedges a seek cannot repair: after a broker restart Faust and aiokafka have been seen
    to stop fetching for good (faust-streaming issues #175 and #523), or to stay in a rebalance.
    :meth:`restart_reason` names such a state once it has lasted ``restart_s``: a partition
    stuck since its first detection, or a rebalance (table recovery included) whose recovery
    offsets have not moved. The worker then restarts in place (:func:`trackflow.runtime.restart_in_place`).

    Parameters:
        stall_s: how long a partition may have uncommitted records without its commit moving.
        restart_s: how long a stall or a rebalance may make no progress at all (0: never).
    """

    def __init__(self, stall_s: float, restart_s: float = 0.0) -> None:
        self.stall_s = stall_s
        self.restart_s = restart_s
        #: raw partition -> (committed offset, when it was first seen at that offset with records above)
        self._since: dict[int, tuple[int, float]] = {}
        #: raw partition -> when it was last sought back
        self._sought: dict[int, float] = {}
        #: (recovery progress, since when) while the app is rebalancing
        self._rebalance: tuple[tuple[int, ...], float] | None = None

    def reset(self) -> None:
        """Forget everything (a new assignment)."""
        self._since.clear()
        self._sought.clear()
        self._rebalance = None

    def sought(self, partitions: set[int]) -> None:
        """The worker sought ``partitions`` back to their committed offsets just now."""
        now = time.monotonic()
        self._sought.update(dict.fromkeys(partitions, now))

    def check(self, app: Any, topic: str, highs: dict[int, int] | None = None) -> set[int]:
        """The stalled partitions to seek back now.

        ``highs`` are the broker's high watermarks (:class:`Watermarks`); without one for a
        partition, the consumer's last fetched high watermark is used.
        """
        now = time.monotonic()
        if app.rebalancing:
            self._since.clear()
            progress = _recovery_progress(app)
            if self._rebalance is None or self._rebalance[0] != progress:
                self._rebalance = (progress, now)
            return set()
        self._rebalance = None
        if self.stall_s <= 0:
            self._since.clear()
            return set()
        consumer = app.consumer
        stalled = set()
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            p = tp.partition
            high = max(consumer.highwater(tp) or 0, (highs or {}).get(p, 0))
            done = consumer._committed_offset.get(tp) or 0
            if done >= high:
                self._since.pop(p, None)
                continue
            seen = self._since.get(p)
            if seen is None or seen[0] != done:
                self._since[p] = (done, now)
            elif now - seen[1] >= self.stall_s and now - self._sought.get(p, -1e18) >= self.stall_s:
                stalled.add(p)
        return stalled

    def restart_reason(self) -> str | None:
        """Why the worker should restart, after :meth:`check`; ``None`` while it need not."""
        if self.restart_s <= 0:
            return None
        now = time.monotonic()
        if self._rebalance is not None and now - self._rebalance[1] >= self.restart_s:
            return f"a rebalance made no progress for {now - self._rebalance[1]:.0f} s"
        stuck = {p: round(now - t) for p, (_, t) in self._since.items() if now - t >= self.restart_s}
        if stuck:
            return f"raw partitions made no progress despite re-reads (seconds stuck: {stuck})"
        return None


def _dump_state(file: IO[str]) -> None:
    """Every thread's stack and every asyncio task (what mode's Worker prints on SIGUSR1)."""
    from mode.utils.logging import cry

    cry(file=file)


def _with_test_wedge(batches: Any) -> Any:
    """Test hook: with ``TRACKFLOW_PIPELINE_TEST_WEDGE=FILE`` the agent stops for good once it has
    been handed 200 events (at the end of that batch), once: only while FILE does not exist yet (it
    is created), so the restarted worker runs normally. Stands in for Faust's fetch loop stopping
    after a broker restart. Without it, ``batches`` as they are (nothing added to the agent's loop)."""
    marker = os.environ.get("TRACKFLOW_PIPELINE_TEST_WEDGE")
    if not marker:
        return batches
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return batches

    async def wedged() -> Any:
        n = 0
        async for batch in batches:
            if n >= 200:
                log.error("TRACKFLOW_PIPELINE_TEST_WEDGE: the agent stops here for good")
                await asyncio.Event().wait()
            n += sum(len(records) for _, records in batch)
            yield batch

    return wedged()


def _recovery_progress(app: Any) -> tuple[int, ...]:
    """A value that changes while Faust's table recovery reads its changelogs."""
    recovery = getattr(getattr(app, "tables", None), "recovery", None)
    if recovery is None:
        return ()
    return (
        sum(v or 0 for v in getattr(recovery, "active_offsets", {}).values()),
        sum(v or 0 for v in getattr(recovery, "standby_offsets", {}).values()),
    )


async def _seek_raw(consumer: Any, tp: Any, offset: int) -> None:
    """Seek ``tp`` to ``offset`` on aiokafka's own thread and let Faust's fetch loop accept it.

    Faust's ``seek`` calls aiokafka from the caller's thread, which races with a fetch in
    progress (seen as a KeyError in aiokafka's fetcher that crashed it).
    """
    thread = getattr(consumer, "_thread", None)
    if thread is None:  # a stand-in without a consumer thread (unit tests)
        await consumer._seek(tp, offset)
    else:
        await thread.call_thread(lambda: thread._ensure_consumer().seek(tp, offset))
    consumer._read_offset[tp] = offset or None  # what Faust's own seek sets


def _commit_to_frontier(committed: int, processed: int, acked: list[int], index: set[int]) -> int | None:
    """The next commit of a raw partition: ``processed`` (the offset after the last record the
    agent processed in order) when it is past ``committed``, else ``None``. The acknowledgements
    below it are dropped; the ones past it are kept (records skipped past a hole, read again later).

    Every record below ``processed`` was processed by the agent in offset order (or is covered by
    the frontier marker stored with its effects), and the flush before this commit stores the
    effects of all of them, so that is what decides, not Faust's acknowledgements. These can
    miss a record the agent processed: after a rebalance a commit was seen held for 30 s, until
    the stall watchdog sought back, at one offset the agent had processed in order but Faust
    never acknowledged (2 runs in 15 of the two-worker benchmark, 2026-11-24).
    """
    if acked:
        acked.sort()
        below = bisect.bisect_left(acked, max(processed, committed))
        if below:
            index.difference_update(acked[:below])
            del acked[:below]
    return processed if processed > committed else None


def _guard_offsets(
    consumer: Any,
    topic: str,
    resume: Callable[[list[int]], dict[int, int]] | None = None,
    processed: Callable[[Any], int | None] | None = None,
) -> dict[Any, int] | None:
    """Make Faust's commit bookkeeping strict for the raw topic: never commit past an unseen record.

    - Faust treats a jump in offsets as a gap to acknowledge (right for compacted or
      transactional topics). The raw topic has neither, so a jump there means records were
      skipped (a stale fetch after a re-seek); acknowledging them would commit past records no
      agent saw. The gap is logged and left unacknowledged.
    - Faust's next-commit computation accepts acknowledged offsets that start one past the
      committed offset (and any start when the committed offset is 0, which it keeps as
      ``None``). Here the acknowledged run must start exactly at the committed offset.

    - aiokafka's ``seek_to_committed`` (Faust's seek after every rebalance) does not seek a
      partition whose committed offset is 0. With ``resume`` (partitions -> the group's
      committed offset or the low watermark), such raw partitions are sought explicitly.

      Until that seek has happened in an assignment, nothing of the partition is committed
      (records fetched before it come from a stale position, and committing them moved the
      group's offset backwards after a restart).

    - With ``processed`` (raw partition -> the offset after the last record the agent processed in
      order, or ``None``), a partition for which it is known commits exactly there
      (:func:`_commit_to_frontier`), whatever was acknowledged. The agent acknowledges the records
      it skips past a hole too (Faust acknowledges every record an agent iterates over); the seek
      back forgets those, but records still buffered from before the seek are skipped and
      acknowledged again, and their run could reach the commit before the re-read processed them.
      And Faust can miss the acknowledgement of a record the agent did process, which held a
      commit until the stall watchdog sought back. ``None`` (a revoked partition) leaves the
      acknowledged run to decide.

    Either way commits stop before a hole, and the :class:`StallWatchdog` seeks back to read it.
    Returns the per-partition sought offsets (the watchdog updates them when it seeks); ``None``
    without ``resume``.
    """
    from faust.utils.functional import consecutive_numbers

    add_gap = consumer._add_gap
    new_offset = consumer._new_offset
    blocked: dict[Any, tuple[int, int]] = {}
    #: raw partition -> the offset it was sought to in the current assignment (no seek guard
    #: without ``resume``: Faust's committed offsets rule)
    known: dict[Any, int] | None = None if resume is None else {}

    async def guarded_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic == topic:
            log.warning("offset gap %s..%s on %s: not acknowledged, will re-read", offset_from, offset_to, tp)
            return
        await add_gap(tp, offset_from, offset_to)

    def strict_new_offset(tp: Any) -> int | None:
        if tp.topic != topic:
            return new_offset(tp)  # type: ignore[no-any-return]
        if known is not None and tp not in known:
            # not sought yet in this assignment: records fetched before the seek come from a
            # stale position, and committing them could move the group's offset backwards
            return None
        # Faust stores a committed offset of 0 as None
        committed = max(known[tp] if known else 0, consumer._committed_offset.get(tp) or 0)
        acked = consumer._acked[tp]
        index = consumer._acked_index[tp]
        cap = processed(tp) if processed is not None else None
        if cap is not None:
            return _commit_to_frontier(committed, cap, acked, index)
        if not acked:
            return None
        acked.sort()
        stale = 0
        while stale < len(acked) and acked[stale] < committed:
            stale += 1
        if stale:  # re-acknowledged after a seek back: already covered
            index.difference_update(acked[:stale])
            del acked[:stale]
        if not acked or acked[0] != committed:
            if acked and blocked.get(tp) != (committed, acked[0]):
                blocked[tp] = (committed, acked[0])
                log.warning("commit of %s held at %s: offsets from %s acknowledged", tp, committed, acked[0])
            return None
        run = next(consecutive_numbers(acked))
        end = int(run[-1]) + 1
        taken = end - committed  # the run starts at the committed offset, one record per offset
        index.difference_update(acked[:taken])
        del acked[:taken]
        return end

    pending_acks = consumer._filter_tps_with_pending_acks

    def committable_tps(topics: Any = None) -> Any:
        # Faust commits only partitions holding acknowledgements; the agent acknowledges nothing
        # (pipeline.fastpath.record_batches), so with ``processed`` every assigned raw partition
        # is a candidate and its frontier decides
        tps = set(pending_acks(topics))
        if processed is not None:
            tps.update(
                tp
                for tp in consumer.assignment()
                if tp.topic == topic and (topics is None or tp in topics or tp.topic in topics)
            )
        return iter(tps)

    consumer._add_gap = guarded_gap
    consumer._new_offset = strict_new_offset
    consumer._filter_tps_with_pending_acks = committable_tps
    if resume is not None and known is not None:
        seek_to_committed = consumer.seek_to_committed

        async def seek_raw_to_committed() -> Any:
            # aiokafka's seek_to_committed skips a committed offset of 0 and leaves such a
            # partition wherever its fetch position was (seen: past records produced meanwhile)
            offsets = dict(await seek_to_committed())
            todo = sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)
            if todo:
                # the broker's committed offsets (or low watermarks), read directly: seek every
                # raw partition there on aiokafka's thread, whatever aiokafka decided
                targets = await asyncio.to_thread(resume, todo)
                for tp in list(consumer.assignment()):
                    if tp.topic == topic and tp.partition in targets:
                        await _seek_raw(consumer, tp, targets[tp.partition])
                        offsets[tp] = targets[tp.partition]
                log.info("raw partitions sought to %s", dict(sorted(targets.items())))
            known.clear()
            known.update({tp: int(off or 0) for tp, off in offsets.items() if tp.topic == topic})
            return offsets

        consumer.seek_to_committed = seek_raw_to_committed
    return known


def _rebuild_index(devices: Any, open_sessions: dict[str, tuple[int, int]], actives: set[int]) -> None:
    """Find open sessions in the table (after start or a rebalance): those neither finalized nor
    already closed by the timer (``tc``, see :meth:`pipeline.process.Processor.close_idle`)."""
    try:
        store = devices.data
        for partition, db in list(getattr(store, "_dbs", {}).items()):
            if partition not in actives:
                continue
            for k, v in db.items():
                try:
                    st = orjson.loads(v)
                    s = st.get("s")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                if s and not s.get("x") and st.get("tc") != s.get("id"):
                    key = k.decode() if isinstance(k, bytes) else str(k)
                    open_sessions.setdefault(key, (partition, 0))
    except Exception:
        log.exception("could not scan the devices table for open sessions")


def run_worker(loglevel: str = "info") -> None:
    """Start a worker in the foreground until SIGINT/SIGTERM."""
    import faust

    app = build_app()
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    tune_gc()  # before the event loop runs: a full collection never delays heartbeats
    worker.execute_from_commandline()
