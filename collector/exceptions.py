"""Errors of the collector.

Tree::

    TrackflowError
    └── CollectorError             anything the collector raises on purpose
        ├── PublishError           Kafka did not confirm every event of a request in time
        │   └── PublishTimeout     the publish timeout elapsed before every delivery report
        └── CollectorConfigError   the producer could not be configured
"""

from __future__ import annotations

from trackflow.exceptions import TrackflowError


class CollectorError(TrackflowError):
    """Base class of the collector's errors."""


class PublishError(CollectorError):
    """Kafka refused or failed to deliver at least one event of a request.

    ``topic`` is the target topic, ``reason`` the librdkafka error name (e.g. ``_MSG_TIMED_OUT``).
    """

    def __init__(self, message: str, *, topic: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason


class PublishTimeout(PublishError):
    """The delivery reports of a request did not all arrive within the publish timeout."""


class CollectorConfigError(CollectorError):
    """The collector's producer or settings are unusable."""
