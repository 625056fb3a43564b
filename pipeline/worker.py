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
import collections
import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.exceptions import PipelineError
from pipeline.fx import RateTable, parse_hour
from pipeline.process import Processor, Result
from pipeline.settings import PipelineSettings
from schemas import Codec, codec_from_settings
from schemas.fastcodec import fast
from trackflow.config import CoreSettings, KafkaSettings, Topics

log = logging.getLogger("trackflow.pipeline")


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a streaming process.

    Faust allocates several asyncio tasks and futures per message, so the default thresholds run
    a young collection every few messages and full collections that walk every long-lived
    object (Faust, aiokafka, the state cache). Objects alive after start-up are moved out of the
    collector's reach (:func:`gc.freeze`) and collections run less often. Called once, before the
    event loop starts.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


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

    def __init__(self, kafka: KafkaSettings) -> None:
        from confluent_kafka import Producer

        self.errors: list[str] = []
        self._producer = Producer(
            kafka.client_config()
            | {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 10,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 1_000_000,
                "delivery.report.only.error": True,
                # one producer-wide callback: no per-message callback object to carry through librdkafka
                "on_delivery": self._on_delivery,
            }
        )
        self.sent = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

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
        """Wait until everything sent so far is acknowledged; raise if anything failed."""
        remaining = await asyncio.to_thread(self._producer.flush, 120)
        if remaining or self.errors:
            errors, self.errors = self.errors[:3], []
            raise PipelineError(f"{remaining} records undelivered; delivery errors: {errors}")


class TableState:
    """:class:`pipeline.process.StateStore` over two Faust tables, with a write-back cache.

    Reads go to the cache, then to the table's RocksDB database of the event's partition.
    Writes stay in the cache until :meth:`flush` (run before each offset commit) puts them into
    RocksDB and sends them to the tables' compacted changelogs with the same partition, so the
    state Faust recovers after a crash is at least as new as the committed offsets.
    Set :attr:`partition` to the current event's partition before using it.

    Parameters:
        devices / seen: the Faust tables (``rocksdb://`` store, raw bytes).
        outputs: the producer for the changelog records.
    """

    def __init__(self, devices: Any, seen: Any, outputs: Outputs) -> None:
        self.devices = devices
        self.seen = seen
        self.outputs = outputs
        self.partition = 0
        self._dev: dict[str, tuple[int, dict[str, Any]]] = {}
        self._seen: dict[str, tuple[int, list[Any] | None]] = {}

    @staticmethod
    def _read(table: Any, partition: int, key: str) -> bytes | None:
        return table.data._db_for_partition(partition).get(key.encode())  # type: ignore[no-any-return]

    def get_device(self, key: str) -> dict[str, Any] | None:
        hit = self._dev.get(key)
        if hit is not None:
            return hit[1]
        v = self._read(self.devices, self.partition, key)
        return orjson.loads(v) if v is not None else None  # type: ignore[no-any-return]

    def put_device(self, key: str, value: dict[str, Any]) -> None:
        self._dev[key] = (self.partition, value)

    def get_seen(self, key: str) -> list[Any] | None:
        hit = self._seen.get(key)
        if hit is not None:
            return hit[1]
        v = self._read(self.seen, self.partition, key)
        return orjson.loads(v) if v is not None else None  # type: ignore[no-any-return]

    def put_seen(self, key: str, value: list[Any]) -> None:
        self._seen[key] = (self.partition, value)

    def delete_seen(self, key: str) -> None:
        self._seen[key] = (self.partition, None)

    def flush(self) -> int:
        """Write cached entries to RocksDB and the changelogs; returns how many."""
        n = 0
        for table, cache in ((self.devices, self._dev), (self.seen, self._seen)):
            topic = table.changelog_topic.get_topic_name()
            for key, (partition, value) in cache.items():
                k = key.encode()
                db = table.data._db_for_partition(partition)
                if value is None:
                    db.delete(k)
                    self.outputs.send(topic, k, None, partition)
                else:
                    v = orjson.dumps(value)
                    db.put(k, v)
                    self.outputs.send(topic, k, v, partition)
                n += 1
            cache.clear()
        return n


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


