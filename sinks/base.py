"""The sink contract: a :class:`Batch` of one partition's records and the :class:`Sink` protocol.

A batch is deterministic per ``(topic, partition, offset range)``: the same range always holds the
same records in the same order, so its :attr:`Batch.token` can be used as ClickHouse's
``insert_deduplication_token`` and as the replay guard of the Redis counters. A sink's
:meth:`Sink.write` must be idempotent for a given batch: writing it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Record = dict[str, Any]
TopicPartition = tuple[str, int]

#: ``Batch.meta`` key: the batch's range may have been written before (a replay of a range the last
#: owner was writing when it stopped, or a retry after a failed write), so a sink checks what its
#: idempotence kept out (see :class:`sinks.clickhouse.ClickHouseSink`)
AGAIN = "again"
#: ``Batch.meta`` key of an ``events`` batch: a boolean Arrow array, the rows the live counters
#: count (set by the ClickHouse sink's replay lookup; absent: every row), see
#: :func:`sinks.clickhouse.lookup_stored_events`
LIVE = "live"


@dataclass(frozen=True)
class Batch:
    """Consecutive records of one topic partition.

    Parameters:
        topic / partition: where the records were read.
        offsets: the Kafka offset of each record, ascending.
        records: the decoded records (same length as ``offsets``).
        kind: which stream the topic carries: ``events``, ``sessions``, ``invalid`` or ``fx``.
        table: the records as an Arrow table (events decoded on the fast path), else None; then
            ``records`` holds only the fields the live counters need.
        span: the ``(first, last)`` offsets the batch was cut at, when some records of the range
            were dropped (undecodable); default: the first and last of ``offsets``.
        meta: flags about the batch (:data:`AGAIN`, :data:`LIVE`).
    """

    topic: str
    partition: int
    offsets: Sequence[int]
    records: Sequence[Any]
    kind: str = "events"
    table: Any = None
    span: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def first_offset(self) -> int:
        return self.span[0] if self.span else self.offsets[0]

    @property
    def last_offset(self) -> int:
        return self.span[1] if self.span else self.offsets[-1]

    @property
    def token(self) -> str:
        """``topic/partition/first-last``: the deduplication token of this batch."""
        return f"{self.topic}/{self.partition}/{self.first_offset}-{self.last_offset}"

    def __len__(self) -> int:
        return int(self.table.num_rows) if self.table is not None else len(self.records)


class Sink(Protocol):
    """Something batches are written to (ClickHouse, Redis). ``write`` is idempotent per batch."""

    name: str

    def write(self, batches: Sequence[Batch]) -> None:
        """Write every batch or raise; on failure the caller retries the same batches."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
