"""Events posted through each API shape land on the raw topic as decodable Avro with the right fields."""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import httpx
import orjson
import pytest

CollectorProc = Any  # see conftest.py

pytestmark = pytest.mark.integration


def test_every_shape_lands_on_the_raw_topic(
    collector: CollectorProc, app: tuple[Any, str, str], raw_reader: Any
) -> None:
    _, key, _ = app
    tag = uuid.uuid4().hex[:8]
    url = collector.url
    sent: dict[str, str] = {}  # message id -> what it should be
    with httpx.Client(base_url=url, timeout=15) as http:
        r = http.post(
            "/v1/track",
            auth=(key, ""),
            headers={"User-Agent": "analytics-python/2.3.0"},
            json={
                "messageId": f"{tag}-track",
                "anonymousId": f"{tag}-anon",
                "userId": "u-1",
                "event": "Order Completed",
                "properties": {"revenue": 12.5, "currency": "EUR"},
                "timestamp": "2026-11-20T10:00:00Z",
                "sentAt": "2026-11-20T10:00:01Z",
                "context": {"locale": "en-GB"},
                "integrations": {"All": True},
            },
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True}
        sent[f"{tag}-track"] = "track"
        for t in ("identify", "page", "screen", "group", "alias"):
            body = {
                "messageId": f"{tag}-{t}",
                "userId": "u-1",
                "name": "Home",
                "traits": {"plan": "pro"},
                "groupId": "g-1",
                "previousId": f"{tag}-anon",
            }
            r = http.post(f"/v1/{t}", headers={"X-Write-Key": key}, json=body)
            assert r.status_code == 200, r.text
            sent[f"{tag}-{t}"] = t
        batch = {
            "writeKey": key,
            "batch": [
                {"type": "track", "messageId": f"{tag}-b{i}", "anonymousId": f"{tag}-anon", "event": "Viewed"}
                for i in range(20)
            ],
        }
        r = http.post(
            "/v1/batch",
            content=gzip.compress(orjson.dumps(batch)),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        sent.update({f"{tag}-b{i}": "track" for i in range(20)})
        r = http.post(
            "/v1/app-tracking",
            auth=(key, ""),
            json={
                "events": [
                    {
                        "uuid": f"{tag}-hb",
                        "event": "heartbeat",
                        "session_id": "s-1",
                        "offset": 30,
                        "user_id": "p-1",
                    },
                    {
                        "uuid": f"{tag}-at",
                        "event": "track",
                        "action": "level_up",
                        "user_id": "p-1",
                        "ref": "menu",
                        "action_properties": {"level": 2},
                    },
                ]
            },
        )
        assert r.status_code == 200, r.text
        sent[f"{tag}-hb"] = "heartbeat"
        sent[f"{tag}-at"] = "track"
        r = http.post(
            "/inappevent/test-app",
            headers={"authentication": key},
            json={
                "appsflyer_id": f"{tag}-af",
                "customer_user_id": "cu-1",
                "eventName": "af_purchase",
                "eventValue": '{"af_revenue": "9.99"}',
                "eventCurrency": "EUR",
                "eventTime": "2026-11-20 10:00:00.000",
                "ip": "203.0.113.5",
            },
        )
        assert r.status_code == 200, r.text
        # a malformed request publishes nothing
        r = http.post(
            "/v1/batch",
            auth=(key, ""),
            json={
                "batch": [
                    {"type": "track", "messageId": f"{tag}-never", "anonymousId": "a"},
                    {"type": "track"},
                ]
            },
        )
        assert r.status_code == 400

    events = raw_reader(collector.bootstrap, collector.topics.raw, expect=len(sent) + 1)
    by_id = {e["message_id"]: e for e in events}
    assert len(events) == len(sent) + 1, "exactly the accepted events, no duplicates"
    assert f"{tag}-never" not in by_id
    for mid, etype in sent.items():
        assert by_id[mid]["type"] == etype
        assert by_id[mid]["app_id"] == "test-app"
    tr = by_id[f"{tag}-track"]
    assert tr["_key"] == f"test-app:{tag}-anon".encode()
    assert (tr["event"], tr["user_id"], tr["timestamp"], tr["sent_at"]) == (
        "Order Completed",
        "u-1",
        "2026-11-20T10:00:00Z",
        "2026-11-20T10:00:01Z",
    )
    assert orjson.loads(tr["properties"]) == {"revenue": 12.5, "currency": "EUR"}
    assert tr["ip"] == "127.0.0.1"
    assert tr["library"] == "analytics-python/2.3.0"
    assert tr["received_at"] > 1_700_000_000_000
    assert tr["request_id"]
    assert by_id[f"{tag}-alias"]["previous_id"] == f"{tag}-anon"
    assert by_id[f"{tag}-group"]["group_id"] == "g-1"
    assert by_id[f"{tag}-page"]["event"] == "Home"
    hb = by_id[f"{tag}-hb"]
    assert (hb["session_id"], hb["heartbeat_offset"], hb["source"]) == ("s-1", 30.0, "app_tracking")
    assert hb["_key"] == b"test-app:p-1"
    at = by_id[f"{tag}-at"]
    assert (at["event"], at["ref"], orjson.loads(at["properties"])) == ("level_up", "menu", {"level": 2})
    [af] = [e for e in events if e["source"] == "appsflyer_s2s"]
    assert (af["event"], af["anonymous_id"], af["user_id"], af["ip"]) == (
        "af_purchase",
        f"{tag}-af",
        "cu-1",
        "203.0.113.5",
    )
    assert orjson.loads(af["properties"]) == {"af_revenue": "9.99", "af_currency": "EUR"}


def test_probes_and_metrics(collector: CollectorProc) -> None:
    assert httpx.get(f"{collector.url}/healthz").status_code == 200
    r = httpx.get(f"{collector.url}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    text = httpx.get(f"{collector.url}/metrics").text
    assert "trackflow_collector_requests_total" in text
    doc = httpx.get(f"{collector.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
