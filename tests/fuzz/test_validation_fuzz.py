"""Fuzz the pipeline's stages: every input ends as an enriched event or a dead letter with a reason.

Inputs are drawn at three levels - arbitrary Kafka values (bytes), Avro-valid RawEvents with hostile
field contents (JSON text with NaN, huge numbers, deep nesting, surrogates, 10k-character names,
odd timestamps and revenue), and the same through an app with every privacy option on - and fed to
:meth:`pipeline.process.Processor.process_bytes`, exactly what the worker's agent calls. The agent
only stops on an exception, so "never raises" is the guarantee; ``internal_error`` dead letters
would mean a stage crashed, so they fail the test too.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import privacy
from pipeline.fx import RateTable
from pipeline.process import DictState, Processor
from pipeline.reasons import DUPLICATE_REASONS, Reason
from pipeline.settings import PipelineSettings
from schemas import codec, defaults
from trackflow.apps import App

T0 = 1_790_000_000_000
RAW = codec("raw_event")
OUT = {
    "enriched_event": codec("enriched_event"),
    "invalid_event": codec("invalid_event"),
    "session": codec("session"),
}
APPS = {
    "plain": App(app_id="plain", name="P", write_key_hash="x", reporting_currency="GBP"),
    "private": App(
        app_id="private",
        name="Q",
        write_key_hash="y",
        mask_ip=True,
        hash_user_ids=True,
        drop_properties=("email", "revenue"),
    ),
}
NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "9" * 40,
        "-" + "9" * 40,
        "0x1F",
        "1_000",
        "\x00",
        "\ud800",
        "\U0001f600" * 300,
        "e" * 10_000,
        "=cmd|' /C calc'!A0",
        '"quoted',
        "a b",
        "null",
        "true",
        "[]",
        "{}",
        "2026-02-30T25:61:61Z",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
        "1790000000",
        "1790000000000",
        "1790000000000000",
        "-1",
        "1.5e3",
        "0.0000001",
    ]
)
TEXT = st.text(max_size=30) | NASTY_TEXT
KEYS = st.sampled_from(
    [
        "revenue",
        "af_revenue",
        "value",
        "currency",
        "af_currency",
        "session_id",
        "offset",
        "error_level",
        "error_code",
        "error_message",
        "error_stacktrace",
        "metadata",
        "bundle_id",
        "bundle_paid_amount",
        "bundle_paid_currency",
        "platform",
        "tx_ref",
        "product_list",
        "email",
        "utm_source",
        "name",
        "x",
    ]
) | st.text(max_size=6)
SCALARS = st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False) | TEXT
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=25,
)


def _json_text(v: Any) -> str:
    try:
        return orjson.dumps(v).decode()
    except (TypeError, orjson.JSONEncodeError):
        return "{}"


# JSON text fields: well-formed objects, other JSON, non-JSON text, NaN/Infinity literals, deep nesting
JSON_TEXT = (
    st.dictionaries(KEYS, JSONISH, max_size=8).map(_json_text)
    | JSONISH.map(_json_text)
    | TEXT
    | st.sampled_from(
        [
            '{"v": NaN}',
            '{"v": Infinity}',
            '{"n": ' + "9" * 400 + "}",
            '{"a":' * 600 + "1" + "}" * 600,
            '{"revenue": "1e400"}',
            '{"revenue": -0.0, "currency": "XXX"}',
            '{"a":1,"a":2}',
        ]
    )
)
EVENT = (
    st.none()
    | TEXT
    | st.sampled_from(
        [
            "session_start",
            "session_end",
            "heartbeat",
            "error",
            "app_error",
            "monetization",
            "web3_purchase",
            "anonymize",
            "reset",
            "screen",
        ]
    )
)


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    rec = defaults("raw_event")
    rec.update(
        message_id=draw(st.text(max_size=12) | st.sampled_from(["m1", "m2"])),
        type=draw(
            st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "heartbeat", "x", ""])
        ),
        event=draw(EVENT),
        app_id=draw(st.sampled_from(["plain", "private", "unknown", ""])),
        anonymous_id=draw(st.none() | st.sampled_from(["d1", "d2"]) | TEXT),
        user_id=draw(st.none() | st.sampled_from(["u1", "u2"]) | TEXT),
        previous_id=draw(st.none() | TEXT),
        session_id=draw(st.none() | TEXT),
        heartbeat_offset=draw(st.none() | st.floats()),  # NaN and +-inf are valid Avro doubles
        timestamp=draw(st.none() | TEXT | st.integers(-(10**16), 10**16).map(str)),
        sent_at=draw(st.none() | TEXT),
        received_at=draw(st.sampled_from([T0, 0, 2**62, -1])),
        properties=draw(JSON_TEXT),
        traits=draw(JSON_TEXT),
        context=draw(JSON_TEXT),
        ip=draw(st.none() | st.sampled_from(["203.0.113.9", "2001:db8::1", "not an ip"]) | TEXT),
        user_agent=draw(st.none() | TEXT),
    )
    return rec


def _processor() -> Processor:
    rates = RateTable()
    rates.set_hour(T0 - 48 * 3_600_000, {"EUR": 0.9, "GBP": 0.78, "JPY": 150.0})
    return Processor(
        PipelineSettings(),
        APPS.get,
        rates,
        DictState(),
        privacy.Privacy(salt=b"fuzz-salt", suppressed=lambda a, u: u == "u2"),
    )


def _check(res: Any) -> None:
    outputs = len(res.enriched) + len(res.invalid)
    assert outputs == 1 or (outputs == 0 and res.outcome in {r.value for r in DUPLICATE_REASONS}), res.outcome
    for _, rec in res.enriched:
        OUT["enriched_event"].encode(rec, "t")
    for _, rec in res.invalid:
        OUT["invalid_event"].encode(rec, "t")
        assert rec["reason"] in {r.value for r in Reason}
        assert rec["reason"] != Reason.INTERNAL_ERROR.value, rec["message"]
        assert rec["message"] and rec["stage"]
    for _, rec in res.sessions:
        OUT["session"].encode(rec, "t")


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(events=st.lists(raw_events(), min_size=1, max_size=6))
def test_every_raw_event_is_enriched_or_dead_lettered(events: list[dict[str, Any]]) -> None:
    proc = _processor()
    for i, raw in enumerate(events):
        try:
            data = RAW.encode(raw, "raw")
        except Exception:  # not representable in Avro (e.g. a lone surrogate): the collector refuses those
            continue
        res = proc.process_bytes(RAW, data, pos=(0, i), topic="raw", now=T0 + 1000)
        _check(res)
        if raw["app_id"] == "private":
            for _, rec in res.enriched:
                uid = rec.get("user_id")
                assert uid is None or privacy.is_hashed(uid)
                props = orjson.loads(rec["properties"]) if rec["properties"] else {}
                assert not isinstance(props, dict) or not {"email", "revenue"} & set(props)
        for _, rec in res.enriched:
            assert rec["user_id"] != "u2"  # suppressed
            for f in ("revenue", "revenue_usd", "heartbeat_offset"):
                v = rec.get(f)
                assert v is None or not (isinstance(v, float) and math.isnan(v)), f


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.binary(max_size=400) | st.binary(max_size=40).map(lambda b: b"\xc3\x01" + b))
def test_any_kafka_value_is_decoded_or_dead_lettered(data: bytes) -> None:
    res = _processor().process_bytes(RAW, data, pos=(1, 7), topic="raw", now=T0)
    _check(res)
    if res.invalid:
        rec = res.invalid[0][1]
        assert rec["source_partition"] == 1 and rec["source_offset"] == 7
