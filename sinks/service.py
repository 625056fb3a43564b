"""The ``trackflow sink`` process: migrations, the consumer loop thread and the read API.

In embedded mode this process owns the chdb data directory, so it also serves the read API that
``trackflow report``, ``trackflow sql`` and the dashboard use. On start it applies the missing
migrations (``trackflow db migrate`` is only needed in server mode, or with no sink running), then
writes ``<home>/run/readapi.json`` (``url``, ``port``, ``pid``, a local admin ``token``; mode 0600) so
the CLI can find it; the file is removed on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import orjson

from schemas import codec_from_settings
from sinks.clickhouse import ClickHouseSink, ThreadClients, connect
from sinks.loop import SinkLoop
from sinks.migrate import migrate
from sinks.settings import SinkSettings
from trackflow.apps import open_registry
from trackflow.config import ClickHouseSettings, CoreSettings, KafkaSettings, RedisSettings
from trackflow.runtime import arrow_pool, tune_gc

log = logging.getLogger("trackflow.sink")


def readapi_file(core: CoreSettings | None = None) -> Path:
    """Where the running sink advertises its read API."""
    return (core or CoreSettings()).run_dir / "readapi.json"


def run_migrations(ch: ClickHouseSettings, core: CoreSettings, settings: SinkSettings) -> list[dict[str, Any]]:
    """Apply the missing migrations with a short-lived client."""
    client = connect(ch, core, database=None)
    try:
        return migrate(client, database=ch.clickhouse_database, cluster=ch.clickhouse_cluster,
                       dedup_window=settings.sink_dedup_window)
    finally:
        client.close()


def build_loop(settings: SinkSettings, ch: ClickHouseSettings, core: CoreSettings) -> SinkLoop:
    """The consumer loop with its ClickHouse and Redis sinks (clients opened here, used by one thread)."""
    import redis as redis_lib

    from sinks.redis import RedisSink

    kafka = KafkaSettings()
    rs = RedisSettings()
    registry = open_registry()

    def months(app_id: str) -> int:
        app = registry.get(app_id)
        return app.data_retention_months if app else 24

    group = settings.group_id(kafka.topic_prefix)
    chsink = ClickHouseSink(
        connect(ch, core), group, months, clients=ThreadClients(ch, core), insert_threads=settings.sink_insert_threads,
        check_rewrites=ch.clickhouse_cluster is None, merge_events=ch.clickhouse_cluster is None,
    )
    rsink = RedisSink(redis_lib.Redis.from_url(rs.redis_url.get_secret_value()), rs.redis_key_prefix,
                      group, settings.online_window_s)
    codecs = {k: codec_from_settings(n) for k, n in
              (("events", "enriched_event"), ("sessions", "session"), ("invalid", "invalid_event"),
               ("fx", "fx_rates"))}
    return SinkLoop(kafka, settings, chsink, [rsink], codecs)


def serve(with_api: bool = True, port: int | None = None) -> None:
    """Run the sink until SIGINT/SIGTERM. ``port`` overrides ``TRACKFLOW_READ_API_PORT`` (0: any free port)."""
    settings = SinkSettings()
    ch = ClickHouseSettings()
    core = CoreSettings()
    log.info("Arrow memory pool: %s", arrow_pool())
    applied = run_migrations(ch, core, settings)
    for m in applied:
        log.info("applied migration %03d_%s", m["version"], m["name"])
    loop = build_loop(settings, ch, core)
    thread = threading.Thread(target=_run_loop, args=(loop,), name="sink-loop", daemon=True)
    if not with_api:
        signal.signal(signal.SIGTERM, lambda *_: loop.stop())
        signal.signal(signal.SIGINT, lambda *_: loop.stop())
        tune_gc()
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
        return
    import redis as redis_lib
    import uvicorn

    from sinks.readapi import ReadApi

    token = secrets.token_urlsafe(24)
    admin = [token] + ([settings.read_key.get_secret_value()] if settings.read_key else [])
    rs = RedisSettings()
    api = ReadApi(
        clients=ThreadClients(ch, core), registry=open_registry(), admin_keys=admin,
        redis=redis_lib.Redis.from_url(rs.redis_url.get_secret_value()), redis_prefix=rs.redis_key_prefix,
        online_window_s=settings.online_window_s, stream_interval_s=settings.live_stream_interval_s,
        status=lambda: dict(loop.stats, paused=loop.paused, buffered_rows=loop.batcher.rows),
        embedded=ch.is_embedded(),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.read_api_host, settings.read_api_port if port is None else port))
    bound = sock.getsockname()[1]
    info = readapi_file(core)
    info.parent.mkdir(parents=True, exist_ok=True)
    host = settings.read_api_host if settings.read_api_host not in ("0.0.0.0", "") else "127.0.0.1"
    _write_private(info, {"url": f"http://{host}:{bound}", "port": bound, "pid": os.getpid(), "token": token,
                          "database": ch.clickhouse_database, "embedded": ch.is_embedded()})
    tune_gc()  # start-up is done: fewer collections, none walking what start-up built
    thread.start()
    # uvicorn re-raises the signal that stopped it, after restoring the previous handlers: make those
    # ours, so the final flush, commit and clean-up below run instead of the default "terminate".
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    server = uvicorn.Server(uvicorn.Config(api.asgi(), log_level="warning", lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        loop.stop()
        thread.join(30)
        api.close()
        with contextlib.suppress(FileNotFoundError):
            if orjson.loads(info.read_bytes()).get("pid") == os.getpid():
                info.unlink()


def _run_loop(loop: SinkLoop) -> None:
    try:
        loop.run()
    except Exception:
        log.exception("sink loop crashed")
        os.kill(os.getpid(), signal.SIGTERM)


def _write_private(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(data))
    os.replace(tmp, path)
