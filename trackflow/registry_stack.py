"""A Confluent-compatible schema registry for the local stack, without Docker.

**Apicurio Registry 3.0.x**, whose Confluent-compatible API is at ``/apis/ccompat/v7``, run from
its Maven Central distribution artifact (``io.apicurio:apicurio-registry-app:<v>:tar.gz:all``, a
Quarkus runner jar plus ``lib/``) that ``scripts/install-registry.sh`` unpacks into the git-ignored
``.cache/registry/<v>``. 3.0.x is the newest line that runs on Java 17 (3.1+ needs Java 21).

Storage is Apicurio's SQL storage on an H2 *file* database under ``<home>/stack/registry``, so
schema ids survive a restart like the Kafka data that refers to them. The process logs to
``<home>/logs/registry.log`` and records its pid in ``<home>/run/registry.pid``; stop it with
``stack.stop_process(paths.pidfile("registry"))``.

Known limit of Apicurio 3.0.x: it rewrites ``:"{}"`` to ``:{}`` in a schema's text before parsing
it as Avro, so a string field with ``"default":"{}"`` written without whitespace after the colon
makes it answer 422 "Failed to discover artifact type from content". Whitespace other than spaces
(a newline or tab after the colon) or a JSON escape (``"{\\u007d"``) avoids it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from trackflow.exceptions import StackError
from trackflow.stack import CACHE_DIR, SCRIPTS, StackPaths, already_running, start_process, wait_started

REGISTRY_VERSION = os.environ.get("TRACKFLOW_REGISTRY_VERSION", "3.0.9")
REGISTRY_HOME = CACHE_DIR / "registry" / REGISTRY_VERSION
#: the Confluent-compatible API below the server's root
CCOMPAT_PATH = "/apis/ccompat/v7"
#: JVM heap of the registry; it idles at about 170 MB RSS
REGISTRY_HEAP = os.environ.get("TRACKFLOW_REGISTRY_HEAP", "384m")


def registry_url(port: int, host: str = "127.0.0.1") -> str:
    """The Confluent-compatible base URL of a registry on ``host:port``."""
    return f"http://{host}:{port}{CCOMPAT_PATH}"


def _runner() -> Path:
    return REGISTRY_HOME / f"apicurio-registry-app-{REGISTRY_VERSION}-runner.jar"


def ensure_registry_installed() -> Path:
    """The registry's runner jar, fetched from Maven Central on first use."""
    if _runner().is_file():
        return _runner()
    env = {**os.environ, "TRACKFLOW_CACHE": str(CACHE_DIR), "TRACKFLOW_REGISTRY_VERSION": REGISTRY_VERSION}
    res = subprocess.run(["bash", str(SCRIPTS / "install-registry.sh")], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0 or not _runner().is_file():
        raise StackError(f"installing the schema registry failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}",
                         service="registry")
    return _runner()


def registry_healthy(url: str, timeout: float = 2.0) -> bool:
    """True if ``url`` (a Confluent-compatible base URL) answers ``GET /subjects`` with a JSON list."""
    import httpx

    try:
        res = httpx.get(url.rstrip("/") + "/subjects", timeout=timeout)
        return res.status_code == 200 and isinstance(res.json(), list)
    except (httpx.HTTPError, ValueError):
        return False


def registry_command(paths: StackPaths, port: int, java: str, runner: Path) -> list[str]:
    """The java command line of a registry on 127.0.0.1:``port`` storing in ``<stack>/registry``."""
    data = paths.root / "registry"
    return [
        java, "-Xms64m", f"-Xmx{REGISTRY_HEAP}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Djava.util.logging.manager=org.jboss.logmanager.LogManager",
        f"-Dquarkus.http.port={port}", "-Dquarkus.http.host=127.0.0.1",
        "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",
        f"-Dapicurio.datasource.url=jdbc:h2:file:{data / 'registry'}",
        f"-Dapicurio.import.work-dir={data}", f"-Dapicurio.storage.snapshot.location={data}",
        "-jar", str(runner),
    ]


def start_registry(paths: StackPaths, port: int) -> str:
    """Start the schema registry on 127.0.0.1:``port`` if it is not running. Returns what was done."""
    url = registry_url(port)
    done = already_running("registry", paths, port, lambda: registry_healthy(url), "a schema registry")
    if done:
        return done
    runner = ensure_registry_installed()
    java = shutil.which("java")
    if not java:
        raise StackError("java not found: install a JDK 17+ (apt-get install default-jre-headless)",
                         service="registry")
    (paths.root / "registry").mkdir(parents=True, exist_ok=True)
    start_process(registry_command(paths, port, java, runner), pidfile=paths.pidfile("registry"),
                  logfile=paths.logfile("registry"), cwd=runner.parent)
    return wait_started("registry", paths, lambda: registry_healthy(url, timeout=1.0), timeout=120,
                        what="GET /subjects", interval=0.5)
