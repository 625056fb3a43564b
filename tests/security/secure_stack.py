"""A private pipeline for the security tests: collector, worker and sink with known secrets (fixtures).

Everything is this module's own: TRACKFLOW_HOME, topic prefix, ClickHouse database, Redis key
prefix and a password-protected ``redis-server`` on a free port (the shared Redis is never touched).
The secrets (:data:`SECRETS`) are fixed, so a test can grep logs and outputs for them.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from trackflow import demo
from trackflow.apps import AppRegistry
from trackflow.config import CoreSettings, KafkaSettings
from trackflow.stack import (
    StackPaths,
    delete_topics,
    ensure_redis_installed,
    ensure_topics,
    free_port,
    read_pid,
)

_TAG = secrets.token_hex(4)
#: secret values the services run with; none may appear in a log, an output or an error message
SECRETS = {
    "redis_password": f"redispw-{_TAG}-Zq81",
    "read_key": f"tfr_admin-{_TAG}-Kx77",
    "salt": f"salt-{_TAG}-Pm42",
}


@dataclass
class SecureStack:
    """The running pipeline: its environment, paths, URLs, keys and a Redis client."""

    env: dict[str, str]
    paths: StackPaths
    home: Path
    collector: str
    read_api: str
    keys: dict[str, dict[str, str]]  # "plain" / "private" -> app_id, write_key, read_key
    redis: Any
    redis_prefix: str
    redis_log: Path

    def sql(self, query: str) -> list[dict[str, Any]]:
        r = httpx.post(
            f"{self.read_api}/api/sql",
            json={"sql": query},
            headers={"X-Read-Key": SECRETS["read_key"]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()["rows"]
        return rows

    def wait_sql(self, query: str, expected: Any, timeout: float = 90) -> Any:
        """Poll ``query``'s first value until it equals ``expected``."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            rows = self.sql(query)
            value = next(iter(rows[0].values())) if rows else None
            if value == expected:
                return value
            for name in demo.SERVICES:
                assert read_pid(self.paths.pidfile(name)) is not None, (
                    f"{name} exited: {self.log(name)[-2000:]}"
                )
            time.sleep(0.5)
        raise AssertionError(f"{query!r}: {value!r} != {expected!r} after {timeout}s")

    def log(self, name: str) -> str:
        p = self.paths.logfile(name)
        return p.read_text(errors="replace") if p.exists() else ""

    def post(self, kind: str, path: str, body: Any, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.collector}{path}",
            json=body,
            auth=(self.keys[kind]["write_key"], ""),
            headers=headers,
            timeout=30,
        )


@pytest.fixture(scope="module")
def secure_stack(
    subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, kafka_admin: Any
) -> Iterator[SecureStack]:
    home = tmp_path_factory.mktemp("sechome")
    tag = secrets.token_hex(3)
    rport, cport, aport = free_port(), free_port(), free_port()
    rdir = home / "redis"
    rdir.mkdir()
    redis_log = home / "redis.log"
    with open(redis_log, "wb") as out:
        rproc = subprocess.Popen(
            [
                ensure_redis_installed(),
                "--port",
                str(rport),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(rdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                SECRETS["redis_password"],
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    redis_url = f"redis://:{SECRETS['redis_password']}@127.0.0.1:{rport}/0"
    prefix = f"{subprocess_env['TRACKFLOW_TOPIC_PREFIX']}sec{tag}."
    env = dict(subprocess_env)
    env.update(
        {
            "TRACKFLOW_HOME": str(home),
            "TRACKFLOW_TOPIC_PREFIX": prefix,
            "TRACKFLOW_REDIS_URL": redis_url,
            "TRACKFLOW_REDIS_KEY_PREFIX": f"sec{tag}:",
            "TRACKFLOW_CLICKHOUSE_DATABASE": f"{subprocess_env['TRACKFLOW_CLICKHOUSE_DATABASE']}_sec{tag}",
            "TRACKFLOW_READ_KEY": SECRETS["read_key"],
            "TRACKFLOW_PRIVACY_USER_ID_SALT": SECRETS["salt"],
            "TRACKFLOW_COLLECTOR_HOST": "127.0.0.1",
            "TRACKFLOW_COLLECTOR_PORT": str(cport),
            "TRACKFLOW_READ_API_HOST": "127.0.0.1",
            "TRACKFLOW_READ_API_PORT": str(aport),
            "TRACKFLOW_PIPELINE_FX_WAIT_S": "0",
            "TRACKFLOW_SINK_BATCH_AGE_S": "0.3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    kafka = KafkaSettings(kafka_bootstrap=env["TRACKFLOW_KAFKA_BOOTSTRAP"], topic_prefix=prefix)
    ensure_topics(kafka)
    registry = AppRegistry(home / "apps.json")
    keys: dict[str, dict[str, str]] = {}
    options: tuple[tuple[str, dict[str, Any]], ...] = (
        ("plain", {}),
        ("private", {"mask_ip": True, "hash_user_ids": True, "drop_properties": ("email",)}),
    )
    for kind, opts in options:
        a, wk, rk = registry.add(f"Sec {kind}", app_id=f"sec-{kind}", **opts)
        keys[kind] = {"app_id": a.app_id, "write_key": wk, "read_key": rk}
    paths = StackPaths.from_settings(CoreSettings(home=home))
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 20
    while True:
        try:
            r.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    demo.start_services(paths, env)
    stack = SecureStack(
        env,
        paths,
        home,
        f"http://127.0.0.1:{cport}",
        f"http://127.0.0.1:{aport}",
        keys,
        r,
        env["TRACKFLOW_REDIS_KEY_PREFIX"],
        redis_log,
    )
    try:
        demo.wait_healthy(paths, env)
        yield stack
    finally:
        demo.stop_services(paths)
        rproc.terminate()
        try:
            rproc.wait(10)
        except subprocess.TimeoutExpired:
            rproc.kill()
        r.close()
        delete_topics(kafka_admin, prefix)
        for name in demo.SERVICES:
            text = stack.log(name)
            if text:
                print(f"--- {name} log tail ---\n{text[-2000:]}")


@pytest.fixture(scope="module")
def cli_env(secure_stack: SecureStack) -> dict[str, str]:
    """The stack's environment for ``trackflow`` CLI subprocesses."""
    return dict(secure_stack.env, **{k: v for k, v in os.environ.items() if k == "PATH"})
