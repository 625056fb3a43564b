"""The CLI: apps management, and configuration printed with secrets masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRACKFLOW_")}
    full.update({"TRACKFLOW_HOME": str(home), **env})
    return subprocess.run([sys.executable, "-m", "trackflow", *args], capture_output=True, text=True,
                          env=full, timeout=60)


def test_apps_add_json_then_list(tmp_path: Path) -> None:
    res = run(["apps", "add", "Space Game", "--currency", "GBP", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["app_id"] == "space-game" and out["write_key"].startswith("tfw_")
    listed = run(["apps", "list", "--json"], tmp_path)
    rows = json.loads(listed.stdout)
    assert [r["app_id"] for r in rows] == ["space-game"]
    assert rows[0]["reporting_currency"] == "GBP"
    assert out["write_key"] not in listed.stdout


def test_apps_add_bad_currency_is_a_clear_error(tmp_path: Path) -> None:
    res = run(["apps", "add", "X", "--currency", "ZZZ"], tmp_path)
    assert res.returncode == 2
    assert "currency" in res.stderr and "ZZZ" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("as_json", [True, False])
def test_config_masks_secrets(tmp_path: Path, as_json: bool) -> None:
    secret_url = "redis://:sup3rs3cret@10.0.0.1:6379/0"
    res = run(["config", "--json"] if as_json else ["config"], tmp_path,
              TRACKFLOW_REDIS_URL=secret_url, TRACKFLOW_KAFKA_SASL_PASSWORD="kafkapw123",
              TRACKFLOW_CLICKHOUSE_URL="http://u:chpw999@h:8123", TRACKFLOW_TOPIC_PREFIX="x.")
    assert res.returncode == 0, res.stderr
    for secret in ("sup3rs3cret", "kafkapw123", "chpw999"):
        assert secret not in res.stdout
    assert "x." in res.stdout
    if as_json:
        cfg = json.loads(res.stdout)
        assert cfg["redis"]["redis_url"] == "**********"
        assert cfg["kafka"]["topic_prefix"] == "x."


def test_dashboard_refuses_embedded_mode(tmp_path: Path) -> None:
    res = run(["dashboard"], tmp_path)
    assert res.returncode == 1
    assert "embedded mode" in res.stderr and "trackflow sink" in res.stderr
