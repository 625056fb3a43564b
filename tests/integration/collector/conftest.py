"""Collector processes for the integration tests: ``trackflow collector`` run as a real subprocess.

Each collector gets its own topic prefix (so tests can count exactly the events they sent) and is
stopped by pid at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas import codec
from trackflow.config import KafkaSettings, Topics
from trackflow.stack import delete_topics, free_port


@dataclass
class CollectorProc:
    """A running collector: its URL, the topics it writes, its bootstrap and process."""

    url: str
    topics: Topics
    bootstrap: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_collector(env: dict[str, str], log: Path, *, timeout: float = 30.0) -> CollectorProc:
    """Run ``trackflow collector`` with ``env`` on a free port; wait for /healthz."""
    port = free_port()
    exe = str(Path(sys.executable).with_name("trackflow"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "collector", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"collector did not start: {log.read_text()[-2000:]}")
    prefix = env["TRACKFLOW_TOPIC_PREFIX"]
    return CollectorProc(url, Topics.from_prefix(prefix), env["TRACKFLOW_KAFKA_BOOTSTRAP"], proc, log)


@pytest.fixture(scope="session")
def collector_factory(
    subprocess_env: dict[str, str], run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., CollectorProc]]:
    """``collector_factory(**env_overrides)``: start a collector with its own topic prefix."""
    started: list[CollectorProc] = []
    logs = tmp_path_factory.mktemp("collector-logs")

    def make(create_topics: bool = True, **overrides: str) -> CollectorProc:
        n = len(started)
        env = {**subprocess_env, "TRACKFLOW_TOPIC_PREFIX": f"t{run_id}c{n}.", **overrides}
        if create_topics:
            from trackflow.stack import ensure_topics

            ensure_topics(
                KafkaSettings(
                    kafka_bootstrap=env["TRACKFLOW_KAFKA_BOOTSTRAP"],
                    topic_prefix=env["TRACKFLOW_TOPIC_PREFIX"],
                )
            )
        c = start_collector(env, logs / f"collector-{n}.log")
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture(scope="session", autouse=True)
def _collector_topics_cleanup(subprocess_env: dict[str, str], run_id: str) -> Iterator[None]:
    """At the end, delete the collectors' topics (t<run>c<n>.) and the publisher tests' (t<run>p<mode>.)."""
    yield
    _delete_topics(subprocess_env["TRACKFLOW_KAFKA_BOOTSTRAP"], (f"t{run_id}c", f"t{run_id}p"))


def _delete_topics(bootstrap: str, prefixes: tuple[str, ...]) -> None:
    """Best-effort removal of this run's collector topics from the shared broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    delete_topics(admin, prefixes)


@pytest.fixture(scope="session")
def collector(collector_factory: Callable[..., CollectorProc], topics: Topics) -> CollectorProc:
    """One collector on the run's broker, shared by the tests of this folder."""
    return collector_factory()


def read_raw(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0, settle: float = 1.0
) -> list[dict[str, Any]]:
    """Decode every RawEvent on ``topic`` (waiting for at least ``expect``, then ``settle`` s more)."""
    from confluent_kafka import Consumer

    raw = codec("raw_event")
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"collector-test-{os.urandom(4).hex()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    value = m.value()
                    assert value is not None
                    rec = raw.decode(value, topic)
                    rec["_key"] = m.key()
                    out.append(rec)
            if len(out) >= expect:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
    finally:
        c.close()
    return out


@pytest.fixture(scope="session")
def raw_reader() -> Callable[..., list[dict[str, Any]]]:
    """``raw_reader(bootstrap, topic, expect=n)``: the decoded RawEvents of a topic (see :func:`read_raw`)."""
    return read_raw


@pytest.fixture(scope="session")
def unused_port() -> Callable[[], int]:
    """``unused_port()``: a TCP port nothing listens on right now."""
    return free_port
