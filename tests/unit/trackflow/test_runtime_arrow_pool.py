"""The sink's Arrow memory pool: jemalloc unless the operator chose one (a process-wide setting, so
each case runs in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROBE = (
    "import pyarrow as pa; from trackflow.runtime import arrow_pool; "
    "used = arrow_pool(); print(used, pa.default_memory_pool().backend_name)"
)


def _probe(prelude: str = "", **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", prelude + PROBE], cwd=REPO, env=clean | env,
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.split()


def test_arrow_allocations_go_to_jemalloc_by_default() -> None:
    assert _probe() == ["jemalloc", "jemalloc"]


def test_a_pool_the_operator_chose_is_kept() -> None:
    assert _probe(ARROW_DEFAULT_MEMORY_POOL="system") == ["system", "system"]


def test_a_pyarrow_built_without_jemalloc_keeps_its_default() -> None:
    prelude = (
        "import pyarrow as pa\n"
        "def missing(): raise NotImplementedError('built without jemalloc')\n"
        "pa.jemalloc_memory_pool = missing\n"
    )
    used, backend = _probe(prelude)
    assert used == backend and used != "jemalloc"
