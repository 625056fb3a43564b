"""Pure mapping from decoded Avro records to the ClickHouse tables' columns, as Arrow tables.

One :class:`TableSpec` per target table lists its columns: the ClickHouse column, the record field it
comes from and its Arrow type. Columns with a ClickHouse ``DEFAULT`` (``event_date``, ``hour``, the
extracted property keys) are left out, so ClickHouse computes them. Every row also carries the Kafka
coordinates ``_topic``, ``_partition`` and ``_offset``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

Record = dict[str, Any]

TS = pa.timestamp("ms", tz="UTC")
STR = pa.string()


@dataclass(frozen=True)
class Column:
    """One column: ``name`` in ClickHouse, ``field`` in the record (default: same), Arrow type."""

    name: str
    type: pa.DataType
    field: str | None = None
    default: Any = None


@dataclass(frozen=True)
class TableSpec:
    """A target table and how records become its rows."""

    table: str
    columns: tuple[Column, ...]
    prepare: Callable[[Record], Record] | None = None

    @property
    def arrow_schema(self) -> pa.Schema:
        meta = [pa.field("_topic", STR), pa.field("_partition", pa.uint32()), pa.field("_offset", pa.uint64())]
        return pa.schema([pa.field(c.name, c.type) for c in self.columns] + meta)

    def to_arrow(self, records: Sequence[Record], topic: str, partition: int, offsets: Sequence[int]) -> pa.Table:
        """Rows of ``records`` (read from ``topic``/``partition`` at ``offsets``) as an Arrow table."""
        if self.prepare is not None:
            records = [self.prepare(r) for r in records]
        arrays = []
        for c in self.columns:
            key = c.field or c.name
            if c.default is None:
                values = [r.get(key) for r in records]
            else:
                d = c.default
                values = [v if (v := r.get(key)) is not None else d for r in records]
            arrays.append(pa.array(values, type=c.type))
        n = len(records)
        arrays.append(pa.array([topic] * n, type=STR))
        arrays.append(pa.array([partition] * n, type=pa.uint32()))
        arrays.append(pa.array(offsets, type=pa.uint64()))
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)


    def from_arrow(
        self, table: pa.Table, topic: str, partition: int, offsets: Sequence[int],
        overrides: dict[str, pa.Array] | None = None,
    ) -> pa.Table:
        """The same rows as :meth:`to_arrow`, from an Arrow table of decoded records."""
        n = table.num_rows
        names = set(table.column_names)
        arrays: list[Any] = []
        for c in self.columns:
            if overrides and c.name in overrides:
                arrays.append(overrides[c.name])
                continue
            key = c.field or c.name
            if key not in names:
                arr = pa.nulls(n, c.type)
            else:
                arr = table.column(key)
                # large_string goes to ClickHouse as is (a cast would copy every string)
                if not (arr.type == pa.large_string() and c.type == STR):
                    arr = arr.cast(c.type)
            if c.default is not None:
                arr = pc.fill_null(arr, pa.scalar(c.default, arr.type))
            arrays.append(arr)
        arrays.append(pa.array([topic] * n, type=STR))
        arrays.append(pa.array([partition] * n, type=pa.uint32()))
        arrays.append(pa.array(offsets, type=pa.uint64()))
        return pa.Table.from_arrays(arrays, names=self.arrow_schema.names)


#: the fields of an event the live counters need
LIVE_FIELDS = ("app_id", "user_key", "device_id", "event", "type", "event_time", "revenue_usd",
               "revenue_in_range", "error_level")


def live_view(table: pa.Table) -> list[Record]:
    """The live-counter fields of each row, as dicts (``event_time`` in int milliseconds)."""
    cols = {}
    for f in LIVE_FIELDS:
        col = table.column(f)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        cols[f] = col.to_pylist()
    return [dict(zip(LIVE_FIELDS, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def _s(name: str, field: str | None = None, default: Any = None) -> Column:
    return Column(name, STR, field, default)


EVENTS = TableSpec(
    "events",
    (
        _s("app_id"), _s("message_id"), _s("type"), _s("event", default=""), _s("user_key"),
        _s("device_id"), _s("anonymous_id"), _s("user_id"), _s("previous_id"), _s("group_id"),
        _s("session_id"), Column("session_seq", pa.uint32(), default=0),
        Column("heartbeat_offset", pa.float64()),
        Column("event_time", TS), Column("client_time", TS), Column("received_at", TS),
        Column("processed_at", TS),
        _s("timestamp_sent", "timestamp"), _s("sent_at"), _s("source", default="segment"),
        _s("properties", default="{}"), _s("traits", default="{}"), _s("context", default="{}"),
        Column("revenue", pa.float64()), _s("currency"), Column("revenue_usd", pa.float64()),
        Column("revenue_reporting", pa.float64()), _s("reporting_currency", default="USD"),
        Column("fx_rate_usd", pa.float64()), Column("fx_rate_reporting", pa.float64()),
        Column("fx_hour", TS), Column("revenue_in_range", pa.bool_(), default=True),
        _s("fx_status", default="none"), _s("media_source"), _s("campaign"), _s("os"), _s("os_version"),
        _s("app_version"), _s("locale"), _s("browser"), _s("device_type"), _s("country"), _s("library"),
        _s("ref"), _s("ip"), _s("user_agent"), _s("request_id", default=""), _s("error_level"),
        _s("error_code"), _s("product_id"), Column("retention_months", pa.uint16(), default=24),
    ),
)

SESSIONS = TableSpec(
    "sessions",
    (
        _s("app_id"), _s("session_id"), _s("user_key"), _s("device_id"), _s("user_id"),
        Column("started_at", TS), Column("ended_at", TS), Column("duration_s", pa.float64(), default=0.0),
        Column("events", pa.uint64(), default=0), Column("heartbeats", pa.uint64(), default=0),
        Column("screens", pa.uint64(), default=0), _s("first_screen"), _s("media_source"), _s("campaign"),
        Column("closed", pa.bool_(), default=False), _s("close_reason", default="open"),
        Column("version", pa.uint64(), default=0), Column("retention_months", pa.uint16(), default=24),
    ),
)

INVALID = TableSpec(
    "invalid_events",
    (
        _s("app_id", default=""), _s("message_id", default=""), _s("stage", default=""),
        _s("reason", default=""), _s("message", default=""), _s("field"), _s("payload", default=""),
        Column("received_at", TS, default=0), Column("failed_at", TS, default=0), _s("source_topic"),
        Column("source_partition", pa.int32()), Column("source_offset", pa.int64()),
    ),
)


def _fx_hour_ms(hour: str) -> int:
    text = hour.replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


FX_COLUMNS = ("hour", "currency", "rate", "source", "fetched_at")


def fx_to_arrow(records: Sequence[Record]) -> pa.Table:
    """FxRates records (one per hour, a map of rates) as one row per (hour, currency)."""
    hours: list[int] = []
    currencies: list[str] = []
    rates: list[float] = []
    sources: list[str] = []
    fetched: list[int] = []
    for r in records:
        h = _fx_hour_ms(str(r["hour"])) // 1000
        for cur, rate in sorted(r.get("rates", {}).items()):
            hours.append(h)
            currencies.append(cur)
            rates.append(float(rate))
            sources.append(str(r.get("source", "")))
            fetched.append(int(r.get("fetched_at", 0)))
    return pa.table(
        {
            "hour": pa.array(hours, type=pa.timestamp("s", tz="UTC")),
            "currency": pa.array(currencies, type=STR),
            "rate": pa.array(rates, type=pa.float64()),
            "source": pa.array(sources, type=STR),
            "fetched_at": pa.array(fetched, type=TS),
        }
    )
