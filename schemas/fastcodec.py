"""Generated Avro encoders and decoders, byte-identical to :mod:`schemas.serde` (fastavro).

fastavro's ``schemaless_writer`` / ``schemaless_reader`` spend most of their time per call on
set-up (schema lookup, encoder/decoder objects), which dominates for our small records. Our
schemas only use strings, longs/ints, doubles, booleans and ``["null", T]`` unions, so this
module compiles the latest version of a schema once into one straight-line Python function that
appends (or reads) bytes directly: about 3-5x faster than fastavro per record.

- :class:`FastRecordEncoder`: strict ``encode(record) -> bytes`` with single-object framing
  (``C3 01`` + fingerprint, exactly as :class:`schemas.serde.SingleObjectCodec`); raises
  ``TypeError``/``KeyError`` for a value of the wrong type. Short strings and longs are cached
  per field (app ids, types, IPs, user agents, ``{}`` and event names repeat).
- :class:`FastRecordDecoder`: ``decode(data) -> dict`` of a payload written with the latest
  version; the same dict fastavro returns.
- :class:`FastSingleObjectCodec`: a :class:`~schemas.serde.SingleObjectCodec` that uses both
  and falls back to fastavro for anything else (older writer versions, missing fields, values
  the fast path refuses, corrupt data), so results and errors are exactly the generic codec's.
  :func:`fast` wraps a codec from :func:`schemas.codec` (registry codecs are returned as is).

The unit tests (``tests/unit/schemas/test_fastcodec.py``) check bytes and records against the
generic codec.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

from schemas.serde import SINGLE_OBJECT_MARKER, Codec, SingleObjectCodec, latest

Record = dict[str, Any]

_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from


def _varint(buf: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)  # zigzag (64-bit)
    while n > 0x7F:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


_CACHE_MAX = 4096  # entries per field
_CACHE_MAX_LEN = 256  # only short strings are cached


def _string_miss(cache: dict[str, bytes], v: Any, prefix: bytes, name: str) -> bytes:
    """Encode string ``v`` (with a union-branch ``prefix``) and remember it if it is short."""
    if v.__class__ is not str:
        raise TypeError(f"{name} must be a string")
    s = v.encode()
    n = len(s)
    head = bytearray(prefix)
    _varint(head, n)
    out = bytes(head) + s
    if n <= _CACHE_MAX_LEN:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[v] = out
    return out


def _long_miss(cache: dict[int, bytes], v: int) -> bytes:
    if not -(2**63) <= v < 2**63:
        raise OverflowError("long out of range")
    out = bytearray()
    _varint(out, v)
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[v] = bytes(out)
    return cache[v]


def _varint_bytes(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# zigzag values below 2**14 encoded whole; the low 14 bits of larger ones (two bytes, both with
# the continuation bit); the encodings of the high parts, cached (timestamps share them)
_FULL14 = tuple(_varint_bytes(z) for z in range(1 << 14))
_LOW14 = tuple(bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80)) for z in range(1 << 14))
_HIGH: dict[int, bytes] = {}


def _long_bytes(v: int) -> bytes:
    """The Avro (zigzag varint) encoding of long ``v``."""
    if not -(2**63) <= v < 2**63:
        raise OverflowError("long out of range")
    z = (v << 1) ^ (v >> 63)
    if z < 16384:
        return _FULL14[z]
    hi = z >> 14
    e = _HIGH.get(hi)
    if e is None:
        if len(_HIGH) >= _CACHE_MAX:
            _HIGH.clear()
        e = _HIGH[hi] = _varint_bytes(hi)
    return _LOW14[z & 16383] + e


def _base(t: Any) -> Any:
    return t.get("type") if isinstance(t, dict) else t


def _field_code(name: str, t: Any, var: str, prefix: bytes = b"", cached: bool = True) -> list[str] | None:
    """Source lines appending field ``name`` (value in ``var``) of Avro type ``t`` to ``b``."""
    t = _base(t)
    if t == "string":
        if not cached:
            return [
                f"if {var}.__class__ is not str: raise TypeError('{name} must be a string')",
                f"e = {var}.encode()",
                *([f"b += {prefix!r}"] if prefix else []),
                "n = len(e)",
                "if n < 64: b.append(n << 1)",
                "else: _varint(b, n)",
                "b += e",
            ]
        cache = f"_cache_{name}"
        return [
            f"e = {cache}.get({var})",
            f"if e is None: e = _string_miss({cache}, {var}, {prefix!r}, {name!r})",
            "b += e",
        ]
    if t in ("long", "int"):
        check = f"if {var}.__class__ is not int: raise TypeError('{name} must be an integer')"
        if t == "int":
            check += f"\nif not -2147483648 <= {var} <= 2147483647: raise OverflowError('{name}')"
        if not cached:
            return [*check.split("\n"), f"b += _long_bytes({var})"]
        cache = f"_cache_{name}"  # e.g. received_at: one value per request
        return [
            *check.split("\n"),
            f"e = {cache}.get({var})",
            f"if e is None: e = _long_miss({cache}, {var})",
            "b += e",
        ]
    if t == "double":
        return [
            f"if {var}.__class__ not in (int, float): raise TypeError('{name} must be a number')",
            f"b += _pack_double({var})",
        ]
    if t == "boolean":
        return [
            f"if {var}.__class__ is not bool: raise TypeError('{name} must be a boolean')",
            f"b.append(1 if {var} else 0)",
        ]
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        null_index = t.index("null")
        branch = bytes([(1 - null_index) * 2])  # zigzag of the non-null branch index
        inner_t = t[1 - null_index]
        if _base(inner_t) == "string":
            inner = _field_code(name, inner_t, var, prefix=branch, cached=cached)  # branch byte cached too
        else:
            inner = _field_code(name, inner_t, var, cached=cached)
            if inner is not None:
                inner = [f"b.append({(1 - null_index) * 2})", *inner]
        if inner is None:
            return None
        return [f"if {var} is None: b.append({null_index * 2})", "else:", *(f"    {x}" for x in inner)]
    return None


class FastRecordEncoder:
    """Encodes records of one schema's latest version with single-object framing.

    Parameters:
        name: the schema folder name (``raw_event``).
        uncached: fields whose values rarely repeat (ids, JSON text, times), encoded without the
            per-field cache.

    The encoder is generated Python source (one straight-line function per schema), compiled once.
    Raises ValueError at construction if the schema uses a type this encoder does not support.
    """

    def __init__(self, name: str, uncached: frozenset[str] = frozenset()) -> None:
        version = latest(name)
        self.header = SINGLE_OBJECT_MARKER + version.fingerprint
        lines = ["def encode(r, topic=''):", "    b = bytearray(HEADER)"]
        for f in version.source["fields"]:
            code = _field_code(f["name"], f["type"], "v", cached=f["name"] not in uncached)
            if code is None:
                raise ValueError(f"unsupported type in {name}.{f['name']}: {f['type']!r}")
            lines.append(f"    v = r[{f['name']!r}]")
            lines += [f"    {line}" for line in code]
        lines.append("    return bytes(b)")
        namespace: dict[str, Any] = {
            "HEADER": self.header,
            "_varint": _varint,
            "_pack_double": _pack_double,
            "_string_miss": _string_miss,
            "_long_miss": _long_miss,
            "_long_bytes": _long_bytes,
        }
        namespace.update({f"_cache_{f['name']}": {} for f in version.source["fields"]})
        # the source is generated from the shipped schema files only, never from input data
        exec(compile("\n".join(lines), f"<encoder {name}>", "exec"), namespace)  # noqa: S102
        self.encode: Callable[[Record, str], bytes] = namespace["encode"]


def _read_long(d: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: ``(value, next position)``."""
    b = d[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = d[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")
    return (n >> 1) ^ -(n & 1), pos


def _decode_code(name: str, t: Any, target: str) -> list[str] | None:
    """Source lines reading a value of Avro type ``t`` at ``p`` in ``d`` into ``target``."""
    t = _base(t)
    if t in ("string", "long", "int"):
        lines = [
            "c = d[p]",
            "if c < 128: n = (c >> 1) ^ -(c & 1); p += 1",
            "else: n, p = _read_long(d, p)",
        ]
        if t == "string":
            lines += ["if n < 0: raise ValueError('negative length')", f"{target} = d[p:p + n].decode()", "p += n"]
        else:
            lines.append(f"{target} = n")
        return lines
    if t == "double":
        return [f"{target} = _unpack_double(d, p)[0]", "p += 8"]
    if t == "boolean":
        return ["c = d[p]", "if c > 1: raise ValueError('bad boolean')", f"{target} = c == 1", "p += 1"]
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        null_index = t.index("null")
        inner = _decode_code(name, t[1 - null_index], target)
        if inner is None:
            return None
        return [
            "c = d[p]",
            "p += 1",
            f"if c == {null_index * 2}: {target} = None",
            f"elif c == {(1 - null_index) * 2}:",
            *(f"    {x}" for x in inner),
            "else: raise ValueError('bad union branch')",
        ]
    return None


class FastRecordDecoder:
    """Decodes the datum of a payload written with one schema's latest version.

    ``decode(data)`` reads from offset 10 (after the single-object header, which the caller
    checks) and returns the dict fastavro's ``schemaless_reader`` returns. Raises
    ValueError/IndexError on corrupt data (the caller falls back to fastavro for the error).
    """

    def __init__(self, name: str) -> None:
        version = latest(name)
        lines = ["def decode(d):", "    p = 10", "    r = {}"]
        for f in version.source["fields"]:
            code = _decode_code(f["name"], f["type"], f"r[{f['name']!r}]")
            if code is None:
                raise ValueError(f"unsupported type in {name}.{f['name']}: {f['type']!r}")
            lines += [f"    {line}" for line in code]
        lines += ["    if p > len(d): raise EOFError('truncated')", "    return r"]
        namespace: dict[str, Any] = {"_read_long": _read_long, "_unpack_double": _unpack_double}
        exec(compile("\n".join(lines), f"<decoder {name}>", "exec"), namespace)  # noqa: S102
        self.decode: Callable[[bytes], Record] = namespace["decode"]


#: per schema, fields whose values rarely repeat: encoded without the per-field cache
UNCACHED: dict[str, frozenset[str]] = {
    # ids and texts that are new in almost every event: the cache only thrashed (about 30% of the
    # collector's encode time with 5,000 devices)
    "raw_event": frozenset(
        {
            "message_id",
            "anonymous_id",
            "user_id",
            "previous_id",
            "group_id",
            "session_id",
            "timestamp",
            "sent_at",
            "properties",
        }
    ),
    "enriched_event": frozenset(
        {
            "message_id",
            "properties",
            "traits",
            "context",
            "timestamp",
            "sent_at",
            "received_at",
            "event_time",
            "client_time",
            "processed_at",
            "session_seq",
            "request_id",
            "session_id",
            "anonymous_id",
            "user_key",
            "device_id",
        }
    ),
    "invalid_event": frozenset({"message_id", "payload", "message", "received_at", "failed_at", "source_offset"}),
    "session": frozenset(
        {"session_id", "user_key", "device_id", "user_id", "started_at", "ended_at", "events", "version"}
    ),
}


class FastSingleObjectCodec(SingleObjectCodec):
    """:class:`~schemas.serde.SingleObjectCodec` with generated encoder/decoder fast paths.

    Anything the fast paths do not handle goes through fastavro, so every result and every
    error is the generic codec's.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._fast_encode = FastRecordEncoder(name, UNCACHED.get(name, frozenset())).encode
        self._fast_decode = FastRecordDecoder(name).decode
        self._prefix = self._header

    def encode(self, record: Record, topic: str = "") -> bytes:
        try:
            return self._fast_encode(record, topic)
        except Exception:  # missing field, wrong type...: fastavro decides (and names the error)
            return super().encode(record, topic)

    def decode(self, data: bytes, topic: str = "") -> Record:
        if data[:10] == self._prefix:
            # corrupt: fall through, and fastavro raises the proper SerdeError
            with contextlib.suppress(Exception):
                return self._fast_decode(data)
        return super().decode(data, topic)


def fast(codec: Codec) -> Codec:
    """``codec`` with the generated fast paths when it is a single-object codec (else unchanged)."""
    if type(codec) is SingleObjectCodec:
        try:
            return FastSingleObjectCodec(codec.name)
        except ValueError:  # a schema type the generator does not support
            return codec
    return codec
