"""Confluent framing through a real schema registry (Apicurio's ccompat API) and the real broker.

The registry is the one at ``TRACKFLOW_TEST_REGISTRY_URL`` if set (a Confluent-compatible base URL),
else one on 127.0.0.1:18081 (``trackflow.registry_stack.start_registry``; a healthy registry already
there is used as it is, one this module started is stopped at its end).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from schemas import codec, defaults
from schemas.serde import latest
from trackflow.exceptions import SerdeError

pytestmark = pytest.mark.integration

REGISTRY_PORT = 18081
#: Apicurio 3.0.x rewrites this before parsing a schema as Avro (turning a "{}" string default into a map)
APICURIO_QUOTED_BRACES = re.compile(r': *"\{}"')


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Confluent-compatible base URL of the registry of this module."""
    from trackflow.registry_stack import registry_healthy, registry_url, start_registry
    from trackflow.stack import StackPaths, stop_process

    url = os.environ.get("TRACKFLOW_TEST_REGISTRY_URL")
    if url:
        assert registry_healthy(url), f"TRACKFLOW_TEST_REGISTRY_URL={url} does not answer GET /subjects"
        yield url.rstrip("/")
        return
    home = tmp_path_factory.mktemp("registry-home")
    paths = StackPaths(root=home / "stack", run=home / "run", logs=home / "logs")
    done = start_registry(paths, REGISTRY_PORT)
    yield registry_url(REGISTRY_PORT)
    if done == "started":
        stop_process(paths.pidfile("registry"))


def _record(i: int) -> dict[str, Any]:
    rec = defaults("raw_event")
    rec.update(message_id=f"m{i}", type="track", event="Level Up", app_id="a", anonymous_id=f"d{i % 3}",
               received_at=1_700_000_000_000 + i, properties=json.dumps({"level": i}))
    return rec


def test_raw_event_round_trips_through_the_registry_and_the_broker(
    registry: str, topics: Any, tf_env: dict[str, str], consume: Any
) -> None:
    raw = codec("raw_event", registry)
    topic = f"{tf_env['TRACKFLOW_TOPIC_PREFIX']}registry.raw"
    sent = [_record(i) for i in range(20)]
    try:
        payloads = [raw.encode(rec, topic) for rec in sent]
    except SerdeError as exc:
        if "Failed to discover artifact type" in str(exc) and APICURIO_QUOTED_BRACES.search(
                latest("raw_event").text):
            pytest.xfail("Apicurio 3.0.x rewrites :\"{}\" in the schema text (raw_event's properties "
                         "default): SchemaVersion.text must not contain it")
        raise
    assert all(p[0] == 0 for p in payloads)  # Confluent framing: magic byte, then the 4-byte schema id
    schema_id = int.from_bytes(payloads[0][1:5], "big")

    p = Producer({"bootstrap.servers": tf_env["TRACKFLOW_KAFKA_BOOTSTRAP"], "enable.idempotence": True,
                  "acks": "all"})
    for rec, data in zip(sent, payloads, strict=True):
        p.produce(topic, key=f"a:{rec['anonymous_id']}".encode(), value=data)
    assert p.flush(30) == 0
    msgs = consume(topic, len(sent))
    got = sorted((raw.decode(m.value(), topic) for m in msgs), key=lambda r: r["message_id"])
    assert got == sorted(sent, key=lambda r: r["message_id"])

    subject = f"{topic}-value"
    assert subject in httpx.get(f"{registry}/subjects", timeout=10).json()
    latest_version = httpx.get(f"{registry}/subjects/{subject}/versions/latest", timeout=10).json()
    assert latest_version["id"] == schema_id
    assert json.loads(latest_version["schema"])["name"] == "RawEvent"
    by_id = httpx.get(f"{registry}/schemas/ids/{schema_id}", timeout=10)
    assert by_id.status_code == 200, by_id.text


def test_the_registry_takes_raw_event_when_the_braces_are_not_quoted_after_a_colon(
    registry: str, run_id: str
) -> None:
    """The workaround for Apicurio's rewrite: a tab after the colon keeps the text the same JSON."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    text = APICURIO_QUOTED_BRACES.sub(lambda m: ':\t"{}"', latest("raw_event").text)
    assert json.loads(text) == latest("raw_event").source
    subject = f"t{run_id}.workaround-value"
    with SchemaRegistryClient({"url": registry}) as client:
        schema_id = client.register_schema(subject, Schema(text, "AVRO"))
        assert json.loads(client.get_schema(schema_id).schema_str)["name"] == "RawEvent"
        assert subject in client.get_subjects()
