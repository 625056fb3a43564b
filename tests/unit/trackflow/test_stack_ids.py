"""The local stack's KRaft cluster ids never read as a command-line option."""

from __future__ import annotations

import base64

from trackflow import stack


def test_cluster_ids_never_start_with_a_dash(monkeypatch):
    # uuid4 bytes whose base64url starts with "-" (0xf8 -> "-" as the first 6 bits are 62), then normal ones
    draws = iter([bytes([0xF8]) + bytes(15), bytes([0x10]) + bytes(15)])

    class FakeUuid:
        def __init__(self, b: bytes) -> None:
            self.bytes = b

    monkeypatch.setattr(stack.uuid, "uuid4", lambda: FakeUuid(next(draws)))
    cid = stack._kraft_cluster_id()
    assert not cid.startswith("-")
    assert base64.urlsafe_b64decode(cid + "==")[0] == 0x10


def test_cluster_ids_are_22_characters_of_base64url():
    for _ in range(200):
        cid = stack._kraft_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
