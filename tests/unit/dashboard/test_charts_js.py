"""The dashboard's pure chart builders (sinks/dashboard/static/js/charts.js), via ``node --test``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).resolve().parents[3] / "sinks" / "dashboard"


def test_chart_builders_pass_their_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    res = subprocess.run(
        [node, "--test", "test/"], cwd=DASHBOARD, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "# fail 0" in res.stdout
