"""The root of every error trackflow raises on purpose.

Tree::

    TrackflowError
    ├── ConfigError              bad settings or a bad app registry file
    │   └── AppRegistryError     unknown app, duplicate name, unreadable registry
    ├── StackError               the local stack could not be installed, started or checked
    ├── SerdeError               an Avro payload could not be encoded or decoded
    │   └── UnknownSchemaError   a single-object fingerprint matches no shipped schema
    ├── collector.exceptions.*   (see collector/exceptions.py)
    ├── pipeline.exceptions.*    (see pipeline/exceptions.py)
    └── sinks.exceptions.*       (see sinks/exceptions.py)

Errors carry their context as attributes (the field, the topic/partition/offset, the ClickHouse
code) so that a log line or a CLI message can name what failed.
"""

from __future__ import annotations


class TrackflowError(Exception):
    """Base class for all trackflow errors."""


class ConfigError(TrackflowError):
    """A setting or a configuration file is invalid. ``field`` names the offending setting."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AppRegistryError(ConfigError):
    """The app registry file is unreadable, or an app is unknown or duplicated."""


class StackError(TrackflowError):
    """The local stack (Kafka, Redis, embedded ClickHouse) could not be managed."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class SerdeError(TrackflowError):
    """An Avro payload could not be encoded or decoded."""

    def __init__(self, message: str, *, schema: str | None = None) -> None:
        super().__init__(message)
        self.schema = schema


class UnknownSchemaError(SerdeError):
    """A single-object encoded payload names a fingerprint that no shipped schema has."""
