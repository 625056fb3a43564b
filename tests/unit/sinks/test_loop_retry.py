"""The sink loop keeps failed batches, backs off, pauses consumption and commits only after writes."""

from __future__ import annotations

from typing import Any

from sinks.exceptions import StorageUnavailable
from sinks.loop import SinkLoop
from sinks.settings import SinkSettings
from trackflow.config import KafkaSettings


class FlakySink:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[list[str]] = []
        self.inserts = 0

    def write(self, batches: Any) -> None:
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
