"""Where a request carries its write key (pure functions over headers and the parsed body).

Accepted, in this order: the Basic-auth username (Segment SDKs send ``writeKey:``), an
``X-Write-Key`` header, then ``writeKey`` in the JSON body. AppsFlyer S2S requests carry it in the
``authentication`` header instead (see :func:`appsflyer_key`).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from typing import Any


def basic_username(authorization: str | None) -> str | None:
    """The username of a ``Basic`` Authorization header, or None."""
    if not authorization:
        return None
    return _basic_username(authorization)


@functools.lru_cache(maxsize=4096)  # an SDK sends the same header with every request
def _basic_username(authorization: str) -> str | None:
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user = decoded.split(":", 1)[0]
    return user or None


def header_key(headers: Mapping[str, str]) -> str | None:
    """The write key found in the headers (Basic username, then ``X-Write-Key``)."""
    return basic_username(headers.get("authorization")) or headers.get("x-write-key") or None


def body_key(body: Any) -> str | None:
    """``writeKey`` of a JSON object body."""
    if isinstance(body, dict):
        key = body.get("writeKey")
        if isinstance(key, str) and key:
            return key
    return None


def appsflyer_key(headers: Mapping[str, str]) -> str | None:
    """The ``authentication`` header AppsFlyer S2S clients send (falls back to the usual places)."""
    return headers.get("authentication") or header_key(headers)
