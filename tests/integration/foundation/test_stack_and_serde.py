"""The real stack answers, the topics have their configs, and Avro round-trips through the broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from schemas import codec, defaults

pytestmark = pytest.mark.integration


def test_stack_status_json_reports_every_service(subprocess_env: dict[str, str], topics: Any) -> None:
    res = subprocess.run([sys.executable, "-m", "trackflow", "stack", "status", "--json"],
                         capture_output=True, text=True, env=subprocess_env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    st = json.loads(res.stdout)
    assert set(st) >= {"kafka", "redis", "clickhouse"}
    assert all(v["ok"] for v in st.values())
    assert st["kafka"]["address"] == subprocess_env["TRACKFLOW_KAFKA_BOOTSTRAP"]


def test_stack_status_fails_when_a_service_is_down(subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "TRACKFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}
    res = subprocess.run([sys.executable, "-m", "trackflow", "stack", "status", "--json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1
    assert json.loads(res.stdout)["redis"]["ok"] is False


def test_topics_have_partitions_and_configs(topics: Any, kafka_admin: Any) -> None:
    md = kafka_admin.list_topics(timeout=10).topics
    assert len(md[topics.raw].partitions) == 4
    assert len(md[topics.fx].partitions) == 1
    res = ConfigResource(ResourceType.TOPIC, topics.fx)
    cfg = kafka_admin.describe_configs([res])[res].result()
    assert cfg["cleanup.policy"].value == "compact"
    res = ConfigResource(ResourceType.TOPIC, topics.raw)
    assert kafka_admin.describe_configs([res])[res].result()["cleanup.policy"].value == "delete"


@pytest.mark.parametrize("mode", ["single-object", "confluent"])
def test_avro_round_trip_on_the_broker(mode: str, topics: Any, tf_env: dict[str, str], consume: Any) -> None:
    registry = None if mode == "single-object" else f"mock://{uuid.uuid4().hex}"
    raw = codec("raw_event", registry)
    topic = f"{tf_env['TRACKFLOW_TOPIC_PREFIX']}roundtrip.{mode}"
    p = Producer({"bootstrap.servers": tf_env["TRACKFLOW_KAFKA_BOOTSTRAP"], "enable.idempotence": True,
                  "acks": "all"})
    sent = []
    for i in range(50):
        rec = defaults("raw_event")
        rec.update(message_id=f"m{i}", type="track", event="Level Up", app_id="a",
                   anonymous_id=f"d{i % 5}", received_at=1_700_000_000_000 + i,
                   properties=json.dumps({"level": i}))
        sent.append(rec)
        p.produce(topic, key=f"a:d{i % 5}".encode(), value=raw.encode(rec, topic))
    assert p.flush(30) == 0
    msgs = consume(topic, 50)
    got = sorted((raw.decode(m.value(), topic) for m in msgs), key=lambda r: r["message_id"])
    assert got == sorted(sent, key=lambda r: r["message_id"])
