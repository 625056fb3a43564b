"""Errors raised by the sinks, the metrics and the read API.

Tree::

    TrackflowError
    └── SinkError                 a sink could not write; carries topic/partition/offsets
        ├── StorageUnavailable    ClickHouse or Redis is unreachable (retried with back-off)
        ├── EmbeddedLocked        another process owns the embedded ClickHouse data directory
        ├── MigrationError        a DDL migration failed; carries the version and the statement
        ├── MetricError           a metric request is invalid; ``param`` names the bad parameter
        ├── ReadOnlyViolation     SQL sent to the read API is not one read-only statement
        └── ReadApiUnavailable    ``trackflow report`` found no read API and no ClickHouse URL
"""

from __future__ import annotations

from trackflow.exceptions import TrackflowError


class SinkError(TrackflowError):
    """A sink failed. ``topic``, ``partition`` and the offset range say which batch."""

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        first_offset: int | None = None,
        last_offset: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.first_offset = first_offset
        self.last_offset = last_offset
        self.code = code


class StorageUnavailable(SinkError):
    """ClickHouse or Redis did not acknowledge a write; the batch is kept and retried."""


class EmbeddedLocked(SinkError):
    """The embedded ClickHouse data directory is open in another process (the running sink)."""


class MigrationError(SinkError):
    """A migration statement failed."""

    def __init__(self, message: str, *, version: int, statement: str = "") -> None:
        super().__init__(message)
        self.version = version
        self.statement = statement


class MetricError(SinkError):
    """A metric was asked with a bad parameter; ``param`` names it (``field`` for the CLI)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param
        self.field = param


class ReadOnlyViolation(SinkError):
    """SQL given to the read API is empty, has several statements, or writes."""


class ReadApiUnavailable(SinkError):
    """No running sink's read API was found and no ClickHouse URL is configured."""
