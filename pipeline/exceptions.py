"""Errors raised by the pipeline package.

Tree::

    TrackflowError
    └── PipelineError            a pipeline stage or the worker failed
        ├── RejectedEvent        an event broke a rule: carries the Reason, stage and field
        └── FxError              rates could not be loaded, fetched or published
"""

from __future__ import annotations

from pipeline.reasons import Reason
from trackflow.exceptions import TrackflowError


class PipelineError(TrackflowError):
    """Base class of pipeline errors."""


class RejectedEvent(PipelineError):
    """An event broke a rule. Caught by :mod:`pipeline.process` and turned into a dead letter.

    Parameters:
        reason: the dead-letter code.
        message: human-readable text naming the field.
        field: the field that failed, if one did.
        stage: the stage that rejected it (``validate``, ``dedupe``, ...).
    """

    def __init__(
        self, reason: Reason, message: str, *, field: str | None = None, stage: str = "validate"
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.stage = stage


class FxError(PipelineError):
    """Exchange rates could not be read, fetched or published. ``source`` names the file or URL."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source
