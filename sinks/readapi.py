"""The read API: named metrics, read-only SQL and live tiles over HTTP (Starlette).

Served by ``trackflow sink`` in embedded mode (the process that owns the chdb data directory) and
by ``trackflow dashboard`` in server mode. Endpoints (the dashboard builds against this contract):

- ``GET /healthz`` (no key): ``{"status": "ok", "clickhouse": "embedded"|"server", "sink": {...}}``
- ``GET /api/apps`` -> ``[{"app_id", "name", "reporting_currency"}]`` (the key's app, or all for admin)
- ``GET /api/metrics`` -> ``{"metrics": [names], "params": {name: [extra params]}}``
- ``GET /api/metrics/{name}?app=A&from=YYYY-MM-DD&to=YYYY-MM-DD&by=users|devices[&steps=a,b&window=S
  &window_days=X&max_day=N&group=day|product&within=S]`` ->
  ``{"metric", "app", "from", "to", "by", "rows": [...]}``; 400 naming the bad parameter.
- ``POST /api/sql`` ``{"sql": "SELECT ..."}`` -> ``{"columns": [...], "rows": [{...}], "truncated": bool}``;
  exactly one statement, run with ``readonly=1``; admin key only (an app key would see other apps).
- ``POST /api/gdpr/delete`` ``{"app": A, "user_ids": [stored ids]}`` -> :func:`trackflow.gdpr.delete_user`'s
  counts; admin key only (``trackflow gdpr delete`` calls it in embedded mode).
- ``GET /api/live?app=A`` -> :func:`sinks.redis.live_tiles`; ``GET /api/live/stream?app=A``: the same
  dict as server-sent events (``data: {json}``) every ``live_stream_interval_s`` (2 s).
- ``GET /`` and ``/static/...``: the dashboard, from ``sinks/dashboard/static/`` when it exists.

Authentication: the ``X-Read-Key`` header, ``Authorization: Bearer <key>`` or ``?key=``. Accepted: the
app's read key (that app only) or the admin key (``TRACKFLOW_READ_KEY``, or the local token the sink
writes to ``<home>/run/readapi.json``). Anything else: 401.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sinks.clickhouse import ThreadClients
from sinks.exceptions import MetricError, ReadOnlyViolation
from sinks.metrics import METRIC_PARAMS, METRICS, run_metric
from sinks.redis import live_tiles
from sinks.sqlguard import single_statement
from trackflow.apps import App, AppRegistry

log = logging.getLogger("trackflow.readapi")
STATIC_DIR = Path(__file__).resolve().parent / "dashboard" / "static"
MAX_SQL_ROWS = 10_000
#: session settings of the clients that run user SQL: read-only for the whole session (per-query
#: settings are applied with SET and restored on chdb, which a read-only session refuses)
#: (``readonly`` must come last: once it is set, the session refuses further SETs)
READONLY_SESSION: dict[str, Any] = {"max_result_rows": MAX_SQL_ROWS + 1, "result_overflow_mode": "break",
                                    "readonly": 1}


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)


def _error(status: int, message: str, param: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if param:
        body["param"] = param
    return ORJSONResponse(body, status_code=status)


class ReadApi:
    """State of the read API.

    Parameters:
        clients: per-thread ClickHouse clients.
        registry: the app registry (read keys, reporting currencies, retention windows).
        admin_keys: keys accepted for every app (``TRACKFLOW_READ_KEY`` and/or the local token).
        redis: a ``redis.Redis`` for live tiles (None: 503 on /api/live).
        redis_prefix / online_window_s: as the sink writes them.
        stream_interval_s: seconds between server-sent events.
        status: callable returning the sink loop's stats for /healthz.
        embedded: whether ClickHouse is embedded (reported by /healthz).
        sql_clients: per-thread clients whose session is read-only (default: made from ``clients``).
    """

    def __init__(
        self,
        clients: ThreadClients,
        registry: AppRegistry,
        admin_keys: list[str],
        redis: Any = None,
        redis_prefix: str = "tf:",
        online_window_s: int = 300,
        stream_interval_s: float = 2.0,
        status: Callable[[], dict[str, Any]] | None = None,
        embedded: bool = True,
        sql_clients: ThreadClients | None = None,
    ) -> None:
        self.clients = clients
        self.sql_clients = sql_clients or ThreadClients(clients.ch, clients.core, settings=READONLY_SESSION)
        self.registry = registry
        self.admin_keys = [k for k in admin_keys if k]
        self.redis = redis
        self.redis_prefix = redis_prefix
        self.online_window_s = online_window_s
        self.stream_interval_s = stream_interval_s
        self.status = status
        self.embedded = embedded

    # -- auth ----------------------------------------------------------------------------------

    @staticmethod
    def _key(request: Request) -> str | None:
        key = request.headers.get("x-read-key")
        if key:
            return key
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query_params.get("key")

    def _is_admin(self, key: str) -> bool:
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.admin_keys)

    def principal(self, request: Request) -> tuple[bool, App | None] | None:
        """``(is_admin, app)`` for the request's key, or None when the key is missing or wrong."""
        key = self._key(request)
        if not key:
            return None
        if self._is_admin(key):
            return True, None
        app = self.registry.by_read_key(key)
        if app is None:
            return None
        return False, app

    def _app_for(self, request: Request) -> App | Response:
        who = self.principal(request)
        if who is None:
            return _error(401, "a valid read key is required (X-Read-Key, Bearer or ?key=)")
        is_admin, own = who
        app_id = request.query_params.get("app") or (own.app_id if own else "")
        if not app_id:
            return _error(400, "app is required", "app")
        if not is_admin and (own is None or own.app_id != app_id):
            return _error(401, f"this key cannot read app {app_id!r}")
        app = self.registry.get(app_id)
        if app is None:
            return _error(400, f"unknown app {app_id!r}", "app")
        return app

    # -- handlers --------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok", "clickhouse": "embedded" if self.embedded else "server"}
        if self.status is not None:
            body["sink"] = self.status()
        return ORJSONResponse(body)

    async def apps(self, request: Request) -> Response:
        who = self.principal(request)
        if who is None:
            return _error(401, "a valid read key is required")
        is_admin, own = who
        apps = self.registry.apps() if is_admin else [a for a in [own] if a is not None]
        return ORJSONResponse(
            [{"app_id": a.app_id, "name": a.name, "reporting_currency": a.reporting_currency} for a in apps]
        )

    async def metric_list(self, request: Request) -> Response:
        if self.principal(request) is None:
            return _error(401, "a valid read key is required")
        return ORJSONResponse({"metrics": sorted(METRICS), "params": METRIC_PARAMS})

    async def metric(self, request: Request) -> Response:
        name = request.path_params["name"]
        app = self._app_for(request)
        if isinstance(app, Response):
            return app
        q = request.query_params
        for p in ("from", "to"):
            if not q.get(p):
                return _error(400, f"{p} is required (YYYY-MM-DD)", p)
        by = q.get("by") or "users"
        params: dict[str, Any] = {k: q.get(k) for k in ("steps", "window", "max_day", "group", "within")}
        params["window_days"] = q.get("window_days") or app.retention_window_days
        if name not in METRICS:
            return _error(404, f"unknown metric {name!r}; one of: {', '.join(sorted(METRICS))}", "metric")

        def work() -> list[dict[str, Any]]:
            return run_metric(self.clients.get(), name, app.app_id, q["from"], q["to"], by, **params)

        try:
            rows = await asyncio.to_thread(work)
        except MetricError as exc:
            return _error(400, str(exc), exc.param)
        except Exception as exc:
            log.exception("metric %s failed", name)
            return _error(500, f"metric {name} failed: {exc}")
        return ORJSONResponse({"metric": name, "app": app.app_id, "from": q["from"], "to": q["to"], "by": by,
                               "rows": rows})

    async def sql(self, request: Request) -> Response:
        who = self.principal(request)
        if who is None:
            return _error(401, "a valid read key is required")
        if not who[0]:
            return _error(403, "SQL needs the admin read key (TRACKFLOW_READ_KEY); app keys use /api/metrics")
        try:
            body = orjson.loads(await request.body())
            stmt = single_statement(body.get("sql") if isinstance(body, dict) else None)
        except orjson.JSONDecodeError:
            return _error(400, 'body must be JSON: {"sql": "SELECT ..."}', "sql")
        except ReadOnlyViolation as exc:
            return _error(400, str(exc), "sql")

        def work() -> dict[str, Any]:
            res = self.sql_clients.get().query(stmt)
            cols = list(res.column_names)
            rows = res.result_rows
            truncated = len(rows) > MAX_SQL_ROWS
            return {"columns": cols, "rows": [dict(zip(cols, r, strict=True)) for r in rows[:MAX_SQL_ROWS]],
                    "truncated": truncated}

        try:
            return ORJSONResponse(await asyncio.to_thread(work))
        except Exception as exc:
            return _error(400, f"query failed: {exc}", "sql")

    async def gdpr_delete(self, request: Request) -> Response:
        from trackflow.gdpr import GdprError, delete_user

        who = self.principal(request)
        if who is None:
            return _error(401, "a valid read key is required")
        if not who[0]:
            return _error(403, "deleting users needs the admin read key (TRACKFLOW_READ_KEY)")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, 'body must be JSON: {"app": ..., "user_ids": [...]}')
        app_id = body.get("app") if isinstance(body, dict) else None
        ids = body.get("user_ids") if isinstance(body, dict) else None
        if not isinstance(app_id, str) or self.registry.get(app_id) is None:
            return _error(400, f"unknown app {app_id!r}", "app")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            return _error(400, "user_ids must be a non-empty list of strings", "user_ids")

        def work() -> dict[str, Any]:
            return delete_user(self.clients.get(), app_id, ids, cluster=self.clients.ch.clickhouse_cluster,
                               redis=self.redis, redis_prefix=self.redis_prefix)

        try:
            return ORJSONResponse(await asyncio.to_thread(work))
        except GdprError as exc:
            return _error(400, str(exc), "user_ids")
        except Exception as exc:
            log.exception("gdpr delete failed for app %s", app_id)
            return _error(500, f"delete failed: {type(exc).__name__}")

    def _tiles(self, app_id: str) -> dict[str, Any]:
        return live_tiles(self.redis, self.redis_prefix, app_id, time.time(), self.online_window_s)

    async def live(self, request: Request) -> Response:
        app = self._app_for(request)
        if isinstance(app, Response):
            return app
        if self.redis is None:
            return _error(503, "live counters need Redis (TRACKFLOW_REDIS_URL)")
        try:
            return ORJSONResponse(await asyncio.to_thread(self._tiles, app.app_id))
        except Exception as exc:
            return _error(503, f"redis unavailable: {exc}")

    async def live_stream(self, request: Request) -> Response:
        app = self._app_for(request)
        if isinstance(app, Response):
            return app
        if self.redis is None:
            return _error(503, "live counters need Redis (TRACKFLOW_REDIS_URL)")

        async def events() -> AsyncIterator[bytes]:
            while not await request.is_disconnected():
                try:
                    tiles: dict[str, Any] = await asyncio.to_thread(self._tiles, app.app_id)
                except Exception as exc:
                    tiles = {"error": f"redis unavailable: {exc}"}
                yield b"data: " + orjson.dumps(tiles) + b"\n\n"
                await asyncio.sleep(self.stream_interval_s)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def index(self, request: Request) -> Response:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return FileResponse(index)
        return ORJSONResponse({"service": "trackflow read API", "endpoints": [
            "/healthz", "/api/apps", "/api/metrics", "/api/metrics/{name}", "/api/sql", "/api/live",
            "/api/live/stream"]})

    def close(self) -> None:
        self.clients.close()
        self.sql_clients.close()

    def asgi(self) -> Starlette:
        """The Starlette application."""
        return Starlette(routes=[
            Route("/", self.index),
            Route("/healthz", self.healthz),
            Route("/api/apps", self.apps),
            Route("/api/metrics", self.metric_list),
            Route("/api/metrics/{name}", self.metric),
            Route("/api/sql", self.sql, methods=["POST"]),
            Route("/api/gdpr/delete", self.gdpr_delete, methods=["POST"]),
            Route("/api/live", self.live),
            Route("/api/live/stream", self.live_stream),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        ])


def create_app_from_settings(status: Callable[[], dict[str, Any]] | None = None,
                             extra_admin_keys: list[str] | None = None) -> Starlette:
    """The read API configured from the environment (what ``trackflow dashboard`` serves in server mode)."""
    import redis as redis_lib

    from sinks.settings import SinkSettings
    from trackflow.apps import open_registry
    from trackflow.config import ClickHouseSettings, RedisSettings

    s = SinkSettings()
    r = RedisSettings()
    ch = ClickHouseSettings()
    admin = [s.read_key.get_secret_value()] if s.read_key else []
    api = ReadApi(
        clients=ThreadClients(ch),
        registry=open_registry(),
        admin_keys=admin + (extra_admin_keys or []),
        redis=redis_lib.Redis.from_url(r.redis_url.get_secret_value()),
        redis_prefix=r.redis_key_prefix,
        online_window_s=s.online_window_s,
        stream_interval_s=s.live_stream_interval_s,
        status=status,
        embedded=ch.is_embedded(),
    )
    return api.asgi()
