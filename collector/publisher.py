"""Publishing raw events to Kafka: the :class:`Publisher` seam and its confluent-kafka implementation.

:class:`KafkaPublisher` runs one idempotent producer (``acks=all``, lz4/zstd, a small linger) and
bridges librdkafka's delivery callbacks into asyncio: each request gets a :class:`_Delivery` that
counts its outstanding reports, and only the *last* report of a request resolves its future. The
reports are served either by the event loop itself (``poll(0)`` every millisecond while requests are
in flight: the default, no thread hand-off) or by a poll thread that wakes the loop once per request
(``call_soon_threadsafe``). ``confluent_kafka.aio.AIOProducer`` was measured ~8x slower for batches
and ~15x for single events (``bench/collector/publishers.py``).

``message.timeout.ms`` is bounded (see :class:`~collector.settings.CollectorSettings`), so a dead
broker produces failed deliveries instead of infinite waiting. A request whose reports did not
all arrive within ``wait_s`` fails with :class:`~collector.exceptions.PublishTimeout`; its events
may still land later, which is harmless because the pipeline dedupes by message id.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from collector.exceptions import PublishError, PublishTimeout
from collector.settings import CollectorSettings
from trackflow.config import KafkaSettings

log = logging.getLogger(__name__)

Message = tuple[bytes, bytes]  # (key, value)


class Publisher(Protocol):
    """Where the collector puts accepted events."""

    async def publish(self, topic: str, messages: Sequence[Message], wait_s: float) -> None:
        """Return once every message has a successful delivery report; raise PublishError otherwise."""
        ...

    async def ready(self) -> bool:
        """True if the backend is reachable (may be cached briefly)."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources."""
        ...


def producer_config(kafka: KafkaSettings, settings: CollectorSettings) -> dict[str, Any]:
    """librdkafka settings of the collector's producer."""
    return {
        **kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.compression,
        "linger.ms": settings.linger_ms,
        "message.timeout.ms": settings.message_timeout_ms(),
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "batch.num.messages": 10_000,
        "batch.size": 4_000_000,
        "socket.keepalive.enable": True,
        "log_level": 3,
    }


