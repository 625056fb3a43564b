"""GDPR erasure: ``trackflow gdpr delete --app A --user U`` and the suppression list the pipeline reads.

A delete does three things, in this order:

1. **Suppress**: the user's ids, in every stored form (clear and, with a salt, hashed; see
   :func:`pipeline.privacy.stored_user_ids`), are added to the suppression list
   ``<dir of apps.json>/suppressions.json`` as :func:`pipeline.privacy.suppression_digest`
   values (no clear id is written down). Workers re-read the file within a second; later events
   of the user - by ``user_id``, or from a device that identity stitching links to the user - end
   as dead letters with reason ``suppressed`` and a payload stripped of user data.
2. **Delete from ClickHouse** (lightweight ``DELETE``, visible at once): ``events`` and
   ``sessions`` rows whose ``user_id``/``user_key`` is the user, or that are anonymous
   (``user_id IS NULL``) and come from one of the user's devices (anonymous ids seen with the
   user); ``invalid_events`` whose payload names the user or one of those devices; ``first_seen``
   entries of the user and devices. In embedded mode the sink owns the data directory, so the CLI
   asks its read API (``POST /api/gdpr/delete``, admin key); otherwise it connects directly.
3. **Redis**: the user and devices leave the ``online`` sorted set. HyperLogLog members (daily
   active users/devices) cannot be removed; those keys expire after 3 days. Aggregates without
   user ids (``daily_active`` uniq states, revenue and error rollups) are left as they are.

Events already past the pipeline when the suppression is recorded (enriched, not yet written) can
still land after the delete; run the delete again once the sink has caught up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from pipeline.privacy import Privacy, PrivacySettings, stored_user_ids, suppression_digest
from trackflow.config import ClickHouseSettings, CoreSettings
from trackflow.exceptions import TrackflowError


class GdprError(TrackflowError):
    """A delete could not be carried out; ``app_id`` names the app."""

    def __init__(self, message: str, *, app_id: str | None = None) -> None:
        super().__init__(message)
        self.app_id = app_id


def suppressions_path(core: CoreSettings | None = None) -> Path:
    """The suppression list: next to the app registry, so every process that reads one reads both."""
    return (core or CoreSettings()).apps_path.parent / "suppressions.json"


class SuppressionList:
    """Digests of deleted users, kept fresh like the app registry (one ``stat`` a second at most).

    Parameters:
        path: the JSON file (created by the first :meth:`add`).
        refresh_interval: seconds between checks for changes made by other processes.
    """

    def __init__(self, path: Path, *, refresh_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._digests: frozenset[str] = frozenset()
        self._mtime: int | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
            raw = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            self._entries, self._digests, self._mtime = {}, frozenset(), None
            return
        except orjson.JSONDecodeError as exc:
            raise GdprError(f"suppression list {self.path} is not valid JSON: {exc}") from exc
        entries = raw.get("entries", {}) if isinstance(raw, dict) else {}
        self._entries = dict(entries)
        self._digests = frozenset(self._entries)
        self._mtime = st.st_mtime_ns

    def refresh(self, *, force: bool = False) -> None:
        """Reload the file if another process changed it (checked at most every interval)."""
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_interval:
            return
        self._checked = now
        try:
            mtime: int | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            with self._lock:
                self._load()

    def contains(self, app_id: str, stored_user_id: str) -> bool:
        """Whether this user (id as stored) of this app was deleted."""
        self.refresh()
        if not self._digests:
            return False
        return suppression_digest(app_id, stored_user_id) in self._digests

    def __len__(self) -> int:
        self.refresh()
        return len(self._digests)

    def count(self, app_id: str) -> int:
        """How many suppressed ids belong to ``app_id``."""
        self.refresh()
        return sum(1 for e in self._entries.values() if e.get("app_id") == app_id)

    def add(self, app_id: str, stored_ids: Iterable[str]) -> int:
        """Record these ids of ``app_id``; returns how many were new."""
        with self._lock:
            self._load()
            entries = dict(self._entries)
            at = datetime.now(UTC).isoformat()
            new = 0
            for uid in stored_ids:
                d = suppression_digest(app_id, uid)
                if d not in entries:
                    entries[d] = {"app_id": app_id, "at": at}
                    new += 1
            if new:
                self._save(entries)
            return new

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".suppressions-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"version": 1, "entries": entries}, option=orjson.OPT_INDENT_2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._entries, self._digests = entries, frozenset(entries)
        self._mtime = self.path.stat().st_mtime_ns


def privacy_from_env(core: CoreSettings | None = None) -> Privacy:
    """What a worker passes to :class:`pipeline.process.Processor`: the salt and the suppression list."""
    return Privacy(
        salt=PrivacySettings().salt(), suppressed=SuppressionList(suppressions_path(core)).contains
    )


# -- ClickHouse and Redis ------------------------------------------------------------------------


def _table(name: str, database: str | None, cluster: str | None) -> str:
    """Where to DELETE: the local table on every node when clustered (a Distributed table refuses it)."""
    local = f"{name}_local" if cluster else name
    qual = f"`{database}`.`{local}`" if database else f"`{local}`"
    return qual + (f" ON CLUSTER `{cluster}`" if cluster else "")


def _read_table(name: str, database: str | None) -> str:
    return f"`{database}`.`{name}`" if database else f"`{name}`"


#: the rows of a user, per table; parameters: app, ids (stored user ids), devs (anonymous ids)
CONDITIONS: dict[str, str] = {
    "events": "app_id = {app:String} AND (user_id IN {ids:Array(String)} OR user_key IN {ids:Array(String)} "
    "OR (user_id IS NULL AND anonymous_id IN {devs:Array(String)}))",
    "sessions": "app_id = {app:String} AND (user_id IN {ids:Array(String)} OR user_key IN {ids:Array(String)} "
    "OR (user_id IS NULL AND device_id IN {devs:Array(String)}))",
    "invalid_events": "app_id = {app:String} AND (JSONExtractString(payload, 'user_id') IN {ids:Array(String)} "
    "OR JSONExtractString(payload, 'previous_id') IN {ids:Array(String)} "
    "OR JSONExtractString(payload, 'anonymous_id') IN {devs:Array(String)})",
    "first_seen": "app_id = {app:String} AND (key IN {ids:Array(String)} OR key IN {devs:Array(String)})",
}


def delete_user(
    client: Any,
    app_id: str,
    user_ids: list[str],
    *,
    database: str | None = None,
    cluster: str | None = None,
    redis: Any = None,
    redis_prefix: str = "tf:",
) -> dict[str, Any]:
    """Delete every row of the user (ids in their stored forms) from ClickHouse, and from Redis.

    Returns ``{"app", "devices", "deleted": {table: rows}, "redis_removed": n}``.
    """
    if not user_ids or any(not isinstance(u, str) or not u for u in user_ids):
        raise GdprError("user ids must be non-empty strings", app_id=app_id)
    params: dict[str, Any] = {"app": app_id, "ids": list(user_ids)}
    devs = client.query(
        f"SELECT DISTINCT anonymous_id FROM {_read_table('events', database)} "
        "WHERE app_id = {app:String} AND anonymous_id IS NOT NULL "
        "AND (user_id IN {ids:Array(String)} OR user_key IN {ids:Array(String)})",
        parameters=params,
    ).result_rows
    params["devs"] = sorted(str(r[0]) for r in devs)
    deleted: dict[str, int] = {}
    for table, cond in CONDITIONS.items():
        n = client.query(
            f"SELECT count() FROM {_read_table(table, database)} WHERE {cond}", parameters=params
        ).result_rows[0][0]
        deleted[table] = int(n)
        if n:
            client.command(f"DELETE FROM {_table(table, database, cluster)} WHERE {cond}", parameters=params)
    removed = 0
    if redis is not None:
        members = list(dict.fromkeys([*user_ids, *params["devs"]]))
        removed = int(redis.zrem(f"{redis_prefix}live:{app_id}:online", *members))
    return {"app": app_id, "devices": len(params["devs"]), "deleted": deleted, "redis_removed": removed}


def _delete_direct(app_id: str, ids: list[str]) -> dict[str, Any]:
    import redis as redis_lib

    from sinks.clickhouse import connect
    from trackflow.config import RedisSettings

    ch = ClickHouseSettings()
    rs = RedisSettings()
    client = connect(ch, CoreSettings())
    r = redis_lib.Redis.from_url(rs.redis_url.get_secret_value())
    try:
        return delete_user(
            client, app_id, ids, cluster=ch.clickhouse_cluster, redis=r, redis_prefix=rs.redis_key_prefix
        )
    finally:
        client.close()
        with contextlib.suppress(Exception):
            r.close()


def delete(app_id: str, user: str, *, suppress: bool = True) -> dict[str, Any]:
    """The whole erasure of ``user`` of ``app_id`` (see the module docstring); returns the counts."""
    from sinks.reports import _call, find_read_api
    from trackflow.apps import open_registry

    if not user:
        raise GdprError("the user id must not be empty", app_id=app_id)
    app = open_registry().require(app_id)
    ids = stored_user_ids(app, user, PrivacySettings().salt())
    added = SuppressionList(suppressions_path()).add(app.app_id, ids) if suppress else 0
    ref = find_read_api()
    if ref is not None:
        result: dict[str, Any] = _call(
            ref, "POST", "/api/gdpr/delete", json={"app": app.app_id, "user_ids": ids}
        )
        result["via"] = "read_api"
    else:
        result = _delete_direct(app.app_id, ids)
        result["via"] = "clickhouse"
    result["suppressed"] = added
    return result


# -- CLI -----------------------------------------------------------------------------------------


@click.group("gdpr")
def gdpr() -> None:
    """Erase users (right to erasure) and keep them out of later data."""


@gdpr.command("delete")
@click.option("--app", "app_id", required=True, help="The app id.")
@click.option(
    "--user", "user", required=True, help="The user id as the app sends it (hashed here if needed)."
)
@click.option(
    "--no-suppress", is_flag=True, help="Delete stored rows only; do not drop the user's later events."
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def delete_cmd(app_id: str, user: str, no_suppress: bool, as_json: bool) -> None:
    """Delete user USER of app APP from ClickHouse and Redis, and drop the user's later events.

    Uses the running sink's read API in embedded mode, else ClickHouse directly. Prints the rows
    deleted per table. Run it again after the sink has caught up to catch events in flight.
    """
    from trackflow.cli import echo_json

    result = delete(app_id, user, suppress=not no_suppress)
    if as_json:
        echo_json(result)
        return
    click.echo(f"app {result['app']}: {result['devices']} linked device(s), via {result['via']}")
    for table, n in result["deleted"].items():
        click.echo(f"  {table:<15} {n:>8} row(s) deleted")
    click.echo(f"  redis online    {result['redis_removed']:>8} member(s) removed")
    if no_suppress:
        click.echo("  suppression: not recorded (--no-suppress)")
    else:
        click.echo(f"  suppression     {result['suppressed']:>8} new id(s); later events end as 'suppressed'")


@gdpr.command("status")
@click.option("--app", "app_id", required=True, help="The app id.")
def status_cmd(app_id: str) -> None:
    """How many user ids of APP are suppressed (ids are stored as digests, not listed)."""
    click.echo(f"{app_id}: {SuppressionList(suppressions_path()).count(app_id)} suppressed id(s)")


commands = [gdpr]
