"""ClickHouse clients: embedded (chdb through clickhouse-connect's ``chdb://`` backend) or a server.

Facts this module is built on (measured with clickhouse-connect 1.12 / chdb 4.4):

- ``clickhouse_connect.get_client(dsn="chdb:///abs/path")`` runs ClickHouse in-process on disk.
  Only one OS process may open a data directory; a second one fails with "Cannot lock file
  .../status", which :func:`connect` turns into :class:`~sinks.exceptions.EmbeddedLocked`.
- The async client is unsupported on chdb: use sync clients, one per thread
  (:class:`ThreadClients`), from asyncio through ``asyncio.to_thread``.
- Each insert costs ~14 ms, so the sink batches; ``insert_arrow`` is the fast path on a server.
  Embedded, :func:`insert_arrow` skips clickhouse-connect's route (Arrow IPC bytes written to a
  temporary file, then ``INSERT ... FROM INFILE``) and has chdb read the Arrow table in memory.
- ``insert_deduplication_token`` only works on tables that set ``non_replicated_deduplication_window``
  (and then also deduplicates in materialized views whose target tables set it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from sinks.base import AGAIN, LIVE
from sinks.exceptions import EmbeddedLocked, StorageUnavailable
from trackflow.config import ClickHouseSettings, CoreSettings

log = logging.getLogger(__name__)


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


#: per kind, a column whose values being distinct within a batch makes the table's sort key distinct
#: too (``invalid_events`` sorts by ``_topic, _partition, _offset``: always distinct in one batch)
_UNIQUE_KEY = {"events": "message_id", "sessions": "session_id", "invalid": None}


def insert_settings(kind: str, data: Any, token: str) -> dict[str, Any]:
    """Settings of one batch's insert: its deduplication token, and ``optimize_on_insert = 0`` when
    no two rows of the batch share a sort key.

    ``optimize_on_insert`` (default 1) runs the table's Replacing merge over every inserted block; on
    ``events`` that is about half of the engine's insert cost. When the rows' sort keys are all
    distinct it cannot collapse anything, so switching it off stores exactly the same rows. A batch
    with a repeated key keeps the default, so it is still collapsed at insert time as before.
    """
    settings: dict[str, Any] = {"insert_deduplication_token": token}
    if kind in _UNIQUE_KEY:
        key = _UNIQUE_KEY[kind]
        if key is None or _distinct(data.column(key)):
            settings["optimize_on_insert"] = 0
    return settings


def _distinct(column: Any) -> bool:
    import pyarrow.compute as pc

    if column.null_count:
        return False
    return bool(pc.count_distinct(column).as_py() == len(column))


#: the ids travel as one JSON string literal (parsing a 50k-element IN list costs ~1 s), and the
#: query text of a 50k-row batch is a few MB, beyond the default max_query_size (256 KiB)
_LOOKUP_SETTINGS = {"max_query_size": 256 * 1024 * 1024}


_SQL_STR_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'"})


def _ids_subquery(values: list[str]) -> str:
    """``(SELECT arrayJoin(JSONExtract('<values as JSON>', 'Array(String)')))``, ready for a query
    with ``%(name)s`` parameters (its ``%`` doubled).

    The literal is escaped here with one ``str.translate`` instead of as a bound parameter:
    clickhouse-connect escapes a bound string character by character in Python, which took ~4 us
    per message id of a 50k-row batch, more than the lookup itself.
    """
    import orjson

    literal = orjson.dumps(values).decode().translate(_SQL_STR_ESCAPES).replace("%", "%%")
    return f"(SELECT arrayJoin(JSONExtract('{literal}', 'Array(String)')))"


def _chdb_handle(client: Client) -> Any:
    """The chdb connection handle behind an embedded clickhouse-connect client (``conn`` and the
    ``lock`` that clickhouse-connect holds around each call on it), or ``None``: a server client,
    or a clickhouse-connect whose internals moved (then :func:`insert_arrow` takes the public
    route; ``test_embedded_inserts_read_the_arrow_table_in_memory`` notices)."""
    handle = getattr(getattr(client, "_backend", None), "_handle", None)
    if handle is None or not hasattr(getattr(handle, "conn", None), "query") or getattr(handle, "lock", None) is None:
        return None
    return handle


def insert_arrow(client: Client, table: str, data: Any, settings: dict[str, Any]) -> None:
    """``client.insert_arrow(table, data, settings=settings)``, faster when embedded.

    clickhouse-connect's chdb backend serialises the Arrow table to IPC bytes, writes them to a
    temporary file and runs ``INSERT ... FROM INFILE``. Here chdb reads the table in memory
    instead (``INSERT ... SELECT * FROM Python(table)``). The result is the same rows, and the
    same deduplication, provided the same rows come in the same Arrow chunks: the blocks chdb
    makes, whose ids the token numbers, follow the chunks (the same 150,000 rows as one chunk, then
    as two, were stored twice under one token). So a table of several chunks is made one first,
    and a retry always matches its first attempt (as for the merged insert, see
    :func:`_combine_events`). Measured in a fresh chdb
    database, four 100,000-row inserts into ``events`` with its views: 540k rows/s at 1.9 us of
    CPU per row, against 373k rows/s at 2.7 us through ``insert_arrow`` (best of three each).
    """
    handle = _chdb_handle(client)
    if handle is None:
        client.insert_arrow(table, data, settings=settings)
        return
    if any(c.num_chunks > 1 for c in data.columns):
        data = data.combine_chunks()
    cols = ", ".join(f"`{c}`" for c in data.column_names)
    pairs = ", ".join(
        f"{k} = '{str(v).translate(_SQL_STR_ESCAPES)}'" if isinstance(v, str) else f"{k} = {int(v)}"
        for k, v in settings.items()
    )
    target = _qualified(client, table)
    tf_arrow_rows = data  # noqa: F841 - read by chdb, which finds the table by this name in the calling frame
    sql = f"INSERT INTO {target} ({cols}) {'SETTINGS ' + pairs if pairs else ''} SELECT * FROM Python(tf_arrow_rows)"
    with handle.lock:
        handle.conn.query(sql, "TabSeparated")


def _qualified(client: Client, table: str) -> str:
    """``table`` with the client's database, for SQL run on the chdb handle (which has none set)."""
    return table if "." in table or not client.database else f"`{client.database}`.{table}"


