"""Avro encoding of the records that travel between stages.

Two wire formats, chosen by configuration:

- **Single-object encoding** (the default, no registry): the Avro spec's ``C3 01`` marker, the
  8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's canonical form, then the
  binary datum. Decoding looks the fingerprint up among every version shipped in ``schemas/`` and
  resolves the datum against the newest version (the reader schema), so old data stays readable.
- **Confluent framing** (``TRACKFLOW_SCHEMA_REGISTRY_URL`` set): magic byte 0, the 4-byte schema
  id, then the datum, through confluent-kafka's ``AvroSerializer`` / ``AvroDeserializer``.
  ``mock://name`` gives confluent-kafka's in-process registry (shared per name, for tests).

Timestamps (``timestamp-millis``) are plain ``int`` milliseconds on both sides, in both modes.

Use :func:`codec` to get the :class:`Codec` of one schema::

    raw = codec("raw_event")
    data = raw.encode(record, topic)
    record = raw.decode(data, topic)
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

import fastavro
import orjson
from fastavro.schema import fingerprint, to_parsing_canonical_form

from trackflow.exceptions import SerdeError, UnknownSchemaError

SCHEMA_DIR = Path(__file__).resolve().parent
SCHEMA_NAMES = ("raw_event", "enriched_event", "session", "invalid_event", "fx_rates")
SINGLE_OBJECT_MARKER = b"\xc3\x01"

Record = dict[str, Any]


def _strip_logical(schema: Any) -> Any:
    """Drop logicalType annotations so timestamps stay int milliseconds.

    The Parsing Canonical Form ignores logicalType, so fingerprints are unchanged.
    """
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(v) for v in schema]
    return schema


@dataclass(frozen=True)
class SchemaVersion:
    """One shipped version of one schema."""

    name: str
    version: int
    source: dict[str, Any]  # the .avsc as written (with docs and logical types)
    parsed: Any  # fastavro-parsed, logical types stripped
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO

    @property
    def text(self) -> str:
        """The schema as registry text.

        Apicurio Registry rewrites ``:"{}"`` to ``:{}`` before parsing, which turns our ``"{}"``
        string defaults into objects and rejects the schema; a tab after the colon is the same
        JSON and avoids that rewrite.
        """
        return orjson.dumps(self.source).decode().replace(':"{}"', ':\t"{}"')


def _fp_bytes(parsed_source: dict[str, Any]) -> bytes:
    canonical = to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(parsed_source)))
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "big")[::-1]


@cache
def versions(name: str) -> tuple[SchemaVersion, ...]:
    """Every shipped version of schema ``name``, oldest first."""
    folder = SCHEMA_DIR / name
    files = sorted(folder.glob("v*.avsc"), key=lambda p: int(p.stem[1:]))
    if not files:
        raise SerdeError(f"no schema files in {folder}", schema=name)
    out = []
    for p in files:
        src = orjson.loads(p.read_bytes())
        parsed = fastavro.parse_schema(_strip_logical(copy.deepcopy(src)))
        out.append(SchemaVersion(name, int(p.stem[1:]), src, parsed, _fp_bytes(src)))
    return tuple(out)


def latest(name: str) -> SchemaVersion:
    """The newest version of schema ``name``: what writers write and readers resolve to."""
    return versions(name)[-1]


@cache
def _by_fingerprint() -> dict[bytes, SchemaVersion]:
    return {v.fingerprint: v for n in SCHEMA_NAMES for v in versions(n)}


def defaults(name: str) -> Record:
    """A record of schema ``name`` holding every field's default (``None`` where it has none)."""
    return {f["name"]: f.get("default") for f in latest(name).source["fields"]}


class Codec(Protocol):
    """Encodes and decodes the records of one schema."""

    name: str

    def encode(self, record: Record, topic: str) -> bytes: ...

    def decode(self, data: bytes, topic: str) -> Record: ...