class _Delivery:
    """The outstanding delivery reports of one request."""

    __slots__ = ("error", "future", "loop", "pending", "threadsafe", "topic")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop, topic: str, *, threadsafe: bool) -> None:
        self.pending = n
        self.error: KafkaError | None = None
        self.loop = loop
        self.topic = topic
        self.threadsafe = threadsafe
        self.future: asyncio.Future[None] = loop.create_future()

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        # runs in the poll thread ("thread" mode) or in the event loop ("loop" mode)
        if err is not None and self.error is None:
            self.error = err
        self.pending -= 1
        if self.pending == 0:
            if self.threadsafe:
                self.loop.call_soon_threadsafe(self._resolve)
            else:
                self._resolve()

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(
                PublishError(
                    f"Kafka did not take the events: {self.error.str()}",
                    topic=self.topic,
                    reason=self.error.name(),
                )
            )
        else:
            self.future.set_result(None)

    def fail(self, exc: PublishError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def time_out(self, wait_s: float) -> None:
        """The request's deadline passed before every delivery report arrived."""
        self.fail(PublishTimeout(f"no delivery report within {wait_s:g}s", topic=self.topic, reason="timeout"))


class KafkaPublisher:
    """An idempotent confluent-kafka producer with an asyncio delivery bridge.

    Parameters:
        kafka: how to reach Kafka.
        settings: the collector's settings (compression, linger, timeouts, readiness cache).
        extra_conf: librdkafka settings overriding the defaults (benchmarks, tests).
        poll_mode: ``"loop"`` (default ``settings.poll_mode``): the event loop polls every millisecond
            while requests are in flight, so callbacks need no thread switch; ``"thread"``: a thread
            serves delivery reports and wakes the loop once per request.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: CollectorSettings,
        extra_conf: dict[str, Any] | None = None,
        poll_mode: str | None = None,
    ) -> None:
        self._conf = {
            **producer_config(kafka, settings),
            **(extra_conf or {}),
            "error_cb": self._on_error,
            "logger": logging.getLogger("collector.librdkafka"),
        }
        self._settings = settings
        self._producer = Producer(self._conf)
        self._fatal: KafkaError | None = None
        self._closed = False
        self._ready_at = 0.0
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._poll_mode = poll_mode or settings.poll_mode
        self._inflight = 0
        self._pump_loop: asyncio.AbstractEventLoop | None = None
        self._pump_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._pump_idle = True  # the next pump is the slow idle one (50 ms away)
        #: loop mode: (deadline, delivery, wait_s) of requests in flight, in deadline order; the
        #: pump times them out (one timer per request cost ~3% of a single-event request's CPU)
        self._deadlines: collections.deque[tuple[float, _Delivery, float]] = collections.deque()
        self._thread: threading.Thread | None = None
        if self._poll_mode == "thread":
            self._thread = threading.Thread(target=self._poll_loop, name="collector-kafka-poll", daemon=True)
            self._thread.start()

    # -- librdkafka side ------------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal producer error, the producer will be recreated: %s", err.str())
            self._fatal = err
        else:
            log.debug("producer error: %s", err.str())

    def _poll_loop(self) -> None:
        while not self._closed:
            self._producer.poll(0.05)

    def _pump(self) -> None:
        """Loop mode: serve delivery reports in the event loop; fast while requests are in flight."""
        if self._closed or self._pump_loop is None:
            return
        try:
            self._producer.poll(0)  # re-raises what a delivery callback raised
            deadlines = self._deadlines
            if deadlines:
                now = time.monotonic()
                while deadlines and (deadlines[0][0] <= now or deadlines[0][1].future.done()):
                    _, delivery, wait_s = deadlines.popleft()
                    if not delivery.future.done():
                        delivery.time_out(wait_s)
        except Exception:
            log.exception("delivery pump: an error while serving delivery reports")
        finally:
            # always again: a pump that stopped would leave every later request waiting forever
            self._pump_idle = not self._inflight
            self._pump_handle = self._pump_loop.call_later(0.05 if self._pump_idle else 0.001, self._pump)

    def _replace_if_fatal(self) -> None:
        if self._fatal is None:
            return
        old = self._producer
        self._producer = Producer(self._conf)
        self._fatal = None
        old.flush(0)

    # -- asyncio side ---------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message], wait_s: float) -> None:
        """Produce ``messages`` and wait for all their delivery reports (at most ``wait_s`` seconds)."""
        if not messages:
            return
        self._replace_if_fatal()
        loop = asyncio.get_running_loop()
        threaded = self._thread is not None
        if not threaded:
            if self._pump_loop is not loop:
                self._pump_loop = loop
                self._deadlines.clear()  # requests of another (ended) event loop: nothing waits on them here
                self._pump_handle = loop.call_later(0.001, self._pump)
                self._pump_idle = False
            elif self._pump_idle:
                # the pump was resting: bring it forward so this request's reports are seen in ~1 ms
                if self._pump_handle is not None:
                    self._pump_handle.cancel()
                self._pump_handle = loop.call_later(0.001, self._pump)
                self._pump_idle = False
        delivery = _Delivery(len(messages), loop, topic, threadsafe=threaded)
        deadline = time.monotonic() + wait_s
        produce = self._producer.produce
        cb = delivery.on_delivery
        i = 0
        while i < len(messages):
            key, value = messages[i]
            try:
                produce(topic, value, key, on_delivery=cb)
            except BufferError:
                # local queue full: let the poll thread drain it, up to the deadline
                if time.monotonic() >= deadline:
                    delivery.fail(PublishTimeout("producer queue full", topic=topic, reason="queue_full"))
                    break
                await asyncio.sleep(0.005)
                continue
            except KafkaException as exc:
                delivery.fail(PublishError(f"produce failed: {exc}", topic=topic, reason="produce"))
                break
            i += 1
        timer: asyncio.TimerHandle | None = None
        if threaded or (self._deadlines and self._deadlines[-1][0] > deadline):
            # no pump to watch it, or out of deadline order (a shorter wait_s than the last request's)
            timer = loop.call_later(max(deadline - time.monotonic(), 0.0), delivery.time_out, wait_s)
        else:
            self._deadlines.append((deadline, delivery, wait_s))
        self._inflight += 1
        try:
            await delivery.future
        finally:
            self._inflight -= 1
            if timer is not None:
                timer.cancel()

    async def ready(self) -> bool:
        """True if a broker answered a metadata request (the answer is cached ``ready_cache_s``)."""
        now = time.monotonic()
        if now - self._ready_at < self._settings.ready_cache_s:
            return self._ready
        async with self._ready_lock:
            if time.monotonic() - self._ready_at >= self._settings.ready_cache_s:
                self._ready = await asyncio.to_thread(self._probe)
                self._ready_at = time.monotonic()
        return self._ready

    def _probe(self) -> bool:
        try:
            md = self._producer.list_topics(timeout=1.0)
        except KafkaException:
            return False
        return bool(md.brokers)

    def close(self, flush_timeout: float = 5.0) -> None:
        """Flush outstanding messages (up to ``flush_timeout`` s) and stop the poll thread."""
        if self._closed:
            return
        self._producer.flush(flush_timeout)
        self._closed = True
        if self._pump_handle is not None:
            self._pump_handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