def stored_event_ids(client: Client, ids: Any, apps: list[str], ids_table: str = "event_ids") -> list[tuple[Any, ...]]:
    """``(app_id, message_id, _topic, _partition, _offset)`` of each stored event of ``apps`` whose
    id is in ``ids`` (an Arrow string array), from ``ids_table``.

    Embedded, chdb reads the ids from the Arrow array in memory (``Python()``, as
    :func:`insert_arrow` does); through clickhouse-connect they go into the query text as one JSON
    literal, which clickhouse-connect then scans (comments, ``LIMIT``) and chdb parses: for 200,000
    ids against a million stored, 0.055-0.061 s instead of 0.113-0.129 s.
    """
    import pyarrow as pa

    cols = "app_id, message_id, _topic, _partition, _offset"
    handle = _chdb_handle(client)
    if handle is None:
        return [tuple(r) for r in client.query(
            f"SELECT DISTINCT {cols} FROM {ids_table} WHERE app_id IN %(apps)s AND message_id IN "
            + _ids_subquery(ids.to_pylist()),
            parameters={"apps": tuple(apps)},
            settings=_LOOKUP_SETTINGS,
        ).result_rows]
    in_apps = ", ".join(f"'{a.translate(_SQL_STR_ESCAPES)}'" for a in apps)
    tf_lookup_ids = pa.table({"id": ids})  # noqa: F841 - read by chdb, which finds it by this name in this frame
    sql = (f"SELECT DISTINCT {cols} FROM {_qualified(client, ids_table)} WHERE app_id IN ({in_apps}) "
           "AND message_id IN (SELECT id FROM Python(tf_lookup_ids))")
    with handle.lock:
        found = handle.conn.query(sql, "ArrowTable")
    return list(zip(*(c.to_pylist() for c in found.columns), strict=True))


