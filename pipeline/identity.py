"""Identity stitching (pure), per device.

State (inside the device state): ``uid`` the resolved user id, ``gen`` the anonymous generation.

- An event with a ``user_id`` links the device to it (``identify`` is the usual carrier).
- ``alias`` links ``previous_id`` (or the device) to ``user_id``.
- A track event named ``anonymize`` / ``reset`` (configurable) forgets the user and starts a fresh
  anonymous identity: ``gen`` increases, and the anonymous user key becomes
  ``<anonymous_id>#<gen>`` so the new identity is not merged with the old one.
- Later events without a ``user_id`` carry the resolved one.

``user_key`` (for user metrics) is the resolved user id, else the anonymous key; ``device_id``
(for device metrics) is the anonymous id, else the user id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    """The identity an enriched event carries."""

    user_id: str | None
    user_key: str
    device_id: str


def resolve(state: dict[str, Any], raw: dict[str, Any], anonymize_names: frozenset[str]) -> Identity:
    """Apply one event to the device's identity state and return the event's identity."""
    anon = raw.get("anonymous_id")
    uid = raw.get("user_id")
    device = anon or uid or ""
    etype = raw.get("type")
    if etype == "track" and raw.get("event") in anonymize_names:
        state.pop("uid", None)
        state["gen"] = int(state.get("gen", 0)) + 1
        uid = None
    elif uid:
        state["uid"] = uid
    else:
        uid = state.get("uid")
    if uid:
        key = uid
    else:
        gen = int(state.get("gen", 0))
        key = f"{anon}#{gen}" if gen and anon else str(anon or device)
    return Identity(uid, key, device)
