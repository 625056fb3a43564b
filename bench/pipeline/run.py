"""Pipeline benchmark: events/s through one worker, a bare Faust pass-through, and two workers.

Two baselines: the textbook pass-through agent on Faust's own fetch loop (the framework's limit,
the one the targets name), and the same agent on the worker's consumption path
(``passthrough.py --fast``, :mod:`pipeline.fastpath`), which shows what the worker's own work costs.

Traffic: pipeline.traffic.generate (about 70% track, 15% screen, 10% heartbeat, 5% identify,
revenue on 3%, duplicates on 2%, invalid on 1%), pre-filled into a fresh raw topic. Each run is
measured from the group's committed offsets: rate = events committed after the first commit /
time from that first commit to the last. Also prints the pure per-event cost of the stages.

Peak RSS (VmHWM) is printed per process. ``--rocksdb-baseline`` adds one worker with Faust's RocksDB
memory defaults (the A/B of the state tables' memory budget); ``--profile FILE`` runs the one-worker
case under pyinstrument.

Run: ``.venv/bin/python bench/pipeline/run.py [--events 200000] [--rocksdb-baseline] [--profile FILE]``
(needs Kafka; ~3 minutes).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from trackflow.offsets import committed_total
from trackflow.stack import cpu_seconds

REPO = Path(__file__).resolve().parents[2]
TRACKFLOW = str(Path(sys.executable).with_name("trackflow"))


def setup(n: int, devices: int, home: Path) -> tuple[dict[str, str], Any]:
    """A fresh prefix with the raw topic pre-filled; returns (env, KafkaSettings)."""
    from pipeline.rates import load_path, publish
    from pipeline.traffic import generate, produce
    from pipeline.worker import ensure_topics
    from trackflow.apps import AppRegistry
    from trackflow.config import KafkaSettings

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    env = dict(
        os.environ,
        TRACKFLOW_TOPIC_PREFIX=prefix,
        TRACKFLOW_HOME=str(home / prefix),
        TRACKFLOW_APPS_FILE=str(home / "apps.json"),
        PYTHONUNBUFFERED="1",
    )
    if not (home / "apps.json").exists():
        AppRegistry(home / "apps.json").add("Bench", app_id="bench", currency="GBP")
    kafka = KafkaSettings(topic_prefix=prefix)
    ensure_topics(kafka, kafka.topics)
    publish(load_path(REPO / "tests" / "fixtures" / "fx" / "rates.csv"), "ecb", kafka)
    t = time.perf_counter()
    produce(
        generate(n, "bench", devices=devices, seed=11, start_ms=1_790_000_000_000, step_ms=2),
        kafka.topics.raw,
        kafka,
    )
    print(f"  pre-filled {n} raw events in {time.perf_counter() - t:.1f} s ({prefix})")
    return env, kafka


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(
    cmds: list[list[str]],
    env: dict[str, str],
    kafka,
    group: str,
    n: int,
    log: Path,
    timeout: float | None = None,
    graceful: bool = False,
    poll_s: float = 0.25,
) -> tuple[float, float, list[float]]:
    """Returns (events/s wall clock, CPU microseconds per event summed over the processes, peak RSS MB of each).

    ``poll_s``: how often the group's committed offsets are read (shorter for a run of ~1 s).
    """
    procs = [subprocess.Popen(c, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT) for c in cmds]
    try:
        first_t: float | None = None
        first_n = 0
        first_cpu = last_cpu = 0.0
        last_t = 0.0
        last = 0
        deadline = time.monotonic() + (timeout or max(150.0, n / 400))
        while time.monotonic() < deadline:
            done = committed_total(kafka, group, kafka.topics.raw)
            now = time.monotonic()
            if done > 0 and first_t is None:
                first_t, first_n = now, done
                first_cpu = sum(cpu_seconds(p.pid) for p in procs)
            if done != last:
                last, last_t = done, now
                last_cpu = sum(cpu_seconds(p.pid) for p in procs)
            if done >= n:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a process exited; see {log}")
            time.sleep(poll_s)
        if first_t is None or last < n:
            raise RuntimeError(f"only {last}/{n} committed; see {log}")
        if last <= first_n:
            raise RuntimeError(
                f"all {n} events were in the first commit seen: too few events to measure a rate"
            )
        rss = [peak_rss_mb(p.pid) for p in procs]
        return (last - first_n) / (last_t - first_t), (last_cpu - first_cpu) / (last - first_n) * 1e6, rss
    finally:
        for p in procs:
            if graceful:  # let a profiler write its report
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=120)
                    continue
                except subprocess.TimeoutExpired:
                    pass
            p.kill()
            p.wait()


def pure_cost(n: int = 20000) -> tuple[float, float]:
    """(wall, CPU) microseconds per event of decode + stages + encode, in-process on in-memory state."""
    import time as _t

    from pipeline.fx import RateTable
    from pipeline.process import DictState, Processor
    from pipeline.settings import PipelineSettings
    from pipeline.traffic import generate
    from schemas import codec
    from schemas.fastcodec import fast
    from trackflow.apps import App

    app = App(app_id="bench", name="b", write_key_hash="x", reporting_currency="GBP")
    proc = Processor(PipelineSettings(), {"bench": app}.get, RateTable(), DictState())
    rc, ec = fast(codec("raw_event")), fast(codec("enriched_event"))
    data = [
        rc.encode(r, "t") for _, r in generate(n, "bench", devices=2000, seed=5, start_ms=1_790_000_000_000)
    ]
    t, c = _t.perf_counter(), _t.process_time()
    for i, b in enumerate(data):
        res = proc.process_bytes(rc, b, pos=(0, i), topic="t", now=1_790_000_100_000)
        for _, rec in res.enriched:
            ec.encode(rec, "t")
    return (_t.perf_counter() - t) / n * 1e6, (_t.process_time() - c) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument(
        "--rocksdb-baseline",
        action="store_true",
        help="also run one worker with Faust's RocksDB memory defaults (64 MB x 3 memtables, 2 GB cache)",
    )
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="run the one-worker case under pyinstrument; its text report goes to FILE",
    )
    args = ap.parse_args()
    from pipeline.worker import app_id_for

    n = args.events
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        home = Path(tmp)
        log = Path(tempfile.gettempdir()) / "tf-bench-pipeline.log"
        log.unlink(missing_ok=True)
        wall, cpu = pure_cost()
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"pure stages (decode + process + encode): {wall:.1f} us/event wall, {cpu:.1f} us/event CPU")
        print("pass-through (bare Faust agent, librdkafka output):")
        env, kafka = setup(n, args.devices, home)
        base, base_cpu, base_rss = measure(
            [[sys.executable, str(Path(__file__).with_name("passthrough.py"))]],
            env,
            kafka,
            f"{kafka.topic_prefix}passthrough",
            n,
            log,
        )
        print(
            f"  {base:,.0f} events/s wall; {base_cpu:.0f} us CPU/event -> {1e6 / base_cpu:,.0f} events/s per busy core;"
            f" peak RSS {base_rss[0]:.0f} MB"
        )
        print("pass-through on the worker's consumption path (pipeline.fastpath; same topic, own group):")
        fast, fast_cpu, fast_rss = measure(
            [[sys.executable, str(Path(__file__).with_name("passthrough.py")), "--fast"]],
            env,
            kafka,
            f"{kafka.topic_prefix}passthrough-fast",
            n,
            log,
            poll_s=0.05,  # it commits every 0.1 s, and 200,000 events take it about a second
        )
        per_core = f"-> {1e6 / fast_cpu:,.0f} events/s per busy core" if fast_cpu else "below the clock tick"
        print(
            f"  {fast:,.0f} events/s wall; {fast_cpu:.1f} us CPU/event ({per_core});"
            f" a run of about a second, so only indicative; peak RSS {fast_rss[0]:.0f} MB"
        )
        print("one worker (same topic, own group):")
        worker = ["worker", "--name", "b1", "--loglevel", "warning"]
        if args.profile:
            prof = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", args.profile, "-m", "trackflow"]
        one, one_cpu, one_rss = measure(
            [prof + worker if args.profile else [TRACKFLOW, *worker]],
            env,
            kafka,
            app_id_for(kafka.topic_prefix),
            n,
            log,
            graceful=bool(args.profile),
        )
        print(
            f"  {one:,.0f} events/s wall = {one / base:.0%} of pass-through; {one_cpu:.0f} us CPU/event -> "
            f"{1e6 / one_cpu:,.0f} events/s per busy core = {base_cpu / one_cpu:.0%} of pass-through;"
            f" peak RSS {one_rss[0]:.0f} MB"
        )
        print(
            f"  = {one / fast:.0%} of the pass-through on the worker's consumption path ({fast_cpu / one_cpu:.0%} CPU)"
        )
        if args.rocksdb_baseline:
            print("one worker with Faust's RocksDB defaults (fresh topic and state):")
            env3, kafka3 = setup(n, args.devices, home)
            env3 |= {
                "TRACKFLOW_PIPELINE_ROCKSDB_WRITE_BUFFER_MB": "64",
                "TRACKFLOW_PIPELINE_ROCKSDB_MAX_WRITE_BUFFERS": "3",
                "TRACKFLOW_PIPELINE_ROCKSDB_BLOCK_CACHE_MB": "2048",
            }
            fd, fd_cpu, fd_rss = measure(
                [[TRACKFLOW, "worker", "--name", "b1", "--loglevel", "warning"]],
                env3,
                kafka3,
                app_id_for(kafka3.topic_prefix),
                n,
                log,
            )
            print(
                f"  {fd:,.0f} events/s wall; {fd_cpu:.0f} us CPU/event; peak RSS {fd_rss[0]:.0f} MB"
                f" (bounded budget: {one_rss[0]:.0f} MB = {one_rss[0] / fd_rss[0]:.0%}, {one / fd:.0%} of its rate)"
            )
            _cleanup(kafka3, kafka3.topic_prefix)
        print("two workers (fresh topic and state):")
        env2, kafka2 = setup(n, args.devices, home)
        two, two_cpu, two_rss = measure(
            [[TRACKFLOW, "worker", "--name", f"b{i}", "--loglevel", "warning"] for i in (1, 2)],
            env2,
            kafka2,
            app_id_for(kafka2.topic_prefix),
            n,
            log,
        )
        print(
            f"  {two:,.0f} events/s wall = {two / one:.2f}x one worker; {two_cpu:.0f} us CPU/event (both);"
            f" peak RSS {' + '.join(f'{r:.0f}' for r in two_rss)} MB"
        )
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        print(
            f"\nsummary: worker {one:,.0f}/s, pass-through {base:,.0f}/s, ratio {one / base:.0%} wall / "
            f"{base_cpu / one_cpu:.0%} CPU; pass-through on the worker's path {fast:,.0f}/s, ratio {one / fast:.0%}; "
            f"2 workers {two:,.0f}/s ({two / one:.2f}x)"
        )
        for pfx in (kafka.topic_prefix, kafka2.topic_prefix):
            _cleanup(kafka, pfx)


def _cleanup(kafka, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.client_config())
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for f in admin.delete_topics(names).values():
            try:
                f.result()
            except Exception:
                pass


if __name__ == "__main__":
    main()
