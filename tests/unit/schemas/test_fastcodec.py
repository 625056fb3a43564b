"""The generated codecs (schemas/fastcodec.py) write and read exactly what fastavro does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec, defaults
from schemas.fastcodec import FastSingleObjectCodec, fast
from trackflow.exceptions import SerdeError

NAMES = ("raw_event", "enriched_event", "invalid_event", "session")
_text = st.text(max_size=300)
_long = st.integers(-(2**63), 2**63 - 1)


def _value(t: Any) -> st.SearchStrategy[Any]:
    t = t.get("type") if isinstance(t, dict) else t
    if t == "string":
        return _text
    if t == "long":
        return _long
    if t == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if t == "double":
        return st.one_of(st.floats(allow_nan=False), st.integers(-(2**53), 2**53))
    if t == "boolean":
        return st.booleans()
    assert isinstance(t, list)
    return st.one_of(st.none(), _value(next(x for x in t if x != "null")))


def _records(name: str) -> st.SearchStrategy[dict[str, Any]]:
    from schemas import latest

    return st.fixed_dictionaries({f["name"]: _value(f["type"]) for f in latest(name).source["fields"]})


@pytest.mark.parametrize("name", NAMES)
def test_bytes_and_records_match_fastavro(name: str) -> None:
    generic, quick = codec(name), fast(codec(name))
    assert isinstance(quick, FastSingleObjectCodec)

    @settings(max_examples=200, deadline=None)
    @given(rec=_records(name))
    def check(rec: dict[str, Any]) -> None:
        data = quick.encode(rec, "t")
        assert data == generic.encode(rec, "t")
        assert quick.decode(data, "t") == generic.decode(data, "t")

    check()


def test_fallbacks_behave_like_the_generic_codec() -> None:
    generic, quick = codec("enriched_event"), fast(codec("enriched_event"))
    rec = {**defaults("enriched_event"), "message_id": "m", "type": "track", "app_id": "a"}
    rec |= {"received_at": 1, "user_key": "u", "device_id": "d", "event_time": 2, "processed_at": 3}
    partial = dict(rec)
    del partial["country"]  # a missing optional field: fastavro writes its default
    assert quick.encode(partial, "t") == generic.encode(partial, "t")
    bad = rec | {"received_at": "1"}
    with pytest.raises(SerdeError):
        generic.encode(bad, "t")
    with pytest.raises(SerdeError):
        quick.encode(bad, "t")
    data = quick.encode(rec, "t")
    for cut in (11, 20, len(data) - 1):
        with pytest.raises(SerdeError):
            generic.decode(data[:cut], "t")
        with pytest.raises(SerdeError):
            quick.decode(data[:cut], "t")


def test_older_writer_versions_are_resolved() -> None:
    from io import BytesIO

    from fastavro import schemaless_writer

    from schemas import versions

    v1 = versions("raw_event")[0]
    rec = {f["name"]: f.get("default") for f in v1.source["fields"]}
    rec |= {"message_id": "m", "type": "track", "app_id": "a", "received_at": 5}
    buf = BytesIO()
    buf.write(b"\xc3\x01" + v1.fingerprint)
    schemaless_writer(buf, v1.parsed, rec)
    assert fast(codec("raw_event")).decode(buf.getvalue(), "t") == codec("raw_event").decode(buf.getvalue(), "t")


def test_registry_codecs_are_unchanged() -> None:
    mock = codec("raw_event", registry_url="mock://fastcodec")
    assert fast(mock) is mock
