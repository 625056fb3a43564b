"""Every validation rule and its reason code."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.exceptions import RejectedEvent
from pipeline.reasons import Reason
from pipeline.settings import PipelineSettings
from pipeline.validate import is_plain_number, parse_time, skew_corrected, validate

T0 = 1_790_000_000_000

S = PipelineSettings()
ERROR = {
    "error_level": "Error",
    "error_code": "E1",
    "error_message": "boom",
    "error_stacktrace": "at x",
    "metadata": {"k": 1},
}
MONET = {
    "bundle_id": "b1",
    "bundle_package_items": ["gem"],
    "bundle_paid_id": "p1",
    "bundle_paid_amount": "4.99",
    "bundle_paid_currency": "EUR",
    "platform": "ios",
    "tx_ref": "tx-1",
}


def rejected(raw: dict) -> RejectedEvent:
    with pytest.raises(RejectedEvent) as ei:
        validate(raw, S)
    return ei.value


def test_valid_track_passes(raw):
    ev = validate(raw(), S)
    assert ev.device_id == "dev1" and ev.event_time == T0 and ev.revenue is None


@pytest.mark.parametrize("name", ['"quoted', "=formula", "+plus", "-minus", "has space", "tab\there"])
def test_bad_event_names(raw, name):
    err = rejected(raw(event=name))
    assert err.reason is Reason.INVALID_EVENT_NAME and err.field == "event"


def test_event_names_are_case_sensitive_and_may_contain_inner_signs(raw):
    assert validate(raw(event="Purchase-Done"), S).raw["event"] == "Purchase-Done"


def test_track_without_name(raw):
    assert rejected(raw(event=None)).reason is Reason.MISSING_EVENT_NAME


def test_screen_names_may_have_spaces(raw):
    assert validate(raw(type="screen", event="Home Screen"), S).raw["event"] == "Home Screen"


def test_value_length_limit_at_any_depth(raw):
    assert validate(raw(properties={"a": "x" * 1000}), S)
    err = rejected(raw(properties={"list": [{"deep": "x" * 1001}]}))
    assert err.reason is Reason.VALUE_TOO_LONG and err.field == "properties.list[0].deep"
    assert "1001" in str(err)
    assert rejected(raw(type="identify", traits={"bio": "y" * 1001})).field == "traits.bio"


@pytest.mark.parametrize("value", [12, 12.5, -3, "1234.56", "-0.99", "7"])
def test_plain_revenue_accepted_including_refunds(raw, value):
    ev = validate(raw(properties={"revenue": value}), S)
    assert ev.revenue == value and ev.currency == "USD"


@pytest.mark.parametrize("value", ["1,234.56", "$12", "12 USD", "1e3", "", True, {"a": 1}, "NaN"])
def test_non_plain_revenue_rejected(raw, value):
    for fld in ("af_revenue", "revenue", "value"):
        err = rejected(raw(properties={fld: value}))
        assert err.reason is Reason.INVALID_REVENUE and err.field == f"properties.{fld}"


def test_plain_number_helper():
    assert is_plain_number(1) and is_plain_number("0.5") and not is_plain_number(float("inf"))


def test_currency_iso_token_and_address(raw):
    assert validate(raw(properties={"af_revenue": 1, "af_currency": "eur"}), S).currency == "EUR"
    assert validate(raw(properties={"revenue": 1, "currency": "ETH"}), S).currency == "ETH"
    addr = "0xA0b86991c6218b36c1d19d4a2e9eb0ce3606eB48"
    assert validate(raw(properties={"revenue": 1, "currency": addr}), S).currency == "USDC"
    other = "0x" + "1" * 40
    assert validate(raw(properties={"revenue": 1, "currency": other}), S).currency == other


@pytest.mark.parametrize("cur", ["XXXX", "ZZZ", "dollars", 5, ""])
def test_bad_currency(raw, cur):
    err = rejected(raw(properties={"revenue": 1, "currency": cur}))
    assert err.reason is Reason.INVALID_CURRENCY and err.field == "properties.currency"


def test_error_event_schema(raw):
    assert validate(raw(event="error", properties=ERROR), S)
    for f in ERROR:
        props = {k: v for k, v in ERROR.items() if k != f}
        err = rejected(raw(event="error", properties=props))
        assert err.reason is Reason.MISSING_FIELD and err.field == f"properties.{f}"
        assert f in str(err)
    err = rejected(raw(event="error", properties=ERROR | {"error_level": "Fatal"}))
    assert err.reason is Reason.INVALID_ERROR_LEVEL


def test_any_event_with_error_level_is_an_error_event(raw):
    assert rejected(raw(event="crash", properties={"error_level": "Info"})).reason is Reason.MISSING_FIELD


@pytest.mark.parametrize("name", ["web2_monetization", "web3_monetization"])
def test_monetization_schema(raw, name):
    ev = validate(raw(event=name, properties=MONET), S)
    assert ev.revenue == "4.99" and ev.currency == "EUR"
    for f in MONET:
        err = rejected(raw(event=name, properties={k: v for k, v in MONET.items() if k != f}))
        assert err.reason is Reason.MISSING_FIELD and err.field == f"properties.{f}"
    assert (
        rejected(raw(event=name, properties=MONET | {"bundle_paid_amount": "4,99"})).reason
        is Reason.INVALID_REVENUE
    )


def test_web3_token_address_maps_to_symbol(raw):
    props = MONET | {
        "bundle_paid_currency": "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
        "bundle_paid_amount": 0.5,
    }
    assert validate(raw(event="web3_monetization", properties=props), S).currency == "ETH"


def test_timestamps(raw):
    assert rejected(raw(timestamp="yesterday")).reason is Reason.INVALID_TIMESTAMP
    err = rejected(raw(sent_at="soon"))
    assert err.reason is Reason.INVALID_TIMESTAMP and err.field == "sent_at"
    assert parse_time("2026-09-21T10:00:00Z", "t") == parse_time("2026-09-21T10:00:00", "t")
    assert parse_time("1790000000", "t") == parse_time("1790000000000", "t") == 1_790_000_000_000


def test_future_timestamp_limit_is_configurable(raw):
    two_h = str(T0 + 2 * 3_600_000)
    assert rejected(raw(timestamp=two_h)).reason is Reason.FUTURE_TIMESTAMP
    assert validate(raw(timestamp=two_h), PipelineSettings(max_future_s=3 * 3600)).event_time == int(two_h)


def test_skew_correction():
    # client clock 1 h fast: sent_at - timestamp = 10 s, so the event happened 10 s before receipt
    assert skew_corrected(T0, T0 + 3_600_000 - 10_000, T0 + 3_600_000) == T0 - 10_000
    assert skew_corrected(T0, None, None) == T0
    assert skew_corrected(T0, T0 - 5, None) == T0 - 5


def test_envelope_rules(raw):
    assert rejected(raw(type="anonymize")).reason is Reason.UNKNOWN_TYPE
    assert rejected(raw(anonymous_id=None, user_id=None)).reason is Reason.MISSING_IDENTITY
    assert rejected(raw(properties="{not json")).reason is Reason.INVALID_JSON
    assert rejected(raw(context="[1, 2]")).field == "context"


@pytest.mark.parametrize("field", ["properties", "traits", "context"])
def test_nesting_deeper_than_32_levels_is_rejected_with_the_path(raw, field):
    deep: dict = {"leaf": 1}
    for _ in range(31):
        deep = {"a": deep}
    validate(raw(**{field: orjson.dumps(deep).decode()}), S)  # 32 levels: fine
    text = "[" * 600 + "]" * 600  # beyond orjson's dumps limit (255), below its loads limit
    rej = rejected(raw(**{field: '{"k": ' + text + "}"}))
    assert rej.reason is Reason.INVALID_JSON and rej.field.startswith(f"{field}.k")
    assert "nested more than 32 levels" in str(rej)


def test_heartbeats(raw):
    ev = validate(raw(type="heartbeat", event=None, session_id="s1", heartbeat_offset=30.0), S)
    assert ev.is_heartbeat and ev.heartbeat_offset == 30.0
    ev = validate(raw(event="heartbeat", session_id="s1", properties={"offset": 60}), S)
    assert ev.heartbeat_offset == 60.0
    assert rejected(raw(event="heartbeat", properties={"offset": 1})).field == "session_id"
    assert rejected(raw(event="heartbeat", session_id="s")).reason is Reason.MISSING_FIELD
    assert (
        rejected(raw(event="heartbeat", session_id="s", heartbeat_offset=-1.0)).reason
        is Reason.INVALID_HEARTBEAT
    )


def test_33_levels_in_a_short_text_are_still_rejected(raw):
    deep: dict = {"leaf": 1}
    for _ in range(32):
        deep = {"a": deep}
    text = orjson.dumps(deep).decode()
    assert len(text) < 1000  # short enough for the length pre-check: the bracket count decides
    assert rejected(raw(properties=text)).reason is Reason.INVALID_JSON


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=40,
)


@given(value=st.dictionaries(st.text(max_size=4), _json_values, max_size=5), limit=st.integers(1, 40))
def test_the_pre_check_passes_only_what_the_full_walk_passes(value, limit):
    from pipeline.validate import check_lengths, within_limits

    text = orjson.dumps(value).decode()
    if within_limits(text, limit):
        check_lengths(value, "properties", limit)  # must not raise
    # and the pre-check never hides a too-long value or too deep a nesting
    try:
        check_lengths(value, "properties", limit)
    except RejectedEvent:
        assert not within_limits(text, limit)


def test_a_context_is_parsed_once_per_text_and_a_bad_one_is_rejected_every_time(raw):
    from pipeline import validate as v

    v._parsed_context.cache_clear()
    text = '{"os": {"name": "iOS"}, "locale": "en-GB"}'
    first = validate(raw(context=text), S).context
    assert first == {"os": {"name": "iOS"}, "locale": "en-GB"}
    assert validate(raw(message_id="m2", context=text), S).context is first  # the same parsed value
    deep = '{"k": ' + "[" * 40 + "]" * 40 + "}"
    for _ in range(2):  # never remembered
        assert rejected(raw(context=deep)).reason is Reason.INVALID_JSON
        assert rejected(raw(context="{oops")).reason is Reason.INVALID_JSON
        assert rejected(raw(context="[1]")).field == "context"
    cached = v._parsed_context.cache_info()
    assert cached.currsize == 1 and cached.misses == 7  # the good text once; the bad ones every time
    # bounded: a full cache lets the least recently used text go
    for i in range(cached.maxsize):
        validate(raw(message_id=f"n{i}", context=f'{{"n": {i}}}'), S)
    assert validate(raw(context='{"fresh": 1}'), S).context == {"fresh": 1}
    assert v._parsed_context.cache_info().currsize == cached.maxsize