def _first_of_each(keys: list[Any]) -> list[int]:
    """Row numbers to keep: the first row of each key; a ``None`` key is always kept."""
    seen: set[Any] = set()
    keep = []
    for i, k in enumerate(keys):
        if k is None:
            keep.append(i)
        elif k not in seen:
            seen.add(k)
            keep.append(i)
    return keep


def _dates(column: Any) -> list[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    return sorted(d for d in pc.unique(pc.cast(column, pa.date32())).to_pylist() if d is not None)


def drop_stored_events(client: Client, data: Any, ids_table: str = "event_ids") -> Any:
    """``data`` without the rows whose ``(app_id, message_id)`` is already stored, nor the repeats
    of a ``(app_id, message_id)`` within ``data`` (the first is kept). Rows with an empty
    ``message_id`` are always kept.

    A pipeline worker restarted after a crash re-emits events at new offsets of the enriched topic,
    so the batch tokens differ: this makes such replays change nothing. The lookup reads
    ``event_ids`` (migration 002: the ids stored in the last 2 days, sorted by app and id, filled
    by a materialized view of ``events``), so its cost follows the batch's size, not the day's.
    """
    return lookup_stored_events(client, [data], ids_table)[0][0]


def lookup_stored_events(
    client: Client, tables: list[Any], ids_table: str = "event_ids"
) -> tuple[list[Any], list[Any | None]]:
    """The event batches of one flush checked against what is stored, with one lookup for all.

    Returns ``(kept, live)``:

    - ``kept[i]``: ``tables[i]`` without the rows to insert no more: an ``(app_id, message_id)``
      already stored, or met before in this flush (in an earlier row, or in an earlier table: the
      tables are filtered as if the ones before them had been inserted already). Rows with an
      empty ``message_id`` are always kept.
    - ``live[i]``: which rows of ``tables[i]`` the live counters count (a boolean array), or
      ``None`` when all of them. That is every kept row, plus a row whose id is stored *at its
      own position* (``_topic``, ``_partition``, ``_offset``, kept by ``event_ids`` since migration
      003): the same Kafka record, inserted by an earlier attempt of this batch, whose Redis step
      may not have happened (a crash in between). A row stored at another position is a re-emit,
      counted when its original was. Redis' own per-batch offset guard then keeps any row from
      being counted twice; this replaces the per-day sets of applied ids Redis used to keep.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    mids = [pc.fill_null(pc.cast(t.column("message_id"), pa.string()), "").combine_chunks() for t in tables]
    has = [pc.not_equal(m, "") for m in mids]
    app_ids = [pc.cast(t.column("app_id"), pa.string()).combine_chunks() for t in tables]
    keys: list[Any] = [None] * len(tables)  # made only when rows need comparing (not the common case)
    firsts: list[Any] = []
    for i, (t, m) in enumerate(zip(tables, mids, strict=True)):
        if _distinct(m):
            firsts.append(None)  # no repeat, no empty id: every row is the first of its key
        else:
            keys[i] = _app_id_keys(app_ids[i], m)
            first = [False] * t.num_rows
            for j in _first_of_each([x if y else None for x, y in zip(keys[i].to_pylist(), m.to_pylist(), strict=True)]):
                first[j] = True
            firsts.append(pa.array(first, pa.bool_()))
    unchanged: tuple[list[Any], list[Any | None]] = (list(tables), [None] * len(tables))
    with_id = sum(pc.sum(h).as_py() or 0 for h in has)
    if not with_id:
        return unchanged
    ids = pc.unique(_strings([m.filter(h) for m, h in zip(mids, has, strict=True)]))
    apps = pc.unique(_strings([a.filter(h) for a, h in zip(app_ids, has, strict=True)]))
    rows = stored_event_ids(client, ids, sorted(apps.to_pylist()), ids_table)
    if not rows and len(ids) == with_id:
        return unchanged  # nothing stored, no id twice in the flush: the common case, no row-level work
    keys = [k if k is not None else _app_id_keys(a, m) for k, a, m in zip(keys, app_ids, mids, strict=True)]
    earlier = _app_id_keys(pa.array([str(r[0]) for r in rows], pa.string()),
                           pa.array([str(r[1]) for r in rows], pa.string()))
    at = _positions(earlier, pa.array([f"{r[2]}/{r[3]}/{r[4]}" for r in rows], pa.string()))
    kept: list[Any] = []
    live: list[Any | None] = []
    for t, key, h, first in zip(tables, keys, has, firsts, strict=True):
        drop = pc.and_(h, pc.is_in(key, value_set=earlier))
        if first is not None:
            drop = pc.or_(drop, pc.and_(h, pc.invert(first)))
        keep = pc.invert(drop)
        if pc.all(keep).as_py():
            kept.append(t)
            live.append(None)
        else:
            kept.append(t.filter(keep))
            own = pc.is_in(_positions(key, _row_positions(t)), value_set=at) if rows else None
            live.append(keep if own is None else pc.or_(keep, pc.and_(h, own)))
        earlier = pa.concat_arrays([earlier, key.filter(h)])
    return kept, live


def _row_positions(table: Any) -> Any:
    """``topic/partition/offset`` of each row of a converted ``events`` table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = [pc.cast(table.column(c), pa.string()) for c in ("_topic", "_partition", "_offset")]
    return pc.binary_join_element_wise(*parts, "/").combine_chunks()


def _positions(keys: Any, positions: Any) -> Any:
    """One text per row: its position (``topic/partition/offset``), then its ``_app_id_keys`` key.
    The position comes first: a Kafka topic name holds no NUL, so the first one ends it, whatever
    the message id holds."""
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(positions, keys, "\x00")


def _strings(parts: list[Any]) -> Any:
    """One chunked string array of ``parts`` (arrays or chunked arrays), without copying.

    ``pa.chunked_array`` given chunked arrays converts them value by value in Python (~130 ms for
    two of 50k values); their chunks go in as they are.
    """
    import pyarrow as pa

    chunks = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p])]
    return pa.chunked_array(chunks, type=pa.string())


