"""Enrichment (pure): parsed context, user-agent, attribution, and the EnrichedEvent record.

- Event time is corrected for clock skew in :func:`pipeline.validate.skew_corrected`.
- Context: ``os``/``os_version`` from ``context.os`` (else the user agent), ``app_version`` from
  ``context.app.version``, ``locale`` from ``context.locale``, ``device_type`` from
  ``context.device`` (model, else type; else the user agent's device), ``browser`` from the user
  agent (``ua-parser``, cached), ``country`` from ``context.location.country``, else the locale's
  region.
- Attribution: the first media source and campaign seen for the device's user, from
  ``context.campaign`` (``source``/``name``), ``utm_source``/``utm_campaign`` or AppsFlyer-style
  ``media_source``/``pid`` and ``campaign``/``c`` properties, kept in state and carried on every
  later event.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson


@lru_cache(maxsize=8192)
def parse_user_agent(ua: str) -> tuple[str | None, str | None, str | None, str | None]:
    """``(os, os_version, browser, device)`` of a User-Agent string (cached)."""
    from ua_parser import parse

    r = parse(ua)
    os_name = os_ver = browser = device = None
    if r.os is not None:
        os_name = r.os.family
        os_ver = ".".join(p for p in (r.os.major, r.os.minor, r.os.patch) if p) or None
    if r.user_agent is not None:
        browser = r.user_agent.family
    if r.device is not None and r.device.family != "Other":
        device = r.device.family
    return os_name, os_ver, browser, device


def _str(v: Any) -> str | None:
    if v is None or v == "":
        return None
    return v if isinstance(v, str) else str(v)


def attribution(properties: dict[str, Any], context: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(media_source, campaign)`` named by this event, if any."""
    camp = context.get("campaign")
    src = name = None
    if isinstance(camp, dict):
        src, name = _str(camp.get("source")), _str(camp.get("name"))
    if properties:
        src = src or _str(
            properties.get("utm_source") or properties.get("media_source") or properties.get("pid")
        )
        name = name or _str(
            properties.get("utm_campaign") or properties.get("campaign") or properties.get("c")
        )
    return src, name


def context_fields(raw: dict[str, Any], context: dict[str, Any]) -> dict[str, str | None]:
    """The typed context columns of the enriched event."""
    out: dict[str, str | None] = {
        "os": None,
        "os_version": None,
        "app_version": None,
        "locale": None,
        "browser": None,
        "device_type": None,
        "country": None,
    }
    if context:
        os_ = context.get("os")
        if isinstance(os_, dict):
            out["os"], out["os_version"] = _str(os_.get("name")), _str(os_.get("version"))
        app = context.get("app")
        if isinstance(app, dict):
            out["app_version"] = _str(app.get("version"))
        out["locale"] = _str(context.get("locale"))
        dev = context.get("device")
        if isinstance(dev, dict):
            out["device_type"] = _str(dev.get("model") or dev.get("type"))
        loc = context.get("location")
        if isinstance(loc, dict):
            out["country"] = _str(loc.get("country"))
    ua = raw.get("user_agent") or (context.get("userAgent") if context else None)
    if isinstance(ua, str) and ua:
        os_name, os_ver, browser, device = parse_user_agent(ua)
        out["browser"] = browser
        if out["os"] is None:
            out["os"], out["os_version"] = os_name, os_ver
        if out["device_type"] is None:
            out["device_type"] = device
    if out["country"] is None and out["locale"]:
        loc = out["locale"].replace("_", "-").split("-")
        if len(loc) > 1 and len(loc[-1]) == 2 and loc[-1].isalpha():
            out["country"] = loc[-1].upper()
    return out


def strip_properties(text: str, properties: dict[str, Any], drop: tuple[str, ...]) -> str:
    """The properties JSON without the app's ``drop_properties`` keys (unchanged text if none)."""
    if not drop or not any(k in properties for k in drop):
        return text
    return orjson.dumps({k: v for k, v in properties.items() if k not in drop}).decode()


def product_id(properties: dict[str, Any]) -> str | None:
    return _str(
        properties.get("product_id") or properties.get("af_content_id") or properties.get("bundle_id")
    )