def init_offsets(kafka: KafkaSettings, group: str, topic: str) -> int:
    """Commit the earliest offset for partitions of ``topic`` the group has never committed.

    Faust can start a fresh group at the end of a partition when a rebalance happens before its
    first commit, skipping events that arrived meanwhile. Committing the low watermark first
    makes a new deployment start from the beginning. Fails harmlessly (returns 0) when the group
    already has members. Returns how many partitions were initialised.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer(kafka.client_config() | {"group.id": group, "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        todo = []
        for tp in committed:
            if tp.offset < 0:
                low, _high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                todo.append(TopicPartition(topic, tp.partition, low))
        if todo:
            c.commit(offsets=todo, asynchronous=False)
        return len(todo)
    except KafkaException as exc:
        log.info("offsets of %s not initialised (%s); the group is already running", group, exc)
        return 0
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
        table_standby_replicas=0,
    )
    raw_topic = app.topic(topics.raw, key_serializer="raw", value_serializer="raw")
    devices = app.Table("devices", partitions=partitions, key_type=bytes, value_type=bytes)
    seen = app.Table("seen", partitions=partitions, key_type=bytes, value_type=bytes)

    registry = open_registry()
    rates = RateTable()
    outputs = Outputs(kafka)
    state = TableState(devices, seen, outputs)
    from trackflow.gdpr import privacy_from_env

    proc = Processor(settings, registry.get, rates, state, privacy_from_env())
    raw_codec = fast(codec_from_settings("raw_event"))
    enriched_codec = fast(codec_from_settings("enriched_event"))
    invalid_codec = fast(codec_from_settings("invalid_event"))
    session_codec = fast(codec_from_settings("session"))
    fx = FxFeed(kafka, topics.fx, codec_from_settings("fx_rates"))
    open_sessions: dict[str, tuple[int, int]] = {}  # device key -> (partition, idle deadline ms)
    timer_closed: dict[str, str] = {}  # device key -> session id the timer already closed
    positions: dict[int, int] = {}  # partition -> last offset processed (for the counters log)
    sweep: dict[int, collections.deque[tuple[int, bytes]]] = collections.defaultdict(collections.deque)
    scan = {"due": 0.0}

    def emit(res: Result) -> None:
        send = outputs.send
        for k, rec in res.enriched:
            send(topics.enriched, k.encode(), enriched_codec.encode(rec, topics.enriched))
        for k, rec in res.invalid:
            send(topics.invalid, k.encode(), invalid_codec.encode(rec, topics.invalid))
        for k, rec in res.sessions:
            send(topics.sessions, k.encode(), session_codec.encode(rec, topics.sessions))

    faust_flush = app.producer.flush

    async def flush_before_commit() -> None:
        state.flush()
        await outputs.flush()
        await faust_flush()

    app.producer.flush = flush_before_commit  # type: ignore[method-assign]  # Faust flushes it before commits

    @app.task  # type: ignore[untyped-decorator]
    async def start_fx() -> None:
        fx.start()

    @app.agent(raw_topic, concurrency=1)
    async def pipeline_agent(stream: Any) -> None:
        if not fx.ready.is_set():
            await asyncio.to_thread(fx.ready.wait, settings.fx_wait_s)
        async for event in stream.events():
            if fx.queue:
                fx.drain(rates)
            msg = event.message
            partition = state.partition = msg.partition
            now = int(time.time() * 1000)
            res = proc.process_bytes(
                raw_codec, event.value, pos=(partition, msg.offset), topic=msg.topic, now=now
            )
            emit(res)
            positions[partition] = msg.offset
            if res.device_key is not None:
                timer_closed.pop(res.device_key, None)
                if res.session_open:
                    open_sessions[res.device_key] = (partition, res.session_deadline)
                else:
                    open_sessions.pop(res.device_key, None)
            dq = sweep[partition]
            if res.seen_key is not None and res.seen_expires is not None:
                dq.append((res.seen_expires, res.seen_key.encode()))
            if dq and res.clock and dq[0][0] <= res.clock:
                _sweep(dq, state, res.clock)

    @app.timer(interval=settings.session_timer_interval_s)  # type: ignore[untyped-decorator]
    async def close_idle_sessions() -> None:
        now = int(time.time() * 1000)
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topics.raw}
        if time.monotonic() >= scan["due"]:
            scan["due"] = time.monotonic() + 60.0
            _rebuild_index(devices, open_sessions, actives, timer_closed)
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
                timer_closed[dkey] = rec["session_id"]
            open_sessions.pop(dkey, None)  # closed now, or already closed: the next event re-adds it

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def report_counters() -> None:
        log.info("pipeline counters: %s positions: %s", dict(proc.counters), dict(sorted(positions.items())))

    return app


def _sweep(dq: collections.deque[tuple[int, bytes]], state: TableState, now: int) -> None:
    """Delete expired message-id entries of the current partition (state expires with the window)."""
    n = 0
    while dq and dq[0][0] <= now and n < 100:
        _, key = dq.popleft()
        n += 1
        k = key.decode()
        v = state.get_seen(k)
        if v is not None and v[0] <= now:
            state.delete_seen(k)


def _rebuild_index(
    devices: Any, open_sessions: dict[str, tuple[int, int]], actives: set[int], timer_closed: dict[str, str]
) -> None:
    """Find open sessions in the table (after start or a rebalance)."""
    try:
        store = devices.data
        for partition, db in list(getattr(store, "_dbs", {}).items()):
            if partition not in actives:
                continue
            for k, v in db.items():
                try:
                    s = orjson.loads(v).get("s")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                key = k.decode() if isinstance(k, bytes) else str(k)
                if s and not s.get("x") and timer_closed.get(key) != s.get("id"):
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