def _app_id_keys(app_id: Any, mid: Any) -> Any:
    """One text key per row for Arrow's set lookups: ``<length of app_id>:<app_id>:<message_id>``
    (the length makes it unambiguous whatever characters the two hold)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    app = pc.cast(app_id, pa.string())
    return pc.binary_join_element_wise(pc.cast(pc.utf8_length(app), pa.string()), app, mid, ":")


def lookup_stored_dead_letters(client: Client, table: str, data: Any) -> tuple[Any, Any | None]:
    """``(kept, live)`` of one batch of dead letters, as :func:`lookup_stored_events` for events.

    A dead letter is identified by :func:`sinks.redis.dead_letter_id` (the ``message_id``, else
    the raw record's Kafka position, with stage and reason; one with neither is always kept and
    counted). ``kept``: ``data`` without the dead letters already stored in ``table`` or repeated
    within ``data`` (the first is kept). ``live``: the rows the live counters count (a boolean
    array; ``None``: all), the kept ones plus those stored at their own position (``_topic``,
    ``_partition``, ``_offset``: an earlier attempt of this batch).

    ``failed_at`` is set anew when a restarted worker re-processes a record, so the lookup covers the
    batch's failure dates and the day before.
    """
    import datetime as dt

    import pyarrow as pa

    from sinks.redis import dead_letter_id

    cols = ["app_id", "message_id", "stage", "reason", "source_topic", "source_partition", "source_offset"]
    recs = data.select(cols).to_pylist()
    keys = [dead_letter_id(r) or None for r in recs]
    first = set(_first_of_each(keys))
    ids = [r for r, k in zip(recs, keys, strict=True) if k is not None]
    if not ids:
        return data, None
    dates = _dates(data.column("failed_at"))
    mids = sorted({r["message_id"] for r in ids if r["message_id"]})
    offsets = tuple(sorted({int(r["source_offset"]) for r in ids if r["source_offset"] is not None})) or (-1,)
    rows = client.query(
        f"SELECT DISTINCT {', '.join(cols)}, _topic, _partition, _offset FROM {table} "
        "WHERE app_id IN %(apps)s AND failed_date BETWEEN %(lo)s AND %(hi)s "
        "AND (message_id IN " + _ids_subquery(mids) + " OR source_offset IN %(offsets)s)",
        parameters={"apps": tuple(sorted({r["app_id"] for r in ids})), "lo": dates[0] - dt.timedelta(days=1),
                    "hi": dates[-1], "offsets": offsets},
        settings=_LOOKUP_SETTINGS,
    ).result_rows
    n = len(cols)
    at = {(dead_letter_id(dict(zip(cols, row[:n], strict=True))), tuple(str(x) for x in row[n:])) for row in rows}
    stored = {k for k, _ in at} - {""}
    keep = [k is None or (i in first and k not in stored) for i, k in enumerate(keys)]
    if all(keep):
        return data, None
    positions = zip(*(data.column(c).to_pylist() for c in ("_topic", "_partition", "_offset")), strict=True)
    live = [kept or (k, tuple(str(x) for x in pos)) in at for kept, k, pos in zip(keep, keys, positions, strict=True)]
    return data.filter(pa.array(keep, pa.bool_())), pa.array(live, pa.bool_())


#: per table, the columns that identify a stored row of a batch (a row collapsed into another of
#: the same sort key at insert time is identified by its survivor): what :func:`missing_rows` compares
_IDENTITY = {"events": ("_offset",), "invalid_events": ("_offset",), "sessions": ("app_id", "session_id")}


def missing_rows(client: Client, table: str, topic: str, partition: int, data: Any) -> Any:
    """The rows of ``data`` (one batch of ``topic``/``partition``, just inserted) not in ``table``.

    Looks at the rows stored from the batch's offset range only. ``None`` when every row is there.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = _IDENTITY[table]
    bounds = pc.min_max(data.column("_offset")).as_py()
    stored = client.query(
        f"SELECT DISTINCT {', '.join(cols)} FROM {table} "
        "WHERE _topic = %(topic)s AND _partition = %(partition)s AND _offset BETWEEN %(lo)s AND %(hi)s",
        parameters={"topic": topic, "partition": partition, "lo": bounds["min"], "hi": bounds["max"]},
    ).result_columns
    if len(cols) == 1:
        have = pa.array(stored[0] if stored else [], data.schema.field(cols[0]).type)
        key = data.column(cols[0])
    else:
        have = _app_id_keys(pa.array(stored[0] if stored else [], pa.string()),
                            pa.array(stored[1] if stored else [], pa.string()))
        key = _app_id_keys(pc.cast(data.column(cols[0]), pa.string()).combine_chunks(),
                           pc.cast(data.column(cols[1]), pa.string()).combine_chunks())
    lost = pc.invert(pc.is_in(key, value_set=have))
    return data.filter(lost) if pc.any(lost).as_py() else None


