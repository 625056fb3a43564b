"""Per-app privacy rules applied to a RawEvent before any stage sees it (pure, plus its settings).

What an app can ask for in the registry (``trackflow apps set``):

- ``hash_user_ids``: ``user_id`` and ``previous_id`` become ``h_`` + the first 32 hex digits of
  HMAC-SHA256(salt, ``app_id`` NUL ``id``). The salt is ``TRACKFLOW_PRIVACY_USER_ID_SALT`` (a
  :class:`~pydantic.SecretStr`, never printed). The hash is deterministic, so identity stitching,
  sessions and user metrics work on the hashed ids, and the same id hashes differently per app.
- ``drop_properties``: these top-level keys are removed from the ``properties`` JSON.
- ``mask_ip`` is applied by the collector (:func:`collector.mapping.mask_ip`), before Kafka.

:func:`apply` runs first in :meth:`pipeline.process.Processor.process`, so dedupe, identity,
sessions, the enriched record *and* dead letters only ever hold the transformed event.

Suppression (``trackflow gdpr delete``): a deleted user's id, in its stored form, is recorded as
:func:`suppression_digest`; events whose ``user_id`` (raw, or resolved by identity stitching)
matches are dead-lettered with reason ``suppressed`` and a payload stripped of user data
(:func:`redacted`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.exceptions import PipelineError
from trackflow.apps import App
from trackflow.config import register

HASH_PREFIX = "h_"
#: RawEvent fields kept in the payload of a dead letter that must not carry user data
REDACTED_FIELDS = ("message_id", "app_id", "type", "event", "source", "received_at")


class PrivacySettings(BaseSettings):
    """Secrets of the privacy options (env ``TRACKFLOW_PRIVACY_<NAME>``).

    Parameters:
        user_id_salt: the secret salt of ``hash_user_ids`` apps. Every worker and
            ``trackflow gdpr`` must use the same value; changing it changes every hashed id.
    """

    model_config = SettingsConfigDict(
        env_prefix="TRACKFLOW_PRIVACY_", env_file=".env", extra="ignore", frozen=True
    )

    user_id_salt: SecretStr | None = None

    def salt(self) -> bytes | None:
        """The salt as bytes, or None when unset."""
        if self.user_id_salt is None or not self.user_id_salt.get_secret_value():
            return None
        return self.user_id_salt.get_secret_value().encode("utf-8")


register("privacy", PrivacySettings)


class PrivacyError(PipelineError):
    """An app asks for a privacy option that cannot be honoured (e.g. hashing without a salt)."""

    def __init__(self, message: str, *, app_id: str | None = None) -> None:
        super().__init__(message)
        self.app_id = app_id


def _never(_app_id: str, _user_id: str) -> bool:
    return False


@dataclass(frozen=True)
class Privacy:
    """What the processor needs: the salt and a suppression lookup.

    Parameters:
        salt: the ``hash_user_ids`` salt (None: apps asking for hashing get their events
            dead-lettered, never stored with clear ids).
        suppressed: ``suppressed(app_id, stored_user_id) -> bool`` (see :func:`suppression_digest`).
    """

    salt: bytes | None = None
    suppressed: Callable[[str, str], bool] = _never


def hash_user_id(salt: bytes, app_id: str, user_id: str) -> str:
    """The stored form of ``user_id`` for a ``hash_user_ids`` app (idempotent on hashed ids)."""
    if is_hashed(user_id):
        return user_id
    mac = hmac.new(salt, app_id.encode("utf-8") + b"\x00" + user_id.encode("utf-8"), hashlib.sha256)
    return HASH_PREFIX + mac.hexdigest()[:32]


def is_hashed(value: str) -> bool:
    """Whether ``value`` looks like an output of :func:`hash_user_id`."""
    if len(value) != len(HASH_PREFIX) + 32 or not value.startswith(HASH_PREFIX):
        return False
    return all(c in "0123456789abcdef" for c in value[len(HASH_PREFIX) :])


def stored_user_ids(app: App, user_id: str, salt: bytes | None) -> list[str]:
    """Every form ``user_id`` can take in storage for ``app`` (clear, and hashed when possible).

    Both forms are listed when a salt is known, so rows written before ``hash_user_ids`` was
    switched on are found too.
    """
    out = [user_id]
    if salt is not None:
        h = hash_user_id(salt, app.app_id, user_id)
        if h != user_id:
            out.append(h)
    elif app.hash_user_ids:
        raise PrivacyError(
            f"app {app.app_id!r} hashes user ids but TRACKFLOW_PRIVACY_USER_ID_SALT is not set",
            app_id=app.app_id,
        )
    return out


def suppression_digest(app_id: str, stored_user_id: str) -> str:
    """The entry a suppression list keeps for a user: no clear id is written down."""
    return hashlib.sha256(f"{app_id}\x00{stored_user_id}".encode()).hexdigest()


def drop_keys(properties_text: str, drop: tuple[str, ...]) -> str:
    """``properties`` JSON text without the ``drop`` top-level keys (unchanged when none is present
    or when the text is not a JSON object: validation reports that)."""
    if not drop or not properties_text:
        return properties_text
    if not any(k in properties_text for k in drop):  # cheap pre-check: a key must appear as text
        return properties_text
    try:
        props = orjson.loads(properties_text)
    except orjson.JSONDecodeError:
        return properties_text
    if not isinstance(props, dict) or not any(k in props for k in drop):
        return properties_text
    return orjson.dumps({k: v for k, v in props.items() if k not in drop}).decode()


def needs_apply(app: App) -> bool:
    """Whether :func:`apply` changes anything for this app."""
    return app.hash_user_ids or bool(app.drop_properties)


def apply(raw: dict[str, Any], app: App, salt: bytes | None) -> dict[str, Any]:
    """The event as the app's privacy options allow it to be stored (a new dict; ``raw`` is kept).

    Raises :class:`PrivacyError` when the app hashes user ids and no salt is configured.
    """
    if not needs_apply(app):
        return raw
    out = dict(raw)
    if app.hash_user_ids:
        if salt is None:
            raise PrivacyError(
                f"app {app.app_id!r} hashes user ids but TRACKFLOW_PRIVACY_USER_ID_SALT is not set",
                app_id=app.app_id,
            )
        for f in ("user_id", "previous_id"):
            v = out.get(f)
            if isinstance(v, str) and v:
                out[f] = hash_user_id(salt, app.app_id, v)
    if app.drop_properties:
        text = out.get("properties")
        if isinstance(text, str):
            out["properties"] = drop_keys(text, app.drop_properties)
    return out


def redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``raw`` a dead letter may keep when the event must not be stored."""
    return {k: raw.get(k) for k in REDACTED_FIELDS if raw.get(k) is not None}
