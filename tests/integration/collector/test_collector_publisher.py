"""KafkaPublisher on the real broker: every delivery mode confirms, a dead broker fails in time."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from collector.exceptions import PublishError, PublishTimeout
from collector.publisher import KafkaPublisher
from collector.settings import CollectorSettings
from trackflow.config import KafkaSettings
from trackflow.stack import ensure_topics

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["thread", "loop"])
async def test_publish_waits_for_every_delivery(
    mode: str, tf_env: dict[str, str], run_id: str, raw_reader: Any
) -> None:
    kafka = KafkaSettings(topic_prefix=f"t{run_id}p{mode}.")
    ensure_topics(kafka)
    pub = KafkaPublisher(kafka, CollectorSettings(), poll_mode=mode)
    try:
        from collector.mapping import Limits, Stamp, kafka_key, map_segment
        from schemas import codec

        tag = uuid.uuid4().hex[:6]
        stamp = Stamp(app_id="pub", received_at=1, request_id="r")
        batch = {
            "batch": [{"type": "track", "messageId": f"{tag}-{i}", "userId": f"u{i}"} for i in range(25)]
        }
        events = map_segment(batch, stamp, Limits(), None).events
        raw = codec("raw_event")
        await pub.publish(kafka.topics.raw, [(kafka_key(r), raw.encode(r, "")) for r in events], 10)
        assert await pub.ready()
    finally:
        pub.close()
    got = raw_reader(kafka.kafka_bootstrap, kafka.topics.raw, expect=25, settle=0.5)
    assert sorted(e["message_id"] for e in got) == sorted(f"{tag}-{i}" for i in range(25))


@pytest.mark.parametrize("mode", ["thread", "loop"])
async def test_dead_broker_fails_within_the_timeout(mode: str, unused_port: Any) -> None:
    kafka = KafkaSettings(kafka_bootstrap=f"127.0.0.1:{unused_port()}", topic_prefix="never.")
    pub = KafkaPublisher(kafka, CollectorSettings(publish_timeout_s=1.0), poll_mode=mode)
    try:
        t0 = time.monotonic()
        with pytest.raises(PublishError):
            await pub.publish("never.events.raw", [(b"k", b"v")] * 3, 1.0)
        assert time.monotonic() - t0 < 3.0
        assert not await pub.ready()
    finally:
        pub.close(flush_timeout=0)


async def test_a_shorter_wait_behind_a_longer_one_still_times_out_on_time(unused_port: Any) -> None:
    """Loop mode watches deadlines in arrival order; a request whose deadline comes earlier than
    the one before it gets its own timer, so it is not held until the earlier request times out."""
    kafka = KafkaSettings(kafka_bootstrap=f"127.0.0.1:{unused_port()}", topic_prefix="never.")
    pub = KafkaPublisher(kafka, CollectorSettings(), poll_mode="loop")
    try:
        slow = asyncio.ensure_future(pub.publish("never.events.raw", [(b"k", b"v")], 6.0))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(PublishTimeout, match=r"within 0\.5s"):
            await pub.publish("never.events.raw", [(b"k", b"v")], 0.5)
        assert time.monotonic() - t0 < 2.0, "the short wait was held behind the long one"
        assert not slow.done(), "the long wait is still running"
        slow.cancel()
    finally:
        pub.close(flush_timeout=0)


def test_a_publisher_moved_to_a_new_event_loop_still_times_out(unused_port: Any) -> None:
    """A request left pending by an event loop that was closed without cancelling it must not
    break the deadline watch of the next loop (the pump would resolve a future of a dead loop)."""
    kafka = KafkaSettings(kafka_bootstrap=f"127.0.0.1:{unused_port()}", topic_prefix="never.")
    pub = KafkaPublisher(kafka, CollectorSettings(), poll_mode="loop")
    try:
        first = asyncio.new_event_loop()
        task = first.create_task(pub.publish("never.events.raw", [(b"k", b"v")], 0.3))
        first.run_until_complete(asyncio.sleep(0.05))
        first.close()  # the request is still pending; its deadline passes while no loop runs
        time.sleep(0.4)

        async def second() -> float:
            t0 = time.monotonic()
            with pytest.raises(PublishTimeout):  # (a dead deadline watch would hang it: cut at 5 s)
                await asyncio.wait_for(pub.publish("never.events.raw", [(b"k", b"v")], 0.5), 5.0)
            return time.monotonic() - t0

        assert asyncio.run(second()) < 2.0
        assert not task.done()
    finally:
        pub.close(flush_timeout=0)


async def test_the_delivery_pump_survives_a_failing_delivery_callback(unused_port: Any) -> None:
    """poll() re-raises what a delivery callback raised; the pump logs it and keeps serving, so a
    later request still gets its answer (here: the timeout of a dead broker)."""
    kafka = KafkaSettings(kafka_bootstrap=f"127.0.0.1:{unused_port()}", topic_prefix="never.")
    pub = KafkaPublisher(
        kafka, CollectorSettings(), poll_mode="loop", extra_conf={"message.timeout.ms": 200}
    )

    def broken(_err: Any, _msg: Any) -> None:
        raise RuntimeError("a broken delivery callback")

    try:
        pub._producer.produce("never.events.raw", b"v", b"k", on_delivery=broken)  # fails after 200 ms
        with pytest.raises(PublishError):
            await asyncio.wait_for(pub.publish("never.events.raw", [(b"k", b"v")], 1.0), 5.0)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(PublishError):
            await asyncio.wait_for(pub.publish("never.events.raw", [(b"k", b"v")], 0.5), 5.0)
        assert time.monotonic() - t0 < 2.0
    finally:
        pub.close(flush_timeout=0)
