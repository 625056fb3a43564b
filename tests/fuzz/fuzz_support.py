"""A real collector process for the fuzz tests (fixture), on its own topics so no other test sees its events.

Its rate limit is per write key and small (``RATE_EPS`` / ``RATE_BURST``) so limits can be tested
too; :func:`rss_kb` reads the process's resident memory from ``/proc``.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from trackflow.apps import AppRegistry
from trackflow.config import KafkaSettings
from trackflow.stack import delete_topics, ensure_topics, free_port

RATE_EPS = 200
RATE_BURST = 400
MAX_REQUEST = 65536


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class FuzzCollector:
    """A running collector: URL, port, process, log and the write keys of two apps."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    key: str
    other_key: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def fuzz_collector(
    subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, kafka_admin: Any
) -> Iterator[FuzzCollector]:
    home = tmp_path_factory.mktemp("fuzzhome")
    prefix = f"{subprocess_env['TRACKFLOW_TOPIC_PREFIX']}fz{secrets.token_hex(3)}."
    registry = AppRegistry(home / "apps.json")
    _, key, _ = registry.add("Fuzz", app_id="fuzz")
    _, other, _ = registry.add("Fuzz other", app_id="fuzz-other")
    env = dict(
        subprocess_env,
        TRACKFLOW_HOME=str(home),
        TRACKFLOW_TOPIC_PREFIX=prefix,
        TRACKFLOW_COLLECTOR_RATE_LIMIT_EPS=str(RATE_EPS),
        TRACKFLOW_COLLECTOR_RATE_LIMIT_BURST=str(RATE_BURST),
        TRACKFLOW_COLLECTOR_MAX_REQUEST_BYTES=str(MAX_REQUEST),
    )
    ensure_topics(KafkaSettings(kafka_bootstrap=env["TRACKFLOW_KAFKA_BOOTSTRAP"], topic_prefix=prefix))
    port = free_port()
    log = home / "collector.log"
    exe = str(Path(sys.executable).with_name("trackflow"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "collector", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "collector not ready: " + log.read_text()[-2000:]
        time.sleep(0.2)
    try:
        yield FuzzCollector(url, port, proc, log, key, other)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        delete_topics(kafka_admin, prefix)
