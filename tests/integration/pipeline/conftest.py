"""Fixtures of the pipeline integration tests: per-test topics and worker subprocesses.

Each test gets its own topic prefix (under the run's) and TRACKFLOW_HOME, shares the run's app
registry, and starts ``trackflow worker`` subprocesses with that environment.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trackflow.stack import delete_topics

REPO = Path(__file__).resolve().parents[3]
TRACKFLOW = str(Path(sys.executable).with_name("trackflow"))


@dataclass
class Pipe:
    """One test's pipeline: environment, topics and worker processes."""

    env: dict[str, str]
    kafka: Any
    topics: Any
    tmp: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, Any] = field(default_factory=dict)

    def start_worker(self, name: str = "w1") -> subprocess.Popen[bytes]:
        log = self._logs[name] = (self.tmp / f"worker-{name}.log").open("ab")
        p = subprocess.Popen(
            [TRACKFLOW, "worker", "--name", name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        self.workers[name] = p
        return p

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.workers.pop(name)
        p.send_signal(sig)
        p.wait(timeout=60)
        self._logs.pop(name).close()

    def log(self, name: str) -> str:
        return (self.tmp / f"worker-{name}.log").read_text(errors="replace")

    def produce(self, events: Iterable[tuple[str, dict[str, Any]]]) -> int:
        from pipeline.traffic import produce

        return produce(events, self.topics.raw, self.kafka)

    def cli(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        return subprocess.run(
            [TRACKFLOW, *args], env=env, capture_output=True, text=True, timeout=120, cwd=self.tmp
        )

    def count(self, topic: str) -> int:
        from confluent_kafka import Consumer

        from trackflow.offsets import high_watermarks

        c = Consumer(self.kafka.client_config() | {"group.id": "count"})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            return sum(high_watermarks(c, topic, parts).values())
        finally:
            c.close()

    def read(self, topic: str, schema: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every record currently in ``topic``, decoded."""
        from confluent_kafka import Consumer

        from schemas import codec_from_settings

        n = self.count(topic)
        codec = codec_from_settings(schema)
        c = Consumer(
            self.kafka.client_config()
            | {
                "group.id": f"read-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.subscribe([topic])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < n and time.monotonic() < deadline:
                for m in c.consume(num_messages=1000, timeout=0.5):
                    value = m.value()
                    if m.error() is None and value is not None:
                        out.append(codec.decode(value, topic))
        finally:
            c.close()
        return out

    def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            for name, p in self.workers.items():
                if p.poll() is not None:
                    raise AssertionError(f"worker {name} exited ({p.returncode}):\n{self.log(name)[-3000:]}")
            time.sleep(0.5)
        logs = "\n".join(self.log(n)[-2000:] for n in self.workers)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")


@pytest.fixture
def pipe(tf_env: dict[str, str], subprocess_env: dict[str, str], app: Any, tmp_path: Path) -> Iterator[Pipe]:
    """A fresh topic prefix and home for one test; workers are stopped and topics deleted after."""
    from confluent_kafka.admin import AdminClient

    from pipeline.worker import ensure_topics
    from trackflow.config import KafkaSettings

    prefix = f"{tf_env['TRACKFLOW_TOPIC_PREFIX']}p{uuid.uuid4().hex[:6]}."
    env = dict(subprocess_env)
    env.update(
        TRACKFLOW_TOPIC_PREFIX=prefix,
        TRACKFLOW_HOME=str(tmp_path / "home"),
        TRACKFLOW_APPS_FILE=str(Path(tf_env["TRACKFLOW_HOME"]) / "apps.json"),
        TRACKFLOW_PIPELINE_SESSION_TIMER_INTERVAL_S="1",
        TRACKFLOW_PIPELINE_FX_WAIT_S="30",
    )
    kafka = KafkaSettings(topic_prefix=prefix, kafka_bootstrap=tf_env["TRACKFLOW_KAFKA_BOOTSTRAP"])
    ensure_topics(kafka, kafka.topics)
    p = Pipe(env, kafka, kafka.topics, tmp_path)
    yield p
    for name in list(p.workers):
        p.kill(name, signal.SIGKILL)
    admin = AdminClient(kafka.client_config())
    delete_topics(admin, prefix)
