"""Every API shape maps onto RawEvent, and every envelope rejection is reported per event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector.mapping import (
    Limits,
    MapResult,
    Reason,
    Stamp,
    kafka_key,
    map_app_tracking,
    map_appsflyer,
    map_segment,
    mask_ip,
)
from schemas import codec, defaults

STAMP = Stamp(
    app_id="shop",
    received_at=1_700_000_000_123,
    request_id="req-1",
    ip="198.51.100.23",
    user_agent="analytics-python/2.3.0",
)
LIMITS = Limits()
RAW = codec("raw_event")


def _one(result: MapResult) -> dict[str, Any]:
    assert result.ok, result.errors
    assert len(result.events) == 1
    rec = result.events[0]
    assert set(rec) == set(defaults("raw_event")), "every RawEvent field is present"
    assert RAW.decode(RAW.encode(rec, "t"), "t") == rec, "the record encodes as Avro unchanged"
    return rec


# -- Segment -------------------------------------------------------------------------------


def test_segment_track_maps_every_field() -> None:
    body = {
        "messageId": "m-1",
        "anonymousId": "anon-1",
        "userId": 42,
        "event": "Order Completed",
        "properties": {"revenue": "12.50", "currency": "EUR", "product_list": [{"sku": "a"}]},
        "context": {"library": {"name": "analytics.js", "version": "4.1"}, "locale": "en-GB"},
        "integrations": {"All": True},
        "timestamp": "2026-11-20T10:00:00.000Z",
        "sentAt": 1700000000000,
    }
    rec = _one(map_segment(body, STAMP, LIMITS, "track"))
    assert rec["message_id"] == "m-1"
    assert rec["type"] == "track"
    assert rec["event"] == "Order Completed"
    assert rec["anonymous_id"] == "anon-1"
    assert rec["user_id"] == "42", "numeric ids are stringified"
    assert orjson.loads(rec["properties"])["product_list"] == [{"sku": "a"}]
    assert orjson.loads(rec["context"])["locale"] == "en-GB"
    assert orjson.loads(rec["integrations"]) == {"All": True}
    assert rec["timestamp"] == "2026-11-20T10:00:00.000Z"
    assert rec["sent_at"] == "1700000000000", "numbers are kept as their text"
    assert rec["received_at"] == STAMP.received_at
    assert rec["app_id"] == "shop"
    assert rec["request_id"] == "req-1"
    assert rec["ip"] == "198.51.100.23"
    assert rec["source"] == "segment"
    assert rec["library"] == "analytics.js/4.1"
    assert kafka_key(rec) == b"shop:anon-1"


def test_segment_identify_takes_traits_from_body_or_context() -> None:
    rec = _one(map_segment({"userId": "u1", "traits": {"plan": "pro"}}, STAMP, LIMITS, "identify"))
    assert rec["type"] == "identify"
    assert orjson.loads(rec["traits"]) == {"plan": "pro"}
    assert kafka_key(rec) == b"shop:u1", "no anonymous id: the key uses the user id"
    rec = _one(
        map_segment({"userId": "u1", "context": {"traits": {"email": "a@b.c"}}}, STAMP, LIMITS, "identify")
    )
    assert orjson.loads(rec["traits"]) == {"email": "a@b.c"}


@pytest.mark.parametrize("kind", ["page", "screen"])
def test_segment_page_and_screen_name_becomes_event(kind: str) -> None:
    rec = _one(
        map_segment({"anonymousId": "a", "name": "Home", "properties": {"path": "/"}}, STAMP, LIMITS, kind)
    )
    assert rec["type"] == kind
    assert rec["event"] == "Home"


def test_segment_group_and_alias_ids() -> None:
    rec = _one(map_segment({"userId": "u", "groupId": 7, "traits": {"n": 1}}, STAMP, LIMITS, "group"))
    assert rec["group_id"] == "7"
    rec = _one(map_segment({"userId": "u", "previousId": "anon-9"}, STAMP, LIMITS, "alias"))
    assert rec["previous_id"] == "anon-9"


def test_segment_heartbeat_track_carries_session_and_offset() -> None:
    body = {"anonymousId": "a", "event": "heartbeat", "properties": {"session_id": "s-1", "offset": "30"}}
    rec = _one(map_segment(body, STAMP, LIMITS, "track"))
    assert rec["session_id"] == "s-1"
    assert rec["heartbeat_offset"] == 30.0


def test_segment_rudderstack_context_session_id() -> None:
    rec = _one(
        map_segment(
            {"anonymousId": "a", "event": "x", "context": {"sessionId": 1700000000}}, STAMP, LIMITS, "track"
        )
    )
    assert rec["session_id"] == "1700000000"


def test_segment_batch_applies_top_level_context_and_sent_at() -> None:
    body = {
        "batch": [
            {"type": "track", "event": "a", "anonymousId": "x", "context": {"page": {"path": "/a"}}},
            {"type": "identify", "userId": "u", "sentAt": "own"},
        ],
        "context": {"library": {"name": "analytics-node", "version": "1"}},
        "sentAt": "2026-11-20T10:00:01Z",
    }
    result = map_segment(body, STAMP, LIMITS, None)
    assert result.ok
    a, b = result.events
    assert orjson.loads(a["context"]) == {
        "library": {"name": "analytics-node", "version": "1"},
        "page": {"path": "/a"},
    }
    assert a["sent_at"] == "2026-11-20T10:00:01Z"
    assert b["sent_at"] == "own"
    assert a["type"] == "track" and b["type"] == "identify"
    assert a["message_id"] != b["message_id"], "server-generated message ids are unique"


def test_fallback_anonymous_id_fills_a_missing_one() -> None:
    stamp = Stamp(app_id="shop", received_at=1, request_id="r", fallback_anonymous_id="hdr-anon")
    rec = _one(map_segment({"event": "x"}, stamp, LIMITS, "track"))
    assert rec["anonymous_id"] == "hdr-anon"
    rec = _one(map_segment({"event": "x", "anonymousId": "own"}, stamp, LIMITS, "track"))
    assert rec["anonymous_id"] == "own", "the header never overrides the body"


def test_context_ip_overrides_and_is_masked_when_asked() -> None:
    rec = _one(map_segment({"userId": "u", "context": {"ip": "192.0.2.77"}}, STAMP, LIMITS, "track"))
    assert rec["ip"] == "192.0.2.77"
    masked = Stamp(app_id="shop", received_at=1, request_id="r", ip="198.51.100.0", mask_ip=True)
    rec = _one(map_segment({"userId": "u", "context": {"ip": "192.0.2.77"}}, masked, LIMITS, "track"))
    assert rec["ip"] == "192.0.2.0"


def test_business_rule_violations_still_map() -> None:
    """Bad event names and revenue are the pipeline's business, not the collector's."""
    body = {"anonymousId": "a", "event": "=bad name", "properties": {"revenue": "12,50 EUR"}}
    rec = _one(map_segment(body, STAMP, LIMITS, "track"))
    assert rec["event"] == "=bad name"
    rec = _one(map_segment({"anonymousId": "a"}, STAMP, LIMITS, "track"))
    assert rec["event"] is None, "a track without a name is published, the pipeline dead-letters it"


# -- Segment rejections ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path_type", "reason", "field"),
    [
        ({"event": "x"}, "track", Reason.MISSING_IDENTITY, "anonymousId"),
        ({"event": "x", "anonymousId": ""}, "track", Reason.MISSING_IDENTITY, "anonymousId"),
        ({"event": "x", "anonymousId": "a", "properties": [1]}, "track", Reason.INVALID_FIELD, "properties"),
        ({"event": "x", "anonymousId": "a", "context": "c"}, "track", Reason.INVALID_FIELD, "context"),
        ({"event": "x", "anonymousId": "a", "traits": 3}, "identify", Reason.INVALID_FIELD, "traits"),
        (
            {"event": "x", "anonymousId": "a", "integrations": []},
            "track",
            Reason.INVALID_FIELD,
            "integrations",
        ),
        ({"event": {"n": 1}, "anonymousId": "a"}, "track", Reason.INVALID_FIELD, "event"),
        ({"event": "x", "anonymousId": True}, "track", Reason.INVALID_FIELD, "anonymousId"),
        ({"event": "x", "userId": ["u"]}, "track", Reason.INVALID_FIELD, "userId"),
        ({"event": "x", "anonymousId": "a", "timestamp": {}}, "track", Reason.INVALID_FIELD, "timestamp"),
    ],
)
def test_segment_envelope_rejections(
    body: dict[str, Any], path_type: str, reason: Reason, field: str
) -> None:
    result = map_segment(body, STAMP, LIMITS, path_type)
    assert not result.ok and result.events == []
    assert [(e.reason, e.field, e.index) for e in result.errors] == [(reason, field, 0)]
    assert result.status == 400


def test_segment_batch_reports_each_bad_event_and_publishes_nothing() -> None:
    body = {
        "batch": [
            {"type": "track", "anonymousId": "ok"},
            {"type": "nope", "anonymousId": "a"},
            "not an object",
            {"type": "track"},
            {"anonymousId": "a"},
        ]
    }
    result = map_segment(body, STAMP, LIMITS, None)
    assert result.events == []
    assert [(e.index, e.reason) for e in result.errors] == [
        (1, Reason.UNKNOWN_TYPE),
        (2, Reason.NOT_AN_OBJECT),
        (3, Reason.MISSING_IDENTITY),
        (4, Reason.UNKNOWN_TYPE),
    ]
    assert result.status == 400


@pytest.mark.parametrize(
    ("body", "reason", "status"),
    [
        ([1, 2], Reason.NOT_AN_OBJECT, 400),
        ({"batch": {"type": "track"}}, Reason.INVALID_FIELD, 400),
        ({"batch": []}, Reason.EMPTY_BATCH, 400),
        ({"batch": [{"type": "track", "userId": "u"}] * 4}, Reason.BATCH_TOO_LARGE, 413),
    ],
)
def test_segment_batch_request_rejections(body: object, reason: Reason, status: int) -> None:
    result = map_segment(body, STAMP, Limits(max_batch=3), None)
    assert [e.reason for e in result.errors] == [reason]
    assert result.status == status


def test_event_too_large_is_413() -> None:
    body = {"anonymousId": "a", "event": "x", "properties": {"blob": "x" * 2000}}
    result = map_segment(body, STAMP, Limits(max_event_bytes=1024), "track")
    assert [e.reason for e in result.errors] == [Reason.EVENT_TOO_LARGE]
    assert result.status == 413
    assert map_segment(body, STAMP, Limits(max_event_bytes=4096), "track").ok


def test_event_size_approximates_its_json() -> None:
    body = {
        "anonymousId": "a" * 100,
        "event": "e" * 100,
        "properties": {"k": "v" * 3000},
        "context": {"c": "d" * 500},
    }
    real = len(orjson.dumps(body))
    assert not map_segment(body, STAMP, Limits(max_event_bytes=int(real * 0.9)), "track").ok
    assert map_segment(body, STAMP, Limits(max_event_bytes=int(real * 1.2)), "track").ok


# -- app-tracking --------------------------------------------------------------------------


def test_app_tracking_track() -> None:
    body = {
        "uuid": "u-1",
        "event": "track",
        "action": "level_up",
        "action_properties": {"level": 3},
        "user_id": "player-1",
        "timestamp": 1700000000,
        "ref": "menu",
        "session_id": "s-9",
    }
    rec = _one(map_app_tracking(body, STAMP, LIMITS))
    assert rec["message_id"] == "u-1"
    assert rec["type"] == "track"
    assert rec["event"] == "level_up"
    assert orjson.loads(rec["properties"]) == {"level": 3}
    assert rec["user_id"] == "player-1"
    assert rec["timestamp"] == "1700000000"
    assert rec["ref"] == "menu"
    assert rec["session_id"] == "s-9"
    assert rec["source"] == "app_tracking"


def test_app_tracking_heartbeat_screen_identify() -> None:
    hb = _one(
        map_app_tracking(
            {"event": "heartbeat", "session_id": "s", "offset": 45, "user_id": "p"}, STAMP, LIMITS
        )
    )
    assert hb["type"] == "heartbeat" and hb["session_id"] == "s" and hb["heartbeat_offset"] == 45.0
    sc = _one(map_app_tracking({"event": "screen", "action": "shop", "user_id": "p"}, STAMP, LIMITS))
    assert sc["type"] == "screen" and sc["event"] == "shop"
    ident = _one(
        map_app_tracking(
            {"event": "identify", "user_id": "p", "action_properties": '{"country": "GB"}'}, STAMP, LIMITS
        )
    )
    assert ident["type"] == "identify"
    assert orjson.loads(ident["traits"]) == {"country": "GB"}, "a JSON-string payload is parsed"


def test_app_tracking_bad_offset_is_kept_for_the_pipeline() -> None:
    rec = _one(
        map_app_tracking(
            {"event": "heartbeat", "session_id": "s", "offset": "soon", "user_id": "p"}, STAMP, LIMITS
        )
    )
    assert rec["heartbeat_offset"] is None
    assert orjson.loads(rec["properties"])["offset"] == "soon"


def test_app_tracking_events_list_and_extra_fields() -> None:
    result = map_app_tracking(
        {
            "events": [
                {"event": "track", "action": "a", "user_id": "p", "platform": "ios"},
                {"event": "track", "action": "b", "user_id": "p"},
            ]
        },
        STAMP,
        LIMITS,
    )
    assert result.ok and len(result.events) == 2
    assert orjson.loads(result.events[0]["context"]) == {"extra": {"platform": "ios"}}


@pytest.mark.parametrize(
    ("body", "reason", "field"),
    [
        ({"event": "purchase", "user_id": "p"}, Reason.UNKNOWN_TYPE, "event"),
        ({"action": "x", "user_id": "p"}, Reason.UNKNOWN_TYPE, "event"),
        ({"event": "track", "action": "x"}, Reason.MISSING_IDENTITY, "anonymousId"),
        (
            {"event": "track", "action": "x", "user_id": "p", "action_properties": "{nope"},
            Reason.INVALID_FIELD,
            "action_properties",
        ),
        (
            {"event": "track", "action": "x", "user_id": "p", "action_properties": [1]},
            Reason.INVALID_FIELD,
            "action_properties",
        ),
    ],
)
def test_app_tracking_rejections(body: dict[str, Any], reason: Reason, field: str) -> None:
    result = map_app_tracking(body, STAMP, LIMITS)
    assert [(e.reason, e.field) for e in result.errors] == [(reason, field)]


def test_app_tracking_body_shape_rejections() -> None:
    assert map_app_tracking("x", STAMP, LIMITS).errors[0].reason == Reason.NOT_AN_OBJECT
    assert map_app_tracking({"events": {}}, STAMP, LIMITS).errors[0].reason == Reason.INVALID_FIELD
    assert map_app_tracking({"events": []}, STAMP, LIMITS).errors[0].reason == Reason.EMPTY_BATCH


# -- AppsFlyer -----------------------------------------------------------------------------

AF = {
    "appsflyer_id": "1700000000000-1234567",
    "customer_user_id": "cu-1",
    "eventName": "af_purchase",
    "eventValue": '{"af_revenue": "9.99", "af_content_id": "sku1"}',
    "eventCurrency": "EUR",
    "eventTime": "2026-11-20 10:00:00.000",
    "ip": "203.0.113.99",
    "bundleIdentifier": "com.x.y",
    "os": "17.1",
}


def test_appsflyer_maps_every_field() -> None:
    rec = _one(map_appsflyer(AF, STAMP, LIMITS))
    assert rec["type"] == "track"
    assert rec["event"] == "af_purchase"
    assert rec["anonymous_id"] == "1700000000000-1234567"
    assert rec["user_id"] == "cu-1"
    assert orjson.loads(rec["properties"]) == {
        "af_revenue": "9.99",
        "af_content_id": "sku1",
        "af_currency": "EUR",
    }
    assert rec["timestamp"] == "2026-11-20 10:00:00.000"
    assert rec["ip"] == "203.0.113.99", "the device IP from the body, not the server's"
    assert orjson.loads(rec["context"]) == {"appsflyer": {"bundleIdentifier": "com.x.y", "os": "17.1"}}
    assert rec["source"] == "appsflyer_s2s"


def test_appsflyer_retry_gets_the_same_message_id() -> None:
    a = _one(map_appsflyer(AF, STAMP, LIMITS))
    b = _one(map_appsflyer(dict(AF), Stamp(app_id="shop", received_at=2, request_id="other"), LIMITS))
    assert a["message_id"] == b["message_id"]
    c = _one(map_appsflyer({**AF, "eventTime": "2026-11-20 10:00:00.001"}, STAMP, LIMITS))
    assert c["message_id"] != a["message_id"]


def test_appsflyer_object_value_and_currency_in_value_wins() -> None:
    rec = _one(map_appsflyer({**AF, "eventValue": {"af_revenue": 1, "af_currency": "USD"}}, STAMP, LIMITS))
    assert orjson.loads(rec["properties"]) == {"af_revenue": 1, "af_currency": "USD"}
    rec = _one(map_appsflyer({**AF, "eventValue": "", "eventCurrency": None}, STAMP, LIMITS))
    assert rec["properties"] == "{}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"eventName": "x"}, Reason.MISSING_IDENTITY),
        ({**AF, "eventValue": "not json"}, Reason.INVALID_FIELD),
        ({**AF, "eventValue": "[1, 2]"}, Reason.INVALID_FIELD),
        ({**AF, "eventName": ["x"]}, Reason.INVALID_FIELD),
        ([AF], Reason.NOT_AN_OBJECT),
    ],
)
def test_appsflyer_rejections(body: object, reason: Reason) -> None:
    assert [e.reason for e in map_appsflyer(body, STAMP, LIMITS).errors] == [reason]


# -- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "masked"),
    [
        ("198.51.100.23", "198.51.100.0"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_mask_ip(ip: str, masked: str) -> None:
    assert mask_ip(ip) == masked


def test_envelope_error_json() -> None:
    err = map_segment({"event": "x"}, STAMP, LIMITS, "track").errors[0]
    assert err.to_json() == {
        "reason": "missing_identity",
        "message": err.message,
        "index": 0,
        "field": "anonymousId",
    }
