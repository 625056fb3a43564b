"""Where ``trackflow report`` and ``trackflow sql`` get their answers.

In order: the running sink's read API (``<home>/run/readapi.json``, checked with ``/healthz``); else,
with a ClickHouse server URL, ClickHouse directly; else the embedded data directory itself, when no
process owns it. Also the plain-text table printer of the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from sinks.exceptions import MetricError, ReadApiUnavailable, ReadOnlyViolation, SinkError
from trackflow.config import ClickHouseSettings, CoreSettings


@dataclass(frozen=True)
class ReadApiRef:
    """A running read API: base ``url`` and the ``token`` to send."""

    url: str
    token: str


def find_read_api(core: CoreSettings | None = None) -> ReadApiRef | None:
    """The running sink's read API, or None when there is none (or it does not answer)."""
    from sinks.service import readapi_file
    from sinks.settings import SinkSettings

    path = readapi_file(core)
    try:
        info = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OSError):
        return None
    admin = SinkSettings().read_key
    ref = ReadApiRef(str(info["url"]), admin.get_secret_value() if admin else str(info.get("token", "")))
    try:
        ok = httpx.get(ref.url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return None
    return ref if ok else None


def _call(ref: ReadApiRef, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, ref.url + path, headers={"X-Read-Key": ref.token}, timeout=120, **kw)
    body = r.json()
    if r.status_code >= 400:
        msg = body.get("error", r.text) if isinstance(body, dict) else r.text
        param = body.get("param") if isinstance(body, dict) else None
        if param and path.startswith("/api/metrics"):
            raise MetricError(msg, param=param)
        if path == "/api/sql":
            raise ReadOnlyViolation(msg)
        raise SinkError(f"read API answered {r.status_code}: {msg}")
    return body


def _direct_client(settings: dict[str, Any] | None = None) -> Any:
    from sinks.clickhouse import connect

    return connect(ClickHouseSettings(), CoreSettings(), settings=settings)


def report(metric: str, app: str, date_from: str, date_to: str, by: str, params: dict[str, Any]) -> list[Any]:
    """Rows of a metric, from the read API or ClickHouse."""
    ref = find_read_api()
    if ref is not None:
        q = {"app": app, "from": date_from, "to": date_to, "by": by,
             **{k: v for k, v in params.items() if v is not None}}
        rows: list[Any] = _call(ref, "GET", f"/api/metrics/{metric}", params=q)["rows"]
        return rows
    from sinks.metrics import run_metric
    from trackflow.apps import open_registry

    if params.get("window_days") is None:
        a = open_registry().get(app)
        if a is not None:
            params = {**params, "window_days": a.retention_window_days}
    client = _direct_client()
    try:
        return run_metric(client, metric, app, date_from, date_to, by, **params)
    finally:
        client.close()


def sql(statement: str) -> dict[str, Any]:
    """``{"columns", "rows"}`` of one read-only statement."""
    ref = find_read_api()
    if ref is not None:
        result: dict[str, Any] = _call(ref, "POST", "/api/sql", json={"sql": statement})
        return result
    from sinks.readapi import READONLY_SESSION
    from sinks.sqlguard import single_statement

    stmt = single_statement(statement)
    client = _direct_client(READONLY_SESSION)
    try:
        res = client.query(stmt)
        cols = list(res.column_names)
        return {"columns": cols, "rows": [dict(zip(cols, r, strict=True)) for r in res.result_rows]}
    except SinkError:
        raise
    except Exception as exc:
        raise ReadOnlyViolation(f"query failed: {exc}") from exc
    finally:
        client.close()


def ensure_source() -> None:
    """Raise :class:`ReadApiUnavailable` early when there is nothing to ask."""
    if find_read_api() is None and ClickHouseSettings().is_embedded():
        path = ClickHouseSettings().embedded_path(CoreSettings())
        if not path.exists():
            raise ReadApiUnavailable(f"no running sink (trackflow sink) and no data at {path}")


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as an aligned plain-text table."""
    if not rows:
        return "(no rows)"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w)
                               for v, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else str(v)
    if isinstance(v, (list, dict)):
        return orjson.dumps(v, default=str).decode()
    return str(v)


def _numeric(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True
