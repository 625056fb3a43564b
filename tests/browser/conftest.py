"""Fixtures of the dashboard browser test: the vendored chart bundle, a running ``trackflow sink``, Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_data import CHROMIUM, CHROMIUM_ARGS, READ_KEY, REPO, SinkServer

from trackflow.stack import free_port


@pytest.fixture(scope="session")
def dashboard_installed() -> None:
    """Runs scripts/install-dashboard.sh (npm bundle into static/vendor, Debian chromium)."""
    if not shutil.which("npm"):
        pytest.skip("npm is not installed: the dashboard's chart library cannot be vendored")
    subprocess.run([str(REPO / "scripts/install-dashboard.sh")], check=True, timeout=600)
    assert (REPO / "sinks/dashboard/static/vendor/echarts.esm.min.js").is_file()
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "Debian's chromium is not installed (scripts/install-dashboard.sh could not apt-install it)"
        )


@pytest.fixture(scope="module")
def sink_server(
    subprocess_env: dict[str, str], topics: Any, app: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SinkServer]:
    """``trackflow sink`` for this run, serving the read API on a free port with an admin read key."""
    port = free_port()
    env = dict(subprocess_env)
    own = tmp_path_factory.mktemp("browser-home")
    env.update(
        {
            # its own chdb directory, consumer group and Redis keys, so that other tests' in-process
            # ClickHouse and sink processes never collide with this long-lived sink
            "TRACKFLOW_HOME": str(own),
            "TRACKFLOW_APPS_FILE": str(Path(subprocess_env["TRACKFLOW_HOME"]) / "apps.json"),
            "TRACKFLOW_SINK_GROUP_ID": f"browser-{own.name}",
            "TRACKFLOW_REDIS_KEY_PREFIX": f"{subprocess_env['TRACKFLOW_REDIS_KEY_PREFIX']}browser:",
            "TRACKFLOW_READ_API_PORT": str(port),
            "TRACKFLOW_READ_API_HOST": "127.0.0.1",
            "TRACKFLOW_READ_KEY": READ_KEY,
            "TRACKFLOW_SINK_BATCH_AGE_S": "0.5",
            "TRACKFLOW_LIVE_STREAM_INTERVAL_S": "1",
        }
    )
    log_path = tmp_path_factory.mktemp("sink") / "sink.log"
    exe = Path(sys.executable).with_name("trackflow")
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(exe), "sink"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    server = SinkServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"trackflow sink exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                server.get("/api/apps")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail(f"read API did not answer within 90 s:\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(dashboard_installed: None) -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (never ``playwright install``).

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while it
    is open, which would break every asyncio test that runs after it."""
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
