"""The local stack for machines without Docker: Kafka (KRaft), Redis and embedded ClickHouse.

``trackflow stack up|down|status`` manages it:

- **Kafka 4.x**, single node in KRaft mode (``process.roles=broker,controller``), assembled from
  Maven Central jars by ``scripts/install-kafka.sh`` into the git-ignored ``.cache/kafka/libs``,
  formatted once, started with ``java -cp 'libs/*' kafka.Kafka server.properties``.
- **Redis** from Debian's ``redis-server`` (installed by ``scripts/install-redis.sh`` if missing),
  with an append-only file so counters survive a restart.
- **Embedded ClickHouse**: the ``chdb`` data directory (no process: the sink opens it).

Every service logs to ``<home>/logs/<name>.log`` and records its pid in ``<home>/run/<name>.pid``.
``up`` is idempotent (a healthy service is left alone), ``down`` stops by pid (SIGTERM, then
SIGKILL after a grace period). Topics are created by :func:`ensure_topics`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from trackflow.config import ClickHouseSettings, CoreSettings, KafkaSettings, StackSettings, Topics
from trackflow.exceptions import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("TRACKFLOW_CACHE", REPO_ROOT / ".cache"))
KAFKA_LIBS = CACHE_DIR / "kafka" / "libs"
SCRIPTS = REPO_ROOT / "scripts"

#: retention of the event topics (7 days); the FX topic is compacted and kept forever
EVENT_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class StackPaths:
    """Where one local stack keeps its files."""

    root: Path  # <home>/stack
    run: Path
    logs: Path

    @classmethod
    def from_settings(cls, core: CoreSettings | None = None) -> StackPaths:
        core = core or CoreSettings()
        home = core.home.resolve()
        return cls(root=home / "stack", run=home / "run", logs=home / "logs")

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# -- process helpers (shared with the demo's service manager) -------------------------------


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, and never one this process handed out before.

    The OS may give the same ephemeral port to two binds in a row: a test broker once got one
    port for both of its listeners and refused to start (clean-clone CI, 2026-11-24).
    """
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process (all its threads) used so far; 0 if unknown or gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive, else None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # a zombie (exited child not yet reaped) counts as dead
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (FileNotFoundError, IndexError):
        pass
    return pid


_CHILDREN: list[subprocess.Popen[bytes]] = []


def start_process(cmd: list[str], *, pidfile: Path, logfile: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> int:
    """Start ``cmd`` detached (own session), logging to ``logfile``; record its pid."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
    _CHILDREN.append(proc)  # keep the handle: the service outlives this call by design
    pidfile.write_text(str(proc.pid))
    return proc.pid


def stop_process(pidfile: Path, *, grace: float = 20.0) -> bool:
    """Stop the process recorded in ``pidfile``: SIGTERM, then SIGKILL after ``grace`` seconds.

    Returns True if a process was running.
    """
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and read_pid(pidfile) is not None:
        time.sleep(0.1)
    if read_pid(pidfile) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status of a child this process started (no zombie, no ResourceWarning)."""
    for proc in [p for p in _CHILDREN if p.pid == pid]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        _CHILDREN.remove(proc)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Any, *, timeout: float, what: str, service: str, interval: float = 0.25) -> None:
    """Poll ``check()`` until it is truthy or raise StackError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise StackError(f"{service}: {what} not reached within {timeout:.0f}s", service=service)


def already_running(name: str, paths: StackPaths, port: int, healthy: Any, what: str) -> str | None:
    """What to report if service ``name`` needs no start: ours and healthy, or someone else's.

    Raises StackError if the port is taken by something that does not answer like the service.
    """
    pidfile = paths.pidfile(name)
    if read_pid(pidfile) is not None and healthy():
        return "already running"
    if read_pid(pidfile) is None and port_open("127.0.0.1", port):
        if healthy():
            return "already running (not managed by this stack)"
        raise StackError(f"port {port} is taken by something that is not {what}", service=name)
    return None


def wait_started(name: str, paths: StackPaths, healthy: Any, *, timeout: float, what: str,
                 interval: float = 0.25) -> str:
    """Wait until a just-started service answers; fail fast, naming its log, if it exits."""
    pidfile = paths.pidfile(name)

    def up() -> bool:
        if read_pid(pidfile) is None:
            raise StackError(f"{name} exited at start; see {paths.logfile(name)}", service=name)
        return bool(healthy())

    wait_until(up, timeout=timeout, what=what, service=name, interval=interval)
    return "started"


# -- installation ---------------------------------------------------------------------------


def ensure_kafka_installed() -> Path:
    """The Kafka jars folder, assembled from Maven Central on first use."""
    if any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        return KAFKA_LIBS
    script = SCRIPTS / "install-kafka.sh"
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if res.returncode != 0 or not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        raise StackError(f"installing Kafka failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}",
                         service="kafka")
    return KAFKA_LIBS


def ensure_redis_installed() -> str:
    """Path of redis-server, installing Debian's package if missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    res = subprocess.run(["bash", str(SCRIPTS / "install-redis.sh")], capture_output=True, text=True)
    found = shutil.which("redis-server")
    if res.returncode != 0 or not found:
        raise StackError(f"installing redis-server failed:\n{res.stderr[-2000:]}", service="redis")
    return found


