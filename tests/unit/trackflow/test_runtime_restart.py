"""restart_in_place: the same pid runs the same command line again, with its RocksDB lock released."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    from rocksdict import Rdict
    from trackflow.runtime import restart_in_place

    logging.basicConfig(level=logging.INFO)
    db = Rdict(sys.argv[1])  # held open (and locked) across the restart: never closed
    n = int(db.get(b"runs", b"0")) + 1
    db[b"runs"] = str(n).encode()
    print(f"run {n} pid {os.getpid()} args {sys.argv[1:]}", flush=True)
    if n < 3:
        restart_in_place(f"run {n} asks for another", lambda f: print("diagnostics", n, file=f))
    """
)


def test_restart_in_place_reruns_the_command_in_the_same_process(tmp_path: Path) -> None:
    script = tmp_path / "restarts.py"
    script.write_text(SCRIPT)
    db = tmp_path / "db"
    out = subprocess.run(
        [sys.executable, str(script), str(db), "--flag"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    runs = [line.split() for line in out.stdout.splitlines()]
    assert [r[1] for r in runs] == ["1", "2", "3"]
    assert len({r[3] for r in runs}) == 1  # one pid throughout
    assert all(r[4:] == ["args", f"['{db}',", "'--flag']"] for r in runs)
    # why, and the diagnostics, are on stderr before each restart
    assert out.stderr.count("restarting this process in place: run") == 2
    assert "diagnostics 1" in out.stderr and "diagnostics 2" in out.stderr


def test_diagnostics_that_fail_never_prevent_the_restart(tmp_path: Path) -> None:
    script = tmp_path / "restarts.py"
    script.write_text(SCRIPT.replace('lambda f: print("diagnostics", n, file=f)', "lambda f: 1 / 0"))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "db")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines()] == ["1", "2", "3"]
    assert out.stderr.count("diagnostics before the restart failed") == 2
