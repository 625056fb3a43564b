"""trackflow.stack.free_port: distinct ports, even when the OS offers the same one twice."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from trackflow import stack


def test_ports_are_free_and_never_handed_out_twice() -> None:
    ports = [stack.free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    with socket.socket() as s:  # free: it can be bound
        s.bind(("127.0.0.1", ports[-1]))


def test_the_same_port_offered_twice_by_the_os_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([41001, 41001, 41001, 41002])

    class OneSocket:
        """The OS's answers to bind(port 0), in order (a pure-logic fake of socket.socket)."""

        def __enter__(self) -> OneSocket:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def bind(self, _addr: Any) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(stack, "_HANDED_OUT", set())
    monkeypatch.setattr(stack.socket, "socket", OneSocket)
    assert [stack.free_port(), stack.free_port()] == [41001, 41002]