# -- Kafka --------------------------------------------------------------------------------


def _kraft_cluster_id() -> str:
    """A random KRaft cluster id (base64url of a UUID), never starting with "-".

    Like Kafka's own ``Uuid.randomUuid``: an id starting with "-" reads as an option on the
    command line (``-t -xyz``: "expected one argument"); it failed a CI run once.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def kafka_properties(paths: StackPaths, s: StackSettings) -> str:
    data = paths.root / "kafka" / "data"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=PLAINTEXT://127.0.0.1:{s.stack_kafka_port},CONTROLLER://127.0.0.1:{s.stack_controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.stack_kafka_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{s.stack_controller_port}",
        f"log.dirs={data}",
        "num.partitions=4",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        "log.segment.bytes=134217728",
        "log.cleaner.dedupe.buffer.size=16777216",
        "",
    ])


LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def kafka_healthy(bootstrap: str, timeout: float = 2.0) -> bool:
    """True if the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=timeout)
    except Exception:  # KafkaException and timeouts alike mean "not healthy"
        return False
    return bool(md.brokers)


def start_kafka(paths: StackPaths, s: StackSettings) -> str:
    """Start the broker if it is not running. Returns what was done."""
    bootstrap = f"127.0.0.1:{s.stack_kafka_port}"
    pidfile = paths.pidfile("kafka")
    done = already_running("kafka", paths, s.stack_kafka_port, lambda: kafka_healthy(bootstrap), "Kafka")
    if done:
        return done
    libs = ensure_kafka_installed()
    java = shutil.which("java")
    if not java:
        raise StackError("java not found: install a JDK 17+ (apt-get install default-jre-headless)",
                         service="kafka")
    kdir = paths.root / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(kafka_properties(paths, s))
    (kdir / "log4j2.properties").write_text(LOG4J2)
    classpath = f"{libs}/*"
    jvm = [java, f"-Xms{s.stack_kafka_heap}", f"-Xmx{s.stack_kafka_heap}", "-XX:+UseG1GC",
           "-XX:TieredStopAtLevel=1", "-Xshare:auto",
           f"-Dlog4j2.configurationFile={kdir / 'log4j2.properties'}", "-cp", classpath]
    if not (kdir / "data" / "meta.properties").exists():
        res = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={_kraft_cluster_id()}",
             "-c", str(props)], capture_output=True, text=True,
        )
        if res.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {res.stderr[-2000:]}", service="kafka")
    start_process([*jvm, "kafka.Kafka", str(props)], pidfile=pidfile, logfile=paths.logfile("kafka"))
    return wait_started("kafka", paths, lambda: kafka_healthy(bootstrap, timeout=1.0), timeout=90,
                        what="metadata answer")


# -- Redis --------------------------------------------------------------------------------


