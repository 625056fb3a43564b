"""The Avro contract: documented fields, both wire formats, and BACKWARD compatibility."""

from __future__ import annotations

import io
import uuid

import fastavro
import pytest

from schemas import SCHEMA_NAMES, codec, defaults, latest, versions
from schemas.serde import SINGLE_OBJECT_MARKER, SingleObjectCodec
from trackflow.exceptions import SerdeError, UnknownSchemaError


def sample(name: str) -> dict:
    """A record of schema ``name`` with every required field filled."""
    rec = defaults(name)
    for f in latest(name).source["fields"]:
        if "default" in f:
            continue
        t = f["type"]
        if isinstance(t, dict) and t.get("type") == "map":
            rec[f["name"]] = {"EUR": 0.92, "GBP": 0.78}
        elif isinstance(t, dict) or t in ("long", "int"):
            rec[f["name"]] = 1_700_000_000_123
        elif t == "double":
            rec[f["name"]] = 12.5
        elif t == "boolean":
            rec[f["name"]] = True
        else:
            rec[f["name"]] = f"{f['name']}-value"
    return rec


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_field_is_documented(name: str) -> None:
    for v in versions(name):
        assert v.source.get("doc"), f"{name} v{v.version} has no record doc"
        undocumented = [f["name"] for f in v.source["fields"] if not f.get("doc")]
        assert undocumented == [], f"{name} v{v.version}: {undocumented}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_single_object_round_trip(name: str) -> None:
    c = codec(name)
    rec = sample(name)
    data = c.encode(rec, "t")
    assert data[:2] == SINGLE_OBJECT_MARKER
    assert data[2:10] == latest(name).fingerprint
    assert c.decode(data, "t") == rec


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_confluent_round_trip_with_mock_registry(name: str) -> None:
    c = codec(name, f"mock://{uuid.uuid4().hex}")
    rec = sample(name)
    data = c.encode(rec, "topic-a")
    assert data[0] == 0  # Confluent magic byte, then a 4-byte schema id
    assert c.decode(data, "topic-a") == rec


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_backward_compatible_with_every_earlier_version(name: str) -> None:
    """Data written with any released version resolves with the newest (reader) schema."""
    reader = latest(name)
    c = SingleObjectCodec(name)
    for old in versions(name):
        rec = {f["name"]: sample(name)[f["name"]] for f in old.source["fields"]}
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, old.parsed, rec)
        data = SINGLE_OBJECT_MARKER + old.fingerprint + buf.getvalue()
        out = c.decode(data, "t")
        for f in reader.source["fields"]:
            expected = rec[f["name"]] if f["name"] in rec else f["default"]
            assert out[f["name"]] == expected, (name, old.version, f["name"])


def test_raw_event_has_a_second_version_that_adds_library() -> None:
    names = [[f["name"] for f in v.source["fields"]] for v in versions("raw_event")]
    assert len(names) >= 2
    assert "library" not in names[0] and "library" in names[1]


def test_unknown_fingerprint_is_a_clear_error() -> None:
    data = SINGLE_OBJECT_MARKER + b"\x00" * 8 + b"\x02"
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint"):
        codec("raw_event").decode(data, "t")


def test_wrong_schema_and_garbage_are_rejected() -> None:
    session = codec("session").encode(sample("session"), "t")
    with pytest.raises(SerdeError, match="expected raw_event"):
        codec("raw_event").decode(session, "t")
    with pytest.raises(SerdeError, match="not an Avro single-object"):
        codec("raw_event").decode(b'{"json": true}', "t")
    truncated = codec("raw_event").encode(sample("raw_event"), "t")[:14]
    with pytest.raises(SerdeError, match="corrupt"):
        codec("raw_event").decode(truncated, "t")


def test_encoding_a_record_missing_a_required_field_names_the_schema() -> None:
    rec = sample("raw_event")
    rec["message_id"] = None
    with pytest.raises(SerdeError, match="raw_event"):
        codec("raw_event").encode(rec, "t")


def test_unknown_schema_name() -> None:
    with pytest.raises(SerdeError, match="unknown schema"):
        codec("nope")
