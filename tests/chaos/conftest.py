"""Fixtures of the chaos suite: :func:`chaos`, the private stack and pipeline (see chaos_harness.py)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
from chaos_harness import REPO, Chaos

from trackflow import demo
from trackflow import stack as local_stack
from trackflow.config import CoreSettings, KafkaSettings, StackSettings
from trackflow.stack import free_port


@pytest.fixture(scope="session")
def chaos() -> Iterator[Chaos]:
    """A private Kafka + Redis and the collector, worker and sink on them (see the module docstring)."""
    from trackflow.apps import AppRegistry

    run = uuid.uuid4().hex[:6]
    # not under pytest's tmp folders: concurrent pytest sessions rotate those away under a long run
    home = REPO / ".trackflow" / "chaos" / run
    home.mkdir(parents=True)
    paths = local_stack.StackPaths(root=home / "stack", run=home / "run", logs=home / "logs")
    st = StackSettings(
        stack_kafka_port=free_port(),
        stack_controller_port=free_port(),
        stack_redis_port=free_port(),
        stack_registry=False,
        stack_kafka_heap="512m",
    )
    bootstrap = f"127.0.0.1:{st.stack_kafka_port}"
    redis_url = f"redis://127.0.0.1:{st.stack_redis_port}/0"
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRACKFLOW_APPS_FILE", "TRACKFLOW_SCHEMA_REGISTRY_URL")
    }
    base.update(
        {
            "TRACKFLOW_HOME": str(home),
            "TRACKFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "TRACKFLOW_REDIS_URL": redis_url,
            "TRACKFLOW_TOPIC_PREFIX": f"c{run}.",
            "TRACKFLOW_REDIS_KEY_PREFIX": f"c{run}:",
            "TRACKFLOW_CLICKHOUSE_DATABASE": f"tfc_{run}",
            "TRACKFLOW_SINK_SESSION_TIMEOUT_MS": "6000",
            "TRACKFLOW_COLLECTOR_PUBLISH_TIMEOUT_S": "3",
        }
    )
    core = CoreSettings(home=home)
    cport, rport = free_port(), free_port()
    env = demo.service_env(core, cport, rport, base=base)
    kafka = KafkaSettings(kafka_bootstrap=bootstrap, topic_prefix=f"c{run}.")
    try:
        local_stack.start_kafka(paths, st)
        local_stack.start_redis(paths, st)
        local_stack.ensure_topics(kafka)
        demo.run_cli(["fx", "load", str(demo.FX_FIXTURE)], env)
        registry = AppRegistry(core.apps_path)
        _, probe_key, _ = registry.add("probe", app_id=f"probe-{run}", currency="USD")
        c = Chaos(
            home=home,
            paths=paths,
            stack=st,
            env=env,
            kafka=kafka,
            redis_url=redis_url,
            redis_prefix=f"c{run}:",
            read_key=env["TRACKFLOW_READ_KEY"],
            collector_url=f"http://127.0.0.1:{cport}",
            read_url=f"http://127.0.0.1:{rport}",
            registry=registry,
            probe_app=(f"probe-{run}", probe_key),
        )
        for name in demo.SERVICES:
            c.start(name)
        c.wait_ready()
        c.probe(time.monotonic())  # warm: the first event through every stage
        yield c
    finally:
        demo.stop_services(paths)
        for name in (*demo.SERVICES, "kafka", "redis"):
            log = paths.logfile(name)
            if name in demo.SERVICES and log.exists():
                print(f"--- {name} log tail ---\n" + log.read_text(errors="replace")[-2000:])
        local_stack.stop_process(paths.pidfile("redis"), grace=10)
        local_stack.stop_process(paths.pidfile("kafka"), grace=30)
        if not os.environ.get("TRACKFLOW_CHAOS_KEEP"):
            shutil.rmtree(home, ignore_errors=True)
