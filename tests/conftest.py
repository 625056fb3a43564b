"""Session fixtures that find or start real services for the integration and end-to-end tests.

Where the services come from, in order:

1. ``TRACKFLOW_KAFKA_BOOTSTRAP`` / ``TRACKFLOW_REDIS_URL`` / ``TRACKFLOW_CLICKHOUSE_URL`` set in the
   environment: those endpoints are used as they are.
2. A Docker engine answers: testcontainers starts Kafka (KRaft), Redis and a ClickHouse server.
3. Otherwise the local stack (``trackflow stack up``): Kafka from Maven Central jars, Debian's
   redis-server, and embedded ClickHouse (chdb) in the run's own folder.

Every run gets its own topic prefix, Redis key prefix, ClickHouse database and TRACKFLOW_HOME, so
runs never collide; the run's topics are deleted at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trackflow.stack import delete_topics

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Services:
    """Endpoints of the real services a test run uses."""

    kafka_bootstrap: str
    redis_url: str
    clickhouse_url: str | None  # None: embedded chdb
    origin: str  # "env", "testcontainers" or "local-stack"
    _cleanup: list[Callable[[], None]] = field(default_factory=list)


def _docker_available() -> bool:
    if os.environ.get("TRACKFLOW_TEST_NO_DOCKER"):
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no engine, no socket, no permission: all mean "use the local stack"
        return False


def _from_testcontainers() -> Services:  # pragma: no cover - needs a Docker engine
    from testcontainers.clickhouse import ClickHouseContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    kafka = KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft()
    redis = RedisContainer("redis:7.4")
    ch = ClickHouseContainer("clickhouse/clickhouse-server:25.3", username="tf", password="tf", port=8123)
    for c in (kafka, redis, ch):
        c.start()
    ch_url = f"http://tf:tf@{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}"
    redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
    svc = Services(kafka.get_bootstrap_server(), redis_url, ch_url, "testcontainers")
    svc._cleanup.extend([kafka.stop, redis.stop, ch.stop])
    return svc


def _from_local_stack() -> Services:
    from trackflow.config import CoreSettings, StackSettings
    from trackflow.stack import StackPaths, start_kafka, start_redis

    core = CoreSettings(home=REPO / ".trackflow")
    s = StackSettings()
    paths = StackPaths.from_settings(core)
    start_kafka(paths, s)
    start_redis(paths, s)
    if s.stack_registry:  # `trackflow stack status` reports it, so the stack tests need it up
        from trackflow.registry_stack import start_registry

        start_registry(paths, s.stack_registry_port)
    return Services(
        f"127.0.0.1:{s.stack_kafka_port}", f"redis://127.0.0.1:{s.stack_redis_port}/0", None, "local-stack"
    )


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The real Kafka, Redis and ClickHouse of this run (see the module docstring)."""
    env = os.environ
    if env.get("TRACKFLOW_KAFKA_BOOTSTRAP") or env.get("TRACKFLOW_REDIS_URL"):
        svc = Services(
            env.get("TRACKFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
            env.get("TRACKFLOW_REDIS_URL", "redis://127.0.0.1:16379/0"),
            env.get("TRACKFLOW_CLICKHOUSE_URL") or None,
            "env",
        )
    elif _docker_available():
        svc = _from_testcontainers()
    else:
        svc = _from_local_stack()
    yield svc
    for stop in svc._cleanup:
        stop()


@pytest.fixture(scope="session")
def run_id() -> str:
    """A short id unique to this test run."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def tf_env(services: Services, run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """TRACKFLOW_* variables of this run, applied to os.environ; pass them to subprocesses."""
    home = tmp_path_factory.mktemp("tfhome")
    values = {
        "TRACKFLOW_HOME": str(home),
        "TRACKFLOW_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "TRACKFLOW_REDIS_URL": services.redis_url,
        "TRACKFLOW_TOPIC_PREFIX": f"t{run_id}.",
        "TRACKFLOW_REDIS_KEY_PREFIX": f"t{run_id}:",
        "TRACKFLOW_CLICKHOUSE_DATABASE": f"tf_{run_id}",
    }
    if services.clickhouse_url:
        values["TRACKFLOW_CLICKHOUSE_URL"] = services.clickhouse_url
    mp = pytest.MonkeyPatch()
    for k, v in values.items():
        mp.setenv(k, v)
    if not services.clickhouse_url:
        mp.delenv("TRACKFLOW_CLICKHOUSE_URL", raising=False)
    yield dict(values)
    mp.undo()


@pytest.fixture(scope="session")
def subprocess_env(tf_env: dict[str, str]) -> dict[str, str]:
    """A full environment for trackflow subprocesses of this run."""
    env = dict(os.environ)
    env.update(tf_env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture(scope="session")
def kafka_admin(tf_env: dict[str, str]) -> Any:
    """A confluent-kafka AdminClient on the run's broker."""
    from confluent_kafka.admin import AdminClient

    from trackflow.config import KafkaSettings

    return AdminClient(KafkaSettings().client_config())


@pytest.fixture(scope="session")
def topics(tf_env: dict[str, str], kafka_admin: Any) -> Iterator[Any]:
    """The run's topics, created with their partitions and configs; deleted at the end."""
    from trackflow.config import KafkaSettings
    from trackflow.stack import ensure_topics

    kafka = KafkaSettings()
    ensure_topics(kafka)
    yield kafka.topics
    prefix = kafka.topic_prefix
    delete_topics(kafka_admin, prefix)


@pytest.fixture(scope="session")
def app(tf_env: dict[str, str]) -> tuple[Any, str, str]:
    """A registered app of this run: ``(App, write_key, read_key)``, reporting currency GBP."""
    from trackflow.apps import open_registry

    return open_registry().add("Test App", app_id="test-app", currency="GBP")


@pytest.fixture(scope="session")
def consume(tf_env: dict[str, str]) -> Callable[..., list[Any]]:
    """``consume(topic, n, timeout=30)``: read ``n`` messages from the start of ``topic``."""
    import time

    from confluent_kafka import Consumer

    from trackflow.config import KafkaSettings

    def _consume(topic: str, n: int, timeout: float = 30.0) -> list[Any]:
        c = Consumer({
            **KafkaSettings().client_config(),
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        c.subscribe([topic])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < n and time.monotonic() < deadline:
                for m in c.consume(num_messages=min(1000, n - len(out)), timeout=0.5):
                    if m.error() is None:
                        out.append(m)
        finally:
            c.close()
        return out

    return _consume


@pytest.fixture(scope="session")
def isolated_env(subprocess_env: dict[str, str], services: Services, kafka_admin: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], dict[str, str]]]:
    """``isolated_env()``: a subprocess environment with its own topics (created), consumer groups,
    TRACKFLOW_HOME (so its own embedded ClickHouse directory and app registry), Redis key prefix and
    ClickHouse database. Use it for every test that runs trackflow services as processes, so that
    two such tests never share a consumer group or a chdb data directory. Topics are deleted at the end.
    """
    from trackflow.config import KafkaSettings
    from trackflow.stack import ensure_topics

    prefixes: list[str] = []

    def make() -> dict[str, str]:
        tag = uuid.uuid4().hex[:8]
        home = tmp_path_factory.mktemp(f"home-{tag}")
        env = dict(subprocess_env)
        env.update({
            "TRACKFLOW_HOME": str(home),
            "TRACKFLOW_TOPIC_PREFIX": f"i{tag}.",
            "TRACKFLOW_REDIS_KEY_PREFIX": f"i{tag}:",
            "TRACKFLOW_CLICKHOUSE_DATABASE": f"tf_{tag}",
        })
        env.pop("TRACKFLOW_APPS_FILE", None)
        ensure_topics(KafkaSettings(kafka_bootstrap=services.kafka_bootstrap, topic_prefix=f"i{tag}."))
        prefixes.append(f"i{tag}.")
        return env

    yield make
    delete_topics(kafka_admin, tuple(prefixes))


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process as soon as pytest is done.

    Native threads of the embedded ClickHouse engine and librdkafka can deadlock the interpreter's
    shutdown (seen here: the main thread waiting forever on a module lock after the summary was
    printed), which would hang CI. Everything is reported by now, so exit with pytest's status.
    """
    if os.environ.get("TRACKFLOW_TEST_NORMAL_EXIT"):
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash.get(_EXIT_STATUS, 0))