@dataclass
class _Insert:
    """One insert of a flush: the rows of ``batches`` (one or more) into ``table``.

    Its token is the batch's own, or for several batches their tokens joined in order, so the
    same batches retried together carry the same token again. ``parts`` holds each batch's rows
    (for the rewrite check); ``data`` all of them.
    """

    batches: list[Any]
    table: str
    data: Any
    parts: list[Any] = field(default_factory=list)

    @property
    def token(self) -> str:
        return "+".join(b.token for b in self.batches)


def _combine_events(inserts: list[_Insert]) -> list[_Insert]:
    """The flush's ``events`` batches merged into one insert (the other kinds stay one per batch).

    Embedded, an insert into ``events`` costs the same fixed work (its materialized views, a new
    part and later its merges) whatever its size: one insert of 50,000 rows took 4.0 us CPU per
    row where four of 12,500 took 5.8 (``bench/sink``). The merged insert's token joins the
    batches' tokens in (topic, partition, offset) order; a retry of the same flush carries it
    again. A replay after a restart whose batches come together differently carries another
    token, and the message-id lookup (:func:`lookup_stored_events`) then drops what is stored.
    """
    events = sorted(
        (i for i in inserts if i.batches[0].kind == "events"),
        key=lambda i: (i.batches[0].topic, i.batches[0].partition, i.batches[0].first_offset),
    )
    if len(events) < 2:
        return inserts
    import pyarrow as pa

    parts = [i.data for i in events]
    merged = _Insert(
        [i.batches[0] for i in events],
        events[0].table,
        pa.concat_tables(parts, promote_options="permissive").combine_chunks(),
        parts,
    )
    rest = [i for i in inserts if i.batches[0].kind != "events"]
    return [merged, *rest]


