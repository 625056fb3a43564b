"""RocksDB memory of the worker's state tables: Faust's defaults vs the worker's budget, in-process.

Models one worker's state writes without Kafka: 4 partitions x 2 tables (8 databases, as Faust
opens them); per event one device read and update (5,000 devices, ~600-byte values) and one new
message-id entry. Each configuration runs in its own subprocess (RSS is per process) and prints
its RSS every 250,000 events, then the ratio budget / defaults.

Run: ``.venv/bin/python bench/pipeline/rocksdb_memory.py [--events 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def child(n: int, options: dict[str, int]) -> None:
    from faust.stores.rocksdb import RocksDBOptions

    root = Path(tempfile.mkdtemp(prefix="tf-rocksmem-"))
    opts = RocksDBOptions(use_rocksdict=True, **options)
    devices = [opts.open(root / f"devices-{p}") for p in range(4)]
    seen = [opts.open(root / f"seen-{p}") for p in range(4)]
    value = os.urandom(300).hex().encode()
    marks = []
    t = time.process_time()
    for i in range(n):
        p = i % 4
        key = f"app:device-{i % 5000}".encode()
        devices[p].get(key)
        devices[p][key] = value
        seen[p][f"app:{i:012d}-0123456789abcdef01234567".encode()] = b"[1790000000000,2,12345]"
        if (i + 1) % 250_000 == 0:
            marks.append((i + 1, rss_mb()))
    print(json.dumps({"marks": marks, "cpu_us": (time.process_time() - t) / n * 1e6}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.events, json.loads(a.child))
        return
    sys.path.insert(0, str(REPO))
    from pipeline.settings import PipelineSettings

    results = {}
    for name, options in (("Faust defaults", {}), ("worker budget", PipelineSettings().rocksdb_options())):
        out = subprocess.run(
            [sys.executable, __file__, "--events", str(a.events), "--child", json.dumps(options)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = results[name] = json.loads(out.strip().splitlines()[-1])
        marks = ", ".join(f"{k:,}: {v} MB" for k, v in r["marks"])
        print(f"{name:15s} RSS after {marks}; {r['cpu_us']:.1f} us CPU/event")
    d, b = results["Faust defaults"], results["worker budget"]
    print(
        f"budget / defaults: peak RSS {max(v for _, v in b['marks']) / max(v for _, v in d['marks']):.0%}, "
        f"CPU {b['cpu_us'] / d['cpu_us']:.0%}"
    )


if __name__ == "__main__":
    main()
