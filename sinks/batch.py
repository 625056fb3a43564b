"""Pure batching logic of the sink loop: buffers per partition, flush decisions, replay plans.

:class:`Batcher` buffers decoded records per ``(topic, partition)`` and decides when to flush (by
total rows or by the age of the oldest row). After a restart, the ranges a crashed sink had already
started to write (its *intents*, see :mod:`sinks.clickhouse`) are installed with :meth:`Batcher.plan`,
so the same offset ranges are cut again and the inserts carry the same deduplication tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

from sinks.base import AGAIN, Batch, Record, TopicPartition


@dataclass
class _Buffer:
    kind: str
    offsets: list[int] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    since: float | None = None
    plans: deque[tuple[int, int]] = field(default_factory=deque)
    plan_since: float | None = None


class Batcher:
    """Buffers per partition and cuts deterministic batches.

    Parameters:
        max_rows: flush when this many rows are buffered across partitions.
        max_age_s: flush when the oldest buffered row is older than this.
        plan_timeout_s: give up waiting for the end of a planned range after this long (a range
            can only end early when offsets have gaps, e.g. transaction markers).
    """

    def __init__(self, max_rows: int, max_age_s: float, plan_timeout_s: float = 10.0) -> None:
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.plan_timeout_s = plan_timeout_s
        self._buffers: dict[TopicPartition, _Buffer] = {}
        self.rows = 0

    def add(self, topic: str, partition: int, offset: int, record: Record, kind: str, now: float) -> None:
        """Buffer one record read at ``offset``."""
        buf = self._buffers.get((topic, partition))
        if buf is None:
            buf = self._buffers[(topic, partition)] = _Buffer(kind)
        if buf.offsets and offset <= buf.offsets[-1]:
            return  # a redelivery of something already buffered
        if buf.since is None:
            buf.since = now
        buf.offsets.append(offset)
        buf.records.append(record)
        self.rows += 1

    def add_many(
        self,
        topic: str,
        partition: int,
        offsets: list[int],
        records: list[Record],
        kind: str,
        now: float,
        written: float | None = None,
    ) -> None:
        """Buffer records read at ``offsets`` of one partition (same result as :meth:`add` one by one).

        ``written``: when the first of them was written to Kafka, on the clock of ``now``. A buffer's
        age then counts from there, not from when the sink read the record: records that waited
        in Kafka while the sink was busy flushing are not held for a whole ``max_age_s`` more.
        """
        if not offsets:
            return
        buf = self._buffers.get((topic, partition))
        if buf is None:
            buf = self._buffers[(topic, partition)] = _Buffer(kind)
        fresh = buf.since is None
        ascending = all(a < b for a, b in pairwise(offsets))
        if not ascending or (buf.offsets and offsets[0] <= buf.offsets[-1]):
            for o, r in zip(offsets, records, strict=True):
                self.add(topic, partition, o, r, kind, now)
        else:
            if fresh:
                buf.since = now
            buf.offsets.extend(offsets)
            buf.records.extend(records)
            self.rows += len(offsets)
        if fresh and buf.since is not None and written is not None:
            buf.since = min(buf.since, written)

    def plan(self, topic: str, partition: int, ranges: list[tuple[int, int]], kind: str, now: float) -> None:
        """Cut this partition's next batches exactly at ``ranges`` (ascending, inclusive)."""
        buf = self._buffers.get((topic, partition))
        if buf is None:
            buf = self._buffers[(topic, partition)] = _Buffer(kind)
        buf.plans = deque(sorted(ranges))
        buf.plan_since = now if ranges else None

    def due(self, now: float, backlog: bool = False) -> bool:
        """Whether a flush should happen now. With ``backlog`` (the consumer is still reading records
        as fast as it can take them), only a full batch is due: catching up in big batches costs
        less per row, and those records are late already."""
        if self.rows >= self.max_rows:
            return True
        if backlog:
            return False
        for buf in self._buffers.values():
            if buf.since is not None and now - buf.since >= self.max_age_s:
                return True
        return False

    def oldest_age(self, now: float) -> float:
        ages = [now - b.since for b in self._buffers.values() if b.since is not None]
        return max(ages, default=0.0)

    def take(self, now: float) -> list[Batch]:
        """Cut every buffer into batches and empty it (planned ranges first, as planned)."""
        out: list[Batch] = []
        for (topic, partition), buf in self._buffers.items():
            while buf.plans and buf.offsets:
                first, last = buf.plans[0]
                n = 0
                while n < len(buf.offsets) and buf.offsets[n] < first:
                    n += 1
                if n:  # records before the planned range (not expected): their own batch
                    out.append(Batch(topic, partition, buf.offsets[:n], buf.records[:n], buf.kind))
                    del buf.offsets[:n]
                    del buf.records[:n]
                    self.rows -= n
                    n = 0
                while n < len(buf.offsets) and buf.offsets[n] <= last:
                    n += 1
                if not n and buf.offsets[0] > last:
                    # the consumer is already past this range (it started beyond it): the range
                    # can never be filled, and waiting for it would hold the partition forever
                    buf.plans.popleft()
                    buf.plan_since = now
                    continue
                complete = n < len(buf.offsets) or (n > 0 and buf.offsets[n - 1] == last)
                timed_out = buf.plan_since is not None and now - buf.plan_since >= self.plan_timeout_s
                if not n or not (complete or timed_out):
                    break
                # a replay: its range was being written when the last owner stopped
                out.append(Batch(topic, partition, buf.offsets[:n], buf.records[:n], buf.kind, meta={AGAIN: True}))
                del buf.offsets[:n]
                del buf.records[:n]
                self.rows -= n
                buf.plans.popleft()
                buf.plan_since = now
            if buf.plans:
                buf.since = now if buf.offsets else None
                continue  # wait for the rest of the planned range
            if buf.offsets:
                out.append(Batch(topic, partition, list(buf.offsets), list(buf.records), buf.kind))
                self.rows -= len(buf.offsets)
                buf.offsets = []
                buf.records = []
            buf.since = None
        return out

    def drop(self, tps: list[TopicPartition]) -> None:
        """Forget partitions (revoked): their records were not committed and will be redelivered."""
        for tp in tps:
            buf = self._buffers.pop(tp, None)
            if buf is not None:
                self.rows -= len(buf.offsets)

    def partitions(self) -> list[TopicPartition]:
        return list(self._buffers)