def _mark_live(b: Any, counted: Any) -> None:
    """Record in ``b.meta`` which of its rows the live counters count (:data:`LIVE`; absent: all)."""
    if counted is None:
        b.meta.pop(LIVE, None)
    else:
        b.meta[LIVE] = counted


@contextlib.contextmanager
def _failure(b: Any, what: str, batches: int = 1) -> Iterator[None]:
    """Any error inside becomes :class:`StorageUnavailable` naming the batch (the loop retries it);
    for an insert of several batches, ``b`` is the first and the message says how many."""
    try:
        yield
    except Exception as exc:
        of = f" ({batches} batches from {b.token} on)" if batches > 1 else ""
        raise StorageUnavailable(
            f"ClickHouse {what} {b.kind}{of} failed: {exc}", topic=b.topic, partition=b.partition,
            first_offset=b.first_offset, last_offset=b.last_offset, code=getattr(exc, "code", None),
        ) from exc


class ClickHouseSink:
    """Writes batches to ``events``, ``sessions``, ``invalid_events`` and ``fx_rates``.

    Before inserting, the batches' offset ranges are recorded in ``sink_batches`` (the *intents*).
    Each batch is then inserted with its token as ``insert_deduplication_token``; a retried or
    replayed batch (same range, same token) is dropped by ClickHouse. After a crash,
    :meth:`intents` returns the ranges to cut again, so the replay carries the same tokens.

    A batch whose range may have been written before (:data:`sinks.base.AGAIN`: a replay after a
    restart, a retry after a failed write) is checked after its insert (:func:`missing_rows`), on
    a single server or embedded: ClickHouse records a block's token in a non-replicated table's
    deduplication log before the block's part is in place, so a process killed in between leaves
    a token without its rows, and the same token then drops the replay as a duplicate (seen in the
    fault suite: 228 rows lost after a SIGKILL during an insert). Rows found missing are inserted
    again under a token of their own (``<token>/again-<random>``); the message-id and dead-letter
    lookups keep that from storing anything twice. Replicated tables keep their block ids in
    Keeper with the part, and a Distributed insert may not be visible yet, so a cluster is not
    checked.

    An insert into ``events`` has a fixed cost (its materialized views, the new part and its later
    merges), so on a single server or embedded the ``events`` batches of a flush (one per
    partition) go in as one insert (``merge_events``, :func:`_combine_events`): 18 -> 11 us of
    CPU per row in ``bench/sink``. The inserts of a flush (that one, and one per sessions, dead
    letters or FX batch; on a cluster one per batch) run in parallel when ``clients`` is given;
    the flush succeeds only if every insert did.

    Parameters:
        client: a sync client on the trackflow database (used from one thread).
        group: the consumer group, recorded with the intents.
        retention_months: ``app_id -> months`` lookup for the rows' TTL (default 24).
        clients: per-thread clients on the same database, for the parallel inserts (None: one by one
            on ``client``).
        insert_threads: inserts running at once (with ``clients``).
        check_rewrites: check batches written again (off for a cluster, see above).
        merge_events: insert a flush's ``events`` batches as one (:func:`_combine_events`); off for
            a cluster, where a replay grouped differently could miss rows a ``Distributed`` insert
            has not made visible yet, so each batch keeps its own token there.
    """

    name = "clickhouse"

    def __init__(
        self,
        client: Client,
        group: str,
        retention_months: Any = None,
        *,
        clients: ThreadClients | None = None,
        insert_threads: int = 4,
        check_rewrites: bool = True,
        merge_events: bool = True,
    ) -> None:
        self.client = client
        self.check_rewrites = check_rewrites
        self.merge_events = merge_events
        self.reinserted = 0  # rows found missing after a rewrite and inserted again
        self.group = group
        self._retention = retention_months
        self.inserts = 0
        self._clients = clients
        self._pool = (
            ThreadPoolExecutor(insert_threads, thread_name_prefix="sink-insert")
            if clients is not None and insert_threads > 1
            else None
        )

    def _months(self, app_id: str) -> int:
        if self._retention is None:
            return 24
        return int(self._retention(app_id))

    def write(self, batches: Any, on_lookup: Callable[[], None] | None = None) -> None:
        """Insert the batches (see the class). Each ``events`` and ``invalid`` batch gets
        :data:`sinks.base.LIVE` in its ``meta``: the rows the live counters count
        (:func:`lookup_stored_events`, :func:`lookup_stored_dead_letters`), absent when all.
        ``on_lookup()`` is called once that is known, before the inserts (the loop starts the
        Redis write there, alongside them); not at all when no batch has rows.
        """
        from sinks.rows import EVENTS, INVALID, SESSIONS, fx_to_arrow

        batches = [b for b in batches if len(b)]
        if not batches:
            return
        try:
            self.client.insert(
                "sink_batches",
                [[self.group, b.topic, b.partition, b.first_offset, b.last_offset, len(b), b.token] for b in batches],
                column_names=["group_id", "topic", "partition", "first_offset", "last_offset", "rows", "token"],
            )
        except Exception as exc:
            raise StorageUnavailable(f"ClickHouse did not accept the batch intents: {exc}") from exc
        specs = {"events": EVENTS, "sessions": SESSIONS, "invalid": INVALID}
        prepared: list[tuple[Any, str, Any]] = []
        for b in batches:
            with _failure(b, "conversion for"):
                if b.kind == "fx":
                    table, data = "fx_rates", fx_to_arrow(b.records)
                elif b.table is not None:
                    spec = specs[b.kind]
                    table, data = spec.table, spec.from_arrow(
                        b.table, b.topic, b.partition, b.offsets,
                        {"retention_months": self._months_array(b.table)},
                    )
                else:
                    spec = specs[b.kind]
                    if b.kind in ("events", "sessions"):
                        months: dict[str, int] = {}
                        for r in b.records:
                            app = r["app_id"]
                            if app not in months:
                                months[app] = self._months(app)
                            r["retention_months"] = months[app]
                    table, data = spec.table, spec.to_arrow(b.records, b.topic, b.partition, b.offsets)
                prepared.append((b, table, data))
        # the events of every batch looked up at once (one query per flush, not per partition)
        events = [i for i, (b, _, data) in enumerate(prepared) if b.kind == "events" and data.num_rows]
        if events:
            with _failure(prepared[events[0]][0], "replay lookup for"):
                kept, live = lookup_stored_events(self.client, [prepared[i][2] for i in events])
            for i, data, counted in zip(events, kept, live, strict=True):
                b = prepared[i][0]
                _mark_live(b, counted)
                prepared[i] = (b, prepared[i][1], data)
        for i, (b, table, data) in enumerate(prepared):
            if b.kind == "invalid" and data.num_rows:
                with _failure(b, "replay lookup for"):
                    letters, counted = lookup_stored_dead_letters(self.client, table, data)
                _mark_live(b, counted)
                prepared[i] = (b, table, letters)
        if on_lookup is not None:
            on_lookup()
        inserts = [_Insert([b], table, data) for b, table, data in prepared]
        if self.merge_events:
            inserts = _combine_events(inserts)
        if self._pool is None or len(inserts) < 2:
            for ins in inserts:
                self.inserts += self._insert(self.client, ins)
            return
        clients = self._clients
        assert clients is not None
        futures = [self._pool.submit(lambda i: self._insert(clients.get(), i), ins) for ins in inserts]
        failed: list[BaseException] = []
        for f in futures:  # every insert has ended before the flush is retried
            error = f.exception()
            if error is None:
                self.inserts += f.result()
            else:
                failed.append(error)
        if failed:
            raise failed[0]

    def _insert(self, client: Client, ins: _Insert) -> int:
        """Run one insert with its token; returns 1 if rows were inserted."""
        b = ins.batches[0]
        with _failure(b, "insert into", len(ins.batches)):
            data = ins.data
            if not data.num_rows:
                return 0
            insert_arrow(client, ins.table, data, insert_settings(b.kind, data, ins.token))
            if self.check_rewrites and ins.table in _IDENTITY:
                # one batch: its rows as inserted (after the replay lookups)
                for member, rows in zip(ins.batches, ins.parts or [data], strict=True):
                    if member.meta.get(AGAIN) and rows.num_rows:
                        self._restore(client, member, ins.table, rows)
        return 1

    def _restore(self, client: Client, b: Any, table: str, data: Any) -> None:
        """Insert again the rows of a rewritten batch that ClickHouse dropped as a duplicate."""
        lost = missing_rows(client, table, b.topic, b.partition, data)
        if lost is None:
            return
        log.warning(
            "%s %s: %d of %d rows missing after writing the batch again (its token was in the "
            "deduplication log without its rows); inserting them again under a new token",
            table, b.token, lost.num_rows, data.num_rows,
        )
        token = f"{b.token}/again-{uuid.uuid4().hex}"
        insert_arrow(client, table, lost, insert_settings(b.kind, lost, token))
        if missing_rows(client, table, b.topic, b.partition, lost) is not None:
            raise RuntimeError(f"rows of {b.token} still missing after inserting them again")
        self.reinserted += lost.num_rows

    def _months_array(self, table: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        apps = pc.unique(table.column("app_id")).to_pylist()
        if len(apps) == 1:
            return pa.array([self._months(apps[0])] * table.num_rows, type=pa.uint16())
        months = {a: self._months(a) for a in apps}
        return pa.array([months[a] for a in table.column("app_id").to_pylist()], type=pa.uint16())

    def intents(self, committed: dict[tuple[str, int], int]) -> dict[tuple[str, int], list[tuple[int, int]]]:
        """Recorded ranges at or beyond each partition's committed offset (to replay exactly)."""
        out: dict[tuple[str, int], list[tuple[int, int]]] = {}
        if not committed:
            return out
        rows = self.client.query(
            "SELECT topic, partition, first_offset, last_offset FROM sink_batches FINAL "
            "WHERE group_id = {g:String} AND topic IN {topics:Array(String)} ORDER BY first_offset",
            parameters={"g": self.group, "topics": sorted({t for t, _ in committed})},
        ).result_rows
        for topic, partition, first, last in rows:
            tp = (str(topic), int(partition))
            if tp in committed and int(last) >= committed[tp]:
                out.setdefault(tp, []).append((int(first), int(last)))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._clients is not None:
            self._clients.close()
        self.client.close()
