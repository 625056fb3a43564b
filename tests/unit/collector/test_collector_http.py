"""The HTTP layer with an in-memory publisher: status codes, auth, limits, gzip, CORS, probes."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import orjson

from collector.openapi import openapi_document
from schemas import codec
from trackflow.apps import App, AppRegistry

MemoryPublisher = Any  # the fake of conftest.py

RAW = codec("raw_event")
TRACK = {"anonymousId": "anon-1", "event": "Signed Up", "properties": {"plan": "pro"}}


def _decoded(pub: MemoryPublisher) -> list[dict[str, Any]]:
    return [RAW.decode(v, t) for t, _, v in pub.messages]


async def test_track_with_basic_auth_publishes_and_answers_success(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    app, key = app_key
    r = await client.post(
        "/v1/track",
        json=TRACK,
        auth=(key, ""),
        headers={"X-Request-ID": "req-42", "User-Agent": "analytics-ruby/2.4.0"},
    )
    assert r.status_code == 200
    assert r.json() == {"success": True}
    [(topic, kafka_key, _)] = publisher.messages
    assert topic == "unit.events.raw"
    assert kafka_key == b"unit-app:anon-1"
    [rec] = _decoded(publisher)
    assert rec["app_id"] == app.app_id
    assert rec["request_id"] == "req-42"
    assert rec["ip"] == "203.0.113.7"
    assert rec["user_agent"] == "analytics-ruby/2.4.0"
    assert rec["library"] == "analytics-ruby/2.4.0"


async def test_write_key_in_header_or_body(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    _, key = app_key
    assert (
        await client.post("/v1/identify", json={"userId": "u"}, headers={"X-Write-Key": key})
    ).status_code == 200
    assert (await client.post("/v1/page", json={"userId": "u", "writeKey": key})).status_code == 200
    assert len(publisher.messages) == 2


async def test_unknown_or_missing_key_is_401(client: httpx.AsyncClient, publisher: MemoryPublisher) -> None:
    r = await client.post("/v1/track", json=TRACK, auth=("tfw_wrong", ""))
    assert r.status_code == 401
    assert r.json()["errors"][0]["reason"] == "unauthorized"
    assert (await client.post("/v1/track", json=TRACK)).status_code == 401
    assert (await client.post("/v1/track", content=b"{not json")).status_code == 401
    assert publisher.messages == []


async def test_bad_json_with_a_good_key_is_400(client: httpx.AsyncClient, app_key: tuple[App, str]) -> None:
    r = await client.post("/v1/track", content=b"{not json", auth=(app_key[1], ""))
    assert r.status_code == 400
    assert r.json()["errors"][0]["reason"] == "invalid_json"


async def test_malformed_batch_is_400_per_event_and_nothing_published(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    body = {"batch": [{"type": "track", "anonymousId": "a", "event": "ok"}, {"type": "track"}]}
    r = await client.post("/v1/batch", json=body, auth=(app_key[1], ""))
    assert r.status_code == 400
    assert r.json() == {
        "success": False,
        "errors": [
            {
                "reason": "missing_identity",
                "message": "an anonymous id or a user id is required",
                "index": 1,
                "field": "anonymousId",
            }
        ],
    }
    assert publisher.messages == []


async def test_batch_of_valid_events(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    batch = [{"type": "track", "anonymousId": f"a{i}", "event": "e", "messageId": f"m{i}"} for i in range(50)]
    r = await client.post("/v1/batch", json={"batch": batch, "writeKey": app_key[1]})
    assert r.status_code == 200
    assert [x["message_id"] for x in _decoded(publisher)] == [f"m{i}" for i in range(50)]


async def test_gzip_body(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    r = await client.post(
        "/v1/track",
        content=gzip.compress(orjson.dumps(TRACK)),
        auth=(app_key[1], ""),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert _decoded(publisher)[0]["event"] == "Signed Up"


async def test_bad_gzip_and_unknown_encoding(client: httpx.AsyncClient, app_key: tuple[App, str]) -> None:
    r = await client.post(
        "/v1/track", content=b"plain", auth=(app_key[1], ""), headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 400
    r = await client.post(
        "/v1/track", content=b"x", auth=(app_key[1], ""), headers={"Content-Encoding": "br"}
    )
    assert r.status_code == 415


async def test_request_too_large_is_413_also_after_gunzip(
    client_factory: Any, registry: AppRegistry, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    async with client_factory(max_request_bytes=2048) as c:
        big = orjson.dumps({**TRACK, "properties": {"x": "y" * 5000}})
        r = await c.post("/v1/track", content=big, auth=(app_key[1], ""))
        assert r.status_code == 413
        assert r.json()["errors"][0]["reason"] == "request_too_large"
        r = await c.post(
            "/v1/track",
            content=gzip.compress(big),
            auth=(app_key[1], ""),
            headers={"Content-Encoding": "gzip"},
        )
        assert r.status_code == 413, "a small gzip body that inflates past the limit is refused"
    assert publisher.messages == []


async def test_event_and_batch_too_large_are_413(
    client_factory: Any, registry: AppRegistry, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    async with client_factory(max_event_bytes=1024, max_batch=3) as c:
        r = await c.post("/v1/track", json={**TRACK, "properties": {"x": "y" * 2000}}, auth=(app_key[1], ""))
        assert (r.status_code, r.json()["errors"][0]["reason"]) == (413, "event_too_large")
        batch = [{"type": "track", "userId": "u"}] * 4
        r = await c.post("/v1/batch", json={"batch": batch}, auth=(app_key[1], ""))
        assert (r.status_code, r.json()["errors"][0]["reason"]) == (413, "batch_too_large")


async def test_rate_limit_is_429_with_retry_after(
    client_factory: Any, registry: AppRegistry, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    async with client_factory(rate_limit_eps=1, rate_limit_burst=3) as c:
        batch = {"batch": [{"type": "track", "userId": "u"}] * 3}
        assert (await c.post("/v1/batch", json=batch, auth=(app_key[1], ""))).status_code == 200
        r = await c.post("/v1/track", json=TRACK, auth=(app_key[1], ""))
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
    assert len(publisher.messages) == 3


async def test_publish_failure_is_503_with_retry_after(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    publisher.fail = True
    r = await client.post("/v1/track", json=TRACK, auth=(app_key[1], ""))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert r.json()["errors"][0]["reason"] == "publish_failed"


async def test_app_tracking_endpoint(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    body = {
        "events": [
            {"event": "heartbeat", "session_id": "s", "offset": 10, "user_id": "p"},
            {"event": "track", "action": "buy", "user_id": "p"},
        ]
    }
    r = await client.post("/v1/app-tracking", json=body, headers={"X-Write-Key": app_key[1]})
    assert r.status_code == 200
    assert [x["type"] for x in _decoded(publisher)] == ["heartbeat", "track"]


async def test_appsflyer_endpoint_and_403_for_another_app(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    body = {"appsflyer_id": "af-1", "eventName": "af_purchase", "eventValue": "{}", "eventTime": "t"}
    r = await client.post("/inappevent/unit-app", json=body, headers={"authentication": app_key[1]})
    assert r.status_code == 200
    r = await client.post("/inappevent/other-app", json=body, headers={"authentication": app_key[1]})
    assert r.status_code == 403
    r = await client.post("/inappevent/unit-app", json=body, headers={"authentication": "nope"})
    assert r.status_code == 401
    assert len(publisher.messages) == 1


async def test_x_anonymous_id_and_x_request_id_fill_missing_anonymous_id(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    await client.post(
        "/v1/track", json={"event": "x"}, auth=(app_key[1], ""), headers={"X-Anonymous-Id": "h1"}
    )
    await client.post("/v1/track", json={"event": "x"}, auth=(app_key[1], ""), headers={"X-Request-ID": "r1"})
    assert [x["anonymous_id"] for x in _decoded(publisher)] == ["h1", "r1"]


async def test_mask_ip_per_app(
    client_factory: Any, registry: AppRegistry, publisher: MemoryPublisher
) -> None:
    _, key, _ = registry.add("Masked", app_id="masked", mask_ip=True)
    async with client_factory() as c:
        assert (await c.post("/v1/track", json=TRACK, auth=(key, ""))).status_code == 200
    assert _decoded(publisher)[0]["ip"] == "203.0.113.0"


async def test_cors_preflight(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/v1/track",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "https://shop.example")


async def test_probes_metrics_and_openapi(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    publisher.is_ready = False
    assert (await client.get("/readyz")).status_code == 503
    await client.post("/v1/track", json=TRACK, auth=(app_key[1], ""))
    await client.post("/v1/track", json=TRACK, auth=("bad", ""))
    text = (await client.get("/metrics")).text
    assert 'trackflow_collector_events_total{source="segment"} 1.0' in text
    assert 'trackflow_collector_rejections_total{reason="unauthorized"} 1.0' in text
    assert 'trackflow_collector_requests_total{endpoint="/v1/track",status="200"} 1.0' in text
    assert "trackflow_collector_publish_seconds_bucket" in text
    doc = (await client.get("/openapi.json")).json()
    assert doc == orjson.loads(orjson.dumps(openapi_document()))
    for path in ("/v1/track", "/v1/batch", "/v1/app-tracking", "/inappevent/{app_id}"):
        assert "requestBody" in doc["paths"][path]["post"]


async def test_cors_headers_on_a_simple_post(client: httpx.AsyncClient, app_key: tuple[App, str]) -> None:
    r = await client.post(
        "/v1/track", json=TRACK, auth=(app_key[1], ""), headers={"Origin": "https://a.example"}
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()


async def test_cors_with_listed_origins(client_factory: Any, app_key: tuple[App, str]) -> None:
    async with client_factory(cors_origins="https://shop.example") as c:
        ok = await c.post(
            "/v1/track", json=TRACK, auth=(app_key[1], ""), headers={"Origin": "https://shop.example"}
        )
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        other = await c.post(
            "/v1/track", json=TRACK, auth=(app_key[1], ""), headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


async def test_wrong_method_and_unknown_path(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/track")).status_code == 405
    assert (await client.post("/v1/nope", json={})).status_code == 404
    assert (await client.post("/inappevent/a/b", json={})).status_code == 404


async def test_the_starlette_routes_answer_the_same(
    client: httpx.AsyncClient, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> None:
    """The fast path and the Starlette-mounted endpoints are the same handlers."""
    front = client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=front.starlette, client=("203.0.113.7", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://collector") as c:
        r = await c.post("/v1/track", json=TRACK, auth=(app_key[1], ""))
        assert r.status_code == 200
        body = {"appsflyer_id": "af", "eventName": "x"}
        assert (
            await c.post("/inappevent/unit-app", json=body, headers={"authentication": app_key[1]})
        ).status_code == 200
        assert (
            await c.post("/inappevent/other", json=body, headers={"authentication": app_key[1]})
        ).status_code == 403
    assert len(publisher.messages) == 2
