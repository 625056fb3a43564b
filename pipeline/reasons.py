"""The one documented list of dead-letter reason codes (``InvalidEvent.reason``).

Every event the pipeline does not pass on to ``tf.events.enriched`` is accounted for by exactly one
:class:`Reason`: rule violations go to ``tf.events.invalid`` with the code, the stage, the field
and a human-readable message; duplicates are dropped and counted under their code (and can be
dead-lettered too with ``TRACKFLOW_PIPELINE_DEAD_LETTER_DUPLICATES=true``).
"""

from __future__ import annotations

import itertools
from enum import StrEnum


class Reason(StrEnum):
    """Why an event left the main flow. The value is what ``InvalidEvent.reason`` carries."""

    UNDECODABLE = "undecodable"
    """The Kafka record is not a decodable RawEvent (stage ``decode``); payload is base64."""

    UNKNOWN_APP = "unknown_app"
    """``app_id`` is not in the app registry."""

    UNKNOWN_TYPE = "unknown_type"
    """``type`` is not identify, track, page, screen, group, alias or heartbeat."""

    MISSING_IDENTITY = "missing_identity"
    """Neither ``anonymous_id`` nor ``user_id`` is set."""

    INVALID_JSON = "invalid_json"
    """``properties``, ``traits`` or ``context`` is not a JSON object, or is nested more than 32 levels deep."""

    MISSING_EVENT_NAME = "missing_event_name"
    """A track event without an event name."""

    INVALID_EVENT_NAME = "invalid_event_name"
    """The event name starts with ``"``, ``=``, ``+`` or ``-``, or contains whitespace."""

    VALUE_TOO_LONG = "value_too_long"
    """A property or trait value (at any depth) is longer than 1000 characters."""

    INVALID_REVENUE = "invalid_revenue"
    """A revenue field (af_revenue, revenue, value, bundle_paid_amount) is not a plain number."""

    INVALID_CURRENCY = "invalid_currency"
    """A currency field is neither an ISO 4217 code, a configured token symbol nor a 0x address."""

    MISSING_FIELD = "missing_field"
    """A field required by the event's shape (error event, monetization event, heartbeat) is absent."""

    INVALID_ERROR_LEVEL = "invalid_error_level"
    """An error event's ``error_level`` is not Info, Debug, Warning, Error or Critical."""

    INVALID_HEARTBEAT = "invalid_heartbeat"
    """A heartbeat's offset is not a non-negative number."""

    INVALID_TIMESTAMP = "invalid_timestamp"
    """``timestamp`` or ``sent_at`` cannot be parsed (ISO 8601 or epoch seconds/milliseconds)."""

    FUTURE_TIMESTAMP = "future_timestamp"
    """The corrected event time is more than ``max_future_s`` after ``received_at``."""

    DUPLICATE_MESSAGE_ID = "duplicate_message_id"
    """The same ``message_id`` was seen within the message-id window (24 h). Dropped, counted."""

    DUPLICATE_CONTENT = "duplicate_content"
    """An identical event (app, device, name, canonical properties) within 10 s. Dropped, counted."""

    SUPPRESSED = "suppressed"
    """The user was deleted (``trackflow gdpr delete``); the payload keeps no user data."""

    INTERNAL_ERROR = "internal_error"
    """A stage raised an unexpected exception; the event is dead-lettered rather than lost."""

    @property
    def description(self) -> str:
        """The documentation of this code (the docstring under its member)."""
        return _DESCRIPTIONS.get(self.value, "")


def _descriptions() -> dict[str, str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Reason))
    out: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.Assign)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(prev.value, ast.Constant)
        ):
            out[str(prev.value.value)] = str(node.value.value)
    return out


_DESCRIPTIONS: dict[str, str] = _descriptions()

#: reasons that drop an event without dead-lettering it (unless configured)
DUPLICATE_REASONS = frozenset({Reason.DUPLICATE_MESSAGE_ID, Reason.DUPLICATE_CONTENT})