class SingleObjectCodec:
    """Avro single-object encoding against the schemas shipped in ``schemas/``.

    Parameters:
        name: the schema folder name, e.g. ``raw_event``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._writer = latest(name)
        self._header = SINGLE_OBJECT_MARKER + self._writer.fingerprint
        self._readers: dict[bytes, Any] = {}

    def encode(self, record: Record, topic: str = "") -> bytes:
        buf = BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self._writer.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerdeError(f"cannot encode {self.name}: {exc}", schema=self.name) from exc
        return buf.getvalue()

    def decode(self, data: bytes, topic: str = "") -> Record:
        if len(data) < 10 or data[:2] != SINGLE_OBJECT_MARKER:
            raise SerdeError(f"not an Avro single-object payload for {self.name}", schema=self.name)
        fp = data[2:10]
        writer = self._writer if fp == self._writer.fingerprint else _by_fingerprint().get(fp)
        if writer is None:
            raise UnknownSchemaError(
                f"unknown schema fingerprint {fp[::-1].hex()} for {self.name}", schema=self.name
            )
        if writer.name != self.name:
            raise SerdeError(f"payload is a {writer.name}, expected {self.name}", schema=self.name)
        buf = BytesIO(data)
        buf.seek(10)
        try:
            if writer is self._writer:
                out = fastavro.schemaless_reader(buf, writer.parsed, None)
            else:
                out = fastavro.schemaless_reader(buf, writer.parsed, self._writer.parsed)
        except (ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
            raise SerdeError(f"corrupt {self.name} payload: {exc}", schema=self.name) from exc
        assert isinstance(out, dict)
        return out


def _ms(v: Any) -> Any:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return int(v.timestamp() * 1000)
    return v


class ConfluentCodec:
    """Confluent wire format through a schema registry (confluent-kafka's Avro serializers).

    Parameters:
        name: the schema folder name.
        registry: a ``SchemaRegistryClient``; share one between all codecs of a process.
    """

    def __init__(self, name: str, registry: Any) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

        self.name = name
        text = latest(name).text
        self._ts_fields = [
            f["name"]
            for f in latest(name).source["fields"]
            if _is_timestamp(f["type"])
        ]
        self._ser = AvroSerializer(registry, text, conf={"auto.register.schemas": True})
        self._de = AvroDeserializer(registry, text)

    def encode(self, record: Record, topic: str) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            out = self._ser(record, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # the serializer wraps fastavro and registry errors alike
            raise SerdeError(f"cannot encode {self.name}: {exc}", schema=self.name) from exc
        if not isinstance(out, bytes):
            raise SerdeError(f"serializer returned no bytes for {self.name}", schema=self.name)
        return out

    def decode(self, data: bytes, topic: str) -> Record:
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            out = self._de(data, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise SerdeError(f"cannot decode {self.name}: {exc}", schema=self.name) from exc
        if not isinstance(out, dict):
            raise SerdeError(f"decoded {self.name} is not a record", schema=self.name)
        for k in self._ts_fields:
            out[k] = _ms(out.get(k))
        return out


def _is_timestamp(t: Any) -> bool:
    if isinstance(t, dict):
        return t.get("logicalType") == "timestamp-millis"
    if isinstance(t, list):
        return any(_is_timestamp(x) for x in t)
    return False


@cache
def _registry(url: str, basic_auth: str | None) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": url}
    if basic_auth:
        conf["basic.auth.user.info"] = basic_auth
    if url.startswith("mock://"):
        return SchemaRegistryClient.new_client(conf)
    return SchemaRegistryClient(conf)


def codec(name: str, registry_url: str | None = None, basic_auth: str | None = None) -> Codec:
    """The codec of schema ``name`` for the given registry URL (None: single-object encoding)."""
    if name not in SCHEMA_NAMES:
        raise SerdeError(f"unknown schema {name!r}", schema=name)
    if registry_url:
        return ConfluentCodec(name, _registry(registry_url, basic_auth))
    return SingleObjectCodec(name)


def codec_from_settings(name: str) -> Codec:
    """The codec of schema ``name`` as the environment configures it."""
    from trackflow.config import SchemaRegistrySettings

    s = SchemaRegistrySettings()
    auth = s.schema_registry_basic_auth.get_secret_value() if s.schema_registry_basic_auth else None
    return codec(name, s.schema_registry_url, auth)


CodecFactory = Callable[[str], Codec]
