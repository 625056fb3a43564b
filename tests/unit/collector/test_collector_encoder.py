"""The collector's fast RawEvent encoder writes exactly the bytes of the generic codec."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.encoder import FastRecordEncoder, raw_event_encoder
from collector.mapping import new_message_id
from schemas import codec, defaults

RAW = codec("raw_event")
FAST = FastRecordEncoder("raw_event")
_opt_text = st.one_of(st.none(), st.text(max_size=200))


@settings(max_examples=300, deadline=None)
@given(
    message_id=st.text(max_size=80),
    event=_opt_text,
    anonymous_id=_opt_text,
    offset=st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-(2**40), 2**40)),
    received_at=st.integers(-(2**62), 2**62),
    properties=st.text(max_size=500),
)
def test_bytes_match_the_generic_codec(
    message_id: str,
    event: str | None,
    anonymous_id: str | None,
    offset: float | None,
    received_at: int,
    properties: str,
) -> None:
    rec = {
        **defaults("raw_event"),
        "message_id": message_id,
        "type": "track",
        "event": event,
        "app_id": "a",
        "anonymous_id": anonymous_id,
        "heartbeat_offset": offset,
        "received_at": received_at,
        "properties": properties,
    }
    data = FAST.encode(rec, "t")
    assert data == RAW.encode(rec, "t")
    assert RAW.decode(data, "t")["message_id"] == message_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_id", None),
        ("received_at", "1"),
        ("type", 3),
        ("heartbeat_offset", "1.5"),
        ("received_at", True),
    ],
)
def test_wrong_types_are_refused(field: str, value: object) -> None:
    rec = {**defaults("raw_event"), "message_id": "m", "type": "track", "app_id": "a", "received_at": 1}
    rec[field] = value
    with pytest.raises(TypeError):
        FAST.encode(rec, "t")


def test_registry_codecs_keep_the_generic_encoder() -> None:
    assert raw_event_encoder(RAW) != RAW.encode, "single-object encoding uses the fast encoder"
    mock = codec("raw_event", registry_url="mock://collector-encoder")
    assert raw_event_encoder(mock) == mock.encode


def test_message_ids_are_unique_uuid4() -> None:
    ids = [new_message_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids[:500])


def test_a_forked_child_never_hands_out_its_parents_pooled_ids() -> None:
    new_message_id()  # the pool is filled in the parent
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        try:
            os.write(write_fd, "\n".join(new_message_id() for _ in range(200)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        child = set(f.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_message_id() for _ in range(200)}
    assert len(child) == 200
    assert not child & parent
