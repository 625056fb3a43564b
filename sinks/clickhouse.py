"""ClickHouse clients: embedded (chdb through clickhouse-connect's ``chdb://`` backend) or a server.

Facts this module is built on (measured with clickhouse-connect 1.12 / chdb 4.4):

- ``clickhouse_connect.get_client(dsn="chdb:///abs/path")`` runs ClickHouse in-process on disk.
  Only one OS process may open a data directory; a second one fails with "Cannot lock file
  .../status", which :func:`connect` turns into :class:`~sinks.exceptions.EmbeddedLocked`.
- The async client is unsupported on chdb: use sync clients, one per thread
  (:class:`ThreadClients`), from asyncio through ``asyncio.to_thread``.
- Each insert costs ~14 ms, so the sink batches; ``insert_arrow`` is the fast path.
- ``insert_deduplication_token`` only works on tables that set ``non_replicated_deduplication_window``
  (and then also deduplicates in materialized views whose target tables set it).
"""

from __future__ import annotations

import threading
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from sinks.exceptions import EmbeddedLocked, StorageUnavailable
from trackflow.config import ClickHouseSettings, CoreSettings


def dsn(ch: ClickHouseSettings, core: CoreSettings) -> str:
    """The connection string: the configured server URL, or ``chdb:///<abs data dir>``."""
    if ch.is_embedded():
        path = ch.embedded_path(core).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return f"chdb://{path}"
    assert ch.clickhouse_url is not None
    return ch.clickhouse_url.get_secret_value()


def connect(
    ch: ClickHouseSettings | None = None,
    core: CoreSettings | None = None,
    *,
    database: str | None = "",
    settings: dict[str, Any] | None = None,
) -> Client:
    """Open a sync client.

    Parameters:
        ch / core: settings (read from the environment when omitted).
        database: database to use; ``""`` (default) means ``ch.clickhouse_database``, ``None`` none
            (for creating it).
        settings: ClickHouse session settings.
    """
    ch = ch or ClickHouseSettings()
    core = core or CoreSettings()
    db = ch.clickhouse_database if database == "" else database
    try:
        return clickhouse_connect.get_client(dsn=dsn(ch, core), database=db, settings=settings or {})
    except Exception as exc:
        text = str(exc) + str(exc.__cause__ or "")
        if "Cannot lock file" in text or "Error initializing EmbeddedServer" in text:
            raise EmbeddedLocked(
                f"embedded ClickHouse at {ch.embedded_path(core)} is owned by another process "
                "(is `trackflow sink` running? use its read API: `trackflow report` / `trackflow sql`)"
            ) from exc
        raise StorageUnavailable(f"cannot connect to ClickHouse: {exc}") from exc


def ensure_database(ch: ClickHouseSettings | None = None, core: CoreSettings | None = None) -> None:
    """Create the configured database if it does not exist (ON CLUSTER when a cluster is set)."""
    ch = ch or ClickHouseSettings()
    client = connect(ch, core, database=None)
    try:
        on_cluster = f" ON CLUSTER `{ch.clickhouse_cluster}`" if ch.clickhouse_cluster else ""
        client.command(f"CREATE DATABASE IF NOT EXISTS `{ch.clickhouse_database}`{on_cluster}")
    finally:
        client.close()


class ThreadClients:
    """One client per thread, created on first use (chdb and HTTP clients are not thread-safe).

    Parameters:
        ch / core: settings passed to :func:`connect`.
        settings: session settings of every client (e.g. ``{"readonly": 1}`` is NOT set here:
            read-only is applied per query so the sink can share the engine).
    """

    def __init__(
        self,
        ch: ClickHouseSettings | None = None,
        core: CoreSettings | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.ch = ch or ClickHouseSettings()
        self.core = core or CoreSettings()
        self.settings = settings
        self._local = threading.local()
        self._all: list[Client] = []
        self._lock = threading.Lock()

    def get(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = connect(self.ch, self.core, settings=self.settings)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except Exception:  # noqa: S112 - best effort on shutdown
                    continue
            self._all.clear()
        self._local = threading.local()
