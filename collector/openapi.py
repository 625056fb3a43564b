"""The collector's OpenAPI 3.0 document, served at ``/openapi.json`` (hand-written, kept next to the routes).

It describes every endpoint with its request body, so schemathesis can drive the service.
"""

from __future__ import annotations

from typing import Any

from collector.settings import CollectorSettings

_ID = {"oneOf": [{"type": "string"}, {"type": "number"}], "nullable": True}
_OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True, "nullable": True}
_TS = {
    "oneOf": [{"type": "string"}, {"type": "number"}],
    "nullable": True,
    "description": "Client time, ISO 8601 or epoch; kept as sent.",
}

_SEGMENT_MESSAGE: dict[str, Any] = {
    "type": "object",
    "description": "A Segment / RudderStack message. An anonymousId or userId is required "
    "(or an X-Anonymous-Id header).",
    "properties": {
        "type": {
            "type": "string",
            "enum": ["identify", "track", "page", "screen", "group", "alias", "heartbeat"],
        },
        "messageId": _ID,
        "anonymousId": _ID,
        "userId": _ID,
        "event": {"type": "string", "nullable": True},
        "name": {"type": "string", "nullable": True},
        "groupId": _ID,
        "previousId": _ID,
        "properties": _OBJ,
        "traits": _OBJ,
        "context": _OBJ,
        "integrations": _OBJ,
        "timestamp": _TS,
        "sentAt": _TS,
        "writeKey": {"type": "string"},
    },
    "additionalProperties": True,
}

_BATCH: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "items": _SEGMENT_MESSAGE, "maxItems": 1000},
        "context": _OBJ,
        "integrations": _OBJ,
        "sentAt": _TS,
        "writeKey": {"type": "string"},
    },
}

_APP_TRACKING_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event"],
    "properties": {
        "uuid": _ID,
        "event": {"type": "string", "enum": ["identify", "track", "screen", "heartbeat"]},
        "ref": {"type": "string", "nullable": True},
        "timestamp": _TS,
        "session_id": _ID,
        "offset": {
            "type": "number",
            "nullable": True,
            "description": "Heartbeat: seconds since session start.",
        },
        "user_id": _ID,
        "anonymous_id": _ID,
        "action": {"type": "string", "nullable": True, "description": "Event name of a track or screen."},
        "action_properties": {"oneOf": [_OBJ, {"type": "string"}]},
        "writeKey": {"type": "string"},
    },
    "additionalProperties": True,
}

_APPSFLYER_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "appsflyer_id": {"type": "string"},
        "customer_user_id": {"type": "string"},
        "eventName": {"type": "string"},
        "eventValue": {"oneOf": [_OBJ, {"type": "string"}]},
        "eventCurrency": {"type": "string"},
        "eventTime": {"type": "string", "description": "yyyy-MM-dd HH:mm:ss.SSS (UTC)"},
        "ip": {"type": "string"},
    },
    "additionalProperties": True,
}

_ERRORS = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "index": {"type": "integer"},
                    "field": {"type": "string"},
                },
            },
        },
    },
}


def _err(desc: str, retry: bool = False) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Errors"}
    out: dict[str, Any] = {"description": desc, "content": {"application/json": {"schema": schema}}}
    if retry:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


_INGEST_RESPONSES = {
    "200": {
        "description": "Every event is on Kafka.",
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"success": {"type": "boolean"}}}}
        },
    },
    "400": _err("Malformed envelope; per-event errors; nothing was published."),
    "401": _err("Unknown or missing write key."),
    "413": _err("Request, event or batch too large."),
    "415": _err("Unsupported Content-Encoding."),
    "429": _err("Rate limit of the write key exceeded.", retry=True),
    "503": _err("Kafka did not confirm in time; retry after Retry-After.", retry=True),
}

_SECURITY: list[dict[str, list[str]]] = [{"basic": []}, {"writeKeyHeader": []}]


def _ingest(
    summary: str,
    schema_ref: str,
    *,
    security: list[dict[str, list[str]]] | None = None,
    extra_responses: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
        },
        "responses": {**_INGEST_RESPONSES, **(extra_responses or {})},
        "security": security if security is not None else _SECURITY,
        "parameters": [
            {
                "name": "X-Anonymous-Id",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "Fills in a missing anonymous id.",
            },
            *(params or []),
        ],
    }
    return {"post": op}


def openapi_document(settings: CollectorSettings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the collector."""
    paths: dict[str, Any] = {}
    for t in ("track", "identify", "page", "screen", "group", "alias"):
        paths[f"/v1/{t}"] = _ingest(f"Segment-compatible {t} call.", "SegmentMessage")
    paths["/v1/batch"] = _ingest("Segment-compatible batch of messages.", "Batch")
    paths["/v1/import"] = _ingest("Alias of /v1/batch.", "Batch")
    paths["/v1/app-tracking"] = _ingest(
        'App-tracking shape: one event or {"events": [...]}.', "AppTrackingBody"
    )
    paths["/inappevent/{app_id}"] = _ingest(
        "AppsFlyer-compatible server-to-server in-app event.",
        "AppsFlyerEvent",
        security=[{"authentication": []}],
        extra_responses={"403": _err("The write key belongs to another app.")},
        params=[{"name": "app_id", "in": "path", "required": True, "schema": {"type": "string"}}],
    )
    simple = {"type": "object", "additionalProperties": True}
    paths["/healthz"] = {
        "get": {
            "summary": "Process is up.",
            "responses": {"200": {"description": "up", "content": {"application/json": {"schema": simple}}}},
        }
    }
    paths["/readyz"] = {
        "get": {
            "summary": "Kafka is reachable.",
            "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": simple}}},
                "503": {
                    "description": "Kafka unreachable",
                    "content": {"application/json": {"schema": simple}},
                },
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics.",
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document.",
            "responses": {
                "200": {"description": "OpenAPI", "content": {"application/json": {"schema": simple}}}
            },
        }
    }
    max_batch = settings.max_batch if settings else 1000
    batch = {
        **_BATCH,
        "properties": {
            **_BATCH["properties"],
            "batch": {**_BATCH["properties"]["batch"], "maxItems": max_batch},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "trackflow collector",
            "version": "1",
            "description": "Event ingestion: Segment-compatible, app-tracking and AppsFlyer S2S.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "SegmentMessage": _SEGMENT_MESSAGE,
                "Batch": batch,
                "AppTrackingEvent": _APP_TRACKING_EVENT,
                "AppTrackingBody": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/AppTrackingEvent"},
                        {
                            "type": "object",
                            "required": ["events"],
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/AppTrackingEvent"},
                                },
                                "writeKey": {"type": "string"},
                            },
                        },
                    ]
                },
                "AppsFlyerEvent": _APPSFLYER_EVENT,
                "Errors": _ERRORS,
            },
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic", "description": "Write key as the username."},
                "writeKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Write-Key"},
                "authentication": {"type": "apiKey", "in": "header", "name": "authentication"},
            },
        },
    }
