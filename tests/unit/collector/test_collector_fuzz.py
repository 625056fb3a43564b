"""Whatever JSON arrives, the mappers answer with events or envelope errors, never an exception."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.encoder import FastRecordEncoder
from collector.mapping import Limits, Reason, Stamp, map_app_tracking, map_appsflyer, map_segment

STAMP = Stamp(app_id="fuzz", received_at=1, request_id="r", ip="192.0.2.1", mask_ip=True)
ENC = FastRecordEncoder("raw_event")
KEYS = st.sampled_from(
    [
        "type",
        "event",
        "anonymousId",
        "userId",
        "messageId",
        "properties",
        "traits",
        "context",
        "integrations",
        "timestamp",
        "sentAt",
        "name",
        "groupId",
        "previousId",
        "batch",
        "events",
        "uuid",
        "action",
        "action_properties",
        "user_id",
        "session_id",
        "offset",
        "ref",
        "eventName",
        "eventValue",
        "eventCurrency",
        "eventTime",
        "appsflyer_id",
        "customer_user_id",
        "ip",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["track", "identify", "page", "heartbeat", "screen", "alias", "group"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=6)),
    max_leaves=30,
)


def _check(result: Any) -> None:
    assert bool(result.events) != bool(result.errors)
    for rec in result.events:
        assert ENC.encode(rec, "t")[:2] == b"\xc3\x01"
    for err in result.errors:
        assert isinstance(err.reason, Reason)


@settings(max_examples=400, deadline=None)
@given(body=JSON, path_type=st.sampled_from([None, "track", "identify", "page", "screen", "group", "alias"]))
def test_segment_never_raises(body: Any, path_type: str | None) -> None:
    _check(map_segment(body, STAMP, Limits(), path_type))


@settings(max_examples=300, deadline=None)
@given(body=JSON)
def test_app_tracking_and_appsflyer_never_raise(body: Any) -> None:
    _check(map_app_tracking(body, STAMP, Limits()))
    _check(map_appsflyer(body, STAMP, Limits()))


def test_deep_nesting_is_an_envelope_error() -> None:
    deep = orjson.loads('{"a":' * 300 + "1" + "}" * 300)
    result = map_segment({"anonymousId": "a", "properties": deep}, STAMP, Limits(), "track")
    assert [(e.reason, e.field) for e in result.errors] == [(Reason.INVALID_FIELD, "properties")]
