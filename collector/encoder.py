"""A fast RawEvent encoder for the collector's hot path, byte-identical to :mod:`schemas.serde`.

fastavro's ``schemaless_writer`` spends most of its time per call on set-up (schema lookup,
encoder objects), which dominates for small records. RawEvent only uses strings, longs, doubles
and ``["null", T]`` unions, so this module compiles the latest ``raw_event`` schema once into one
straight-line Python function that appends bytes directly, with a per-field cache of encoded
short strings (app id, type, IP, user agent, ``{}``, event names repeat): about 3x faster than
fastavro on realistic batches. Single-object framing (``C3 01`` + the
fingerprint) is added exactly as :class:`schemas.serde.SingleObjectCodec` does.

:func:`raw_event_encoder` returns this encoder when no schema registry is configured and the schema
holds only supported types; otherwise it returns the generic codec's ``encode``. The unit tests
check the bytes against the generic codec.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from schemas import Codec, latest
from schemas.serde import SINGLE_OBJECT_MARKER, SingleObjectCodec

Record = dict[str, Any]

_pack_double = struct.Struct("<d").pack


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
    out = bytearray()
    _varint(out, v)
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[v] = bytes(out)
    return cache[v]


def _field_code(name: str, t: Any, var: str, prefix: bytes = b"") -> list[str] | None:
    """Source lines appending field ``name`` (value in ``var``) of Avro type ``t`` to ``b``.

    Strings go through a per-field cache of their encoded bytes: app ids, types, sources, IPs,
    user agents, request ids, ``{}`` and event names repeat from event to event.
    """
    if isinstance(t, dict):
        t = t.get("type")
    if t == "string":
        cache = f"_cache_{name}"
        return [
            f"e = {cache}.get({var})",
            f"if e is None: e = _string_miss({cache}, {var}, {prefix!r}, {name!r})",
            "b += e",
        ]
    if t in ("long", "int"):
        cache = f"_cache_{name}"  # e.g. received_at: one value per request
        return [
            f"if {var}.__class__ is not int: raise TypeError('{name} must be an integer')",
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
        if (inner_t.get("type") if isinstance(inner_t, dict) else inner_t) == "string":
            inner = _field_code(name, inner_t, var, prefix=branch)  # the branch byte is cached too
            if inner is None:
                return None
            return [f"if {var} is None: b.append({null_index * 2})", "else:", *(f"    {x}" for x in inner)]
        inner = _field_code(name, inner_t, var)
        if inner is None:
            return None
        return [
            f"if {var} is None: b.append({null_index * 2})",
            "else:",
            f"    b.append({(1 - null_index) * 2})",
            *(f"    {line}" for line in inner),
        ]
    return None


class FastRecordEncoder:
    """Encodes records of one schema's latest version with single-object framing.

    Parameters:
        name: the schema folder name (``raw_event``).

    The encoder is generated Python source (one straight-line function per schema), compiled once.
    Raises ValueError at construction if the schema uses a type this encoder does not support.
    """

    def __init__(self, name: str) -> None:
        version = latest(name)
        self.header = SINGLE_OBJECT_MARKER + version.fingerprint
        lines = ["def encode(r, topic=''):", "    b = bytearray(HEADER)"]
        for f in version.source["fields"]:
            code = _field_code(f["name"], f["type"], "v")
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
        }
        namespace.update({f"_cache_{f['name']}": {} for f in version.source["fields"]})
        # the source is generated from the shipped schema files only, never from input data
        exec(compile("\n".join(lines), f"<encoder {name}>", "exec"), namespace)  # noqa: S102
        self.encode: Callable[[Record, str], bytes] = namespace["encode"]


def raw_event_encoder(codec: Codec) -> Callable[[Record, str], bytes]:
    """The fastest correct ``encode(record, topic)`` for RawEvents with this codec."""
    if isinstance(codec, SingleObjectCodec):
        try:
            return FastRecordEncoder(codec.name).encode
        except ValueError:
            pass
    return codec.encode