def redis_healthy(url: str, timeout: float = 1.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except redis.RedisError:
        return False


def start_redis(paths: StackPaths, s: StackSettings) -> str:
    url = f"redis://127.0.0.1:{s.stack_redis_port}/0"
    done = already_running("redis", paths, s.stack_redis_port, lambda: redis_healthy(url), "Redis")
    if done:
        return done
    server = ensure_redis_installed()
    rdir = paths.root / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    cmd = [server, "--port", str(s.stack_redis_port), "--bind", "127.0.0.1", "--dir", str(rdir),
           "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
           "--protected-mode", "yes", "--maxmemory-policy", "noeviction"]
    start_process(cmd, pidfile=paths.pidfile("redis"), logfile=paths.logfile("redis"))
    return wait_started("redis", paths, lambda: redis_healthy(url), timeout=30, what="PING")


# -- topics -------------------------------------------------------------------------------


def topic_configs(topics: Topics) -> dict[str, dict[str, str]]:
    """Per-topic configs: event topics delete after 7 days; sessions and FX are compacted."""
    events = {"cleanup.policy": "delete", "retention.ms": str(EVENT_RETENTION_MS),
              "compression.type": "producer"}
    return {
        topics.raw: events,
        topics.enriched: events,
        topics.invalid: {**events, "retention.ms": str(4 * EVENT_RETENTION_MS)},
        topics.sessions: {"cleanup.policy": "compact,delete", "retention.ms": str(EVENT_RETENTION_MS)},
        topics.fx: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
    }


def ensure_topics(kafka: KafkaSettings | None = None, *, timeout: float = 30.0) -> list[str]:
    """Create trackflow's topics if missing, with their partitions and configs. Returns the new ones."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    kafka = kafka or KafkaSettings()
    admin = AdminClient(kafka.client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    topics = kafka.topics
    wanted = []
    for name, cfg in topic_configs(topics).items():
        if name in existing:
            continue
        parts = 1 if name == topics.fx else kafka.partitions
        wanted.append(NewTopic(name, num_partitions=parts, replication_factor=kafka.replication_factor,
                               config=cfg))
    created = []
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []:
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"creating topic {name} failed: {exc}", service="kafka") from exc
    return created


def delete_topics(admin: Any, prefixes: str | tuple[str, ...], *, timeout: float = 30.0) -> list[str]:
    """Best-effort deletion of every topic whose name starts with one of ``prefixes``.

    Used to clean up after test runs and by the demo's reset. Returns the names asked for.
    """
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
    if names:
        for fut in admin.delete_topics(names, request_timeout=timeout).values():
            with contextlib.suppress(Exception):  # already gone, or the broker is busy
                fut.result()
    return names


# -- the stack as a whole --------------------------------------------------------------------


def status(core: CoreSettings | None = None) -> dict[str, dict[str, Any]]:
    """Health and address of each service of the stack as configured (local or external)."""
    from trackflow.config import RedisSettings, SchemaRegistrySettings
    from trackflow.registry_stack import registry_healthy, registry_url

    core = core or CoreSettings()
    kafka = KafkaSettings()
    redis_url = RedisSettings().redis_url.get_secret_value()
    ch = ClickHouseSettings()
    out: dict[str, dict[str, Any]] = {
        "kafka": {"ok": kafka_healthy(kafka.kafka_bootstrap), "address": kafka.kafka_bootstrap},
        "redis": {"ok": redis_healthy(redis_url), "address": _redact_url(redis_url)},
    }
    registry = SchemaRegistrySettings().schema_registry_url
    stack_settings = StackSettings()
    if registry and not registry.startswith("mock://"):
        out["schema_registry"] = {"ok": registry_healthy(registry), "address": _redact_url(registry)}
    elif stack_settings.stack_registry:
        url = registry_url(stack_settings.stack_registry_port)
        out["schema_registry"] = {"ok": registry_healthy(url), "address": url, "in_use": False}
    if ch.is_embedded():
        path = ch.embedded_path(core).resolve()
        path.mkdir(parents=True, exist_ok=True)
        out["clickhouse"] = {"ok": os.access(path, os.W_OK), "address": f"chdb://{path}",
                             "mode": "embedded"}
    else:
        out["clickhouse"] = _clickhouse_server_status(ch)
    return out


def _redact_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _clickhouse_server_status(ch: ClickHouseSettings) -> dict[str, Any]:
    import httpx

    url = ch.clickhouse_url.get_secret_value() if ch.clickhouse_url else ""
    try:
        ok = httpx.get(url.rstrip("/") + "/ping", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        ok = False
    return {"ok": ok, "address": _redact_url(url), "mode": "server"}


def up(core: CoreSettings | None = None) -> dict[str, str]:
    """Bring the local stack up (idempotent) and create the topics. Returns what each step did."""
    core = core or CoreSettings()
    s = StackSettings()
    paths = StackPaths.from_settings(core)
    done = {"kafka": start_kafka(paths, s), "redis": start_redis(paths, s)}
    if s.stack_registry:
        from trackflow.registry_stack import start_registry

        done["registry"] = start_registry(paths, s.stack_registry_port)
    chdir = ClickHouseSettings().embedded_path(core)
    chdir.mkdir(parents=True, exist_ok=True)
    done["clickhouse"] = f"embedded data directory {chdir.resolve()}"
    created = ensure_topics(KafkaSettings())
    done["topics"] = f"created {', '.join(created)}" if created else "all present"
    return done


def down(core: CoreSettings | None = None) -> dict[str, str]:
    """Stop the local stack's processes by pid."""
    paths = StackPaths.from_settings(core)
    return {name: ("stopped" if stop_process(paths.pidfile(name)) else "was not running")
            for name in ("registry", "redis", "kafka")}


# -- CLI ----------------------------------------------------------------------------------


@click.group("stack")
def stack() -> None:
    """Run the local stack (Kafka, Redis, embedded ClickHouse) without Docker."""


@stack.command("up")
def up_cmd() -> None:
    """Install if needed, start every service (idempotent), create the topics."""
    for name, what in up().items():
        click.echo(f"{name:<11} {what}")


@stack.command("down")
def down_cmd() -> None:
    """Stop the local stack's services by pid."""
    for name, what in down().items():
        click.echo(f"{name:<11} {what}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON; exit 1 if any service is down.")
def status_cmd(as_json: bool) -> None:
    """Show each service, its address and whether it answers; exit 1 if any is down."""
    from trackflow.cli import echo_json

    st = status()
    if as_json:
        echo_json(st)
    else:
        for name, info in st.items():
            mark = "up  " if info["ok"] else "DOWN"
            click.echo(f"{name:<16} {mark} {info['address']}")
    if not all(v["ok"] for v in st.values()):
        raise SystemExit(1)


commands = [stack]
