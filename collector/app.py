"""The collector's HTTP layer: a Starlette app that checks envelopes and publishes to Kafka.

Each ingestion request goes: read the body within the size limit (gunzipping if asked) -> find the
write key -> parse JSON (orjson) -> map onto RawEvents (:mod:`collector.mapping`, pure) -> rate
limit -> encode Avro -> publish and wait for *every* delivery report -> ``200 {"success": true}``.

Answers: 400 (malformed envelope, per-event errors, nothing published), 401 (unknown write key),
403 (AppsFlyer path app id not the key's app), 413 (too large), 415 (unknown Content-Encoding),
429 + Retry-After (rate limit), 503 + Retry-After (Kafka did not confirm in time).

Build it with :func:`create_app`; ``trackflow collector`` runs it on uvicorn (uvloop, httptools).
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from collector import auth
from collector.encoder import raw_event_encoder
from collector.exceptions import PublishError
from collector.mapping import (
    EnvelopeError,
    Limits,
    MapResult,
    Reason,
    Stamp,
    kafka_key,
    map_app_tracking,
    map_appsflyer,
    map_segment,
    mask_ip,
    new_message_id,
)
from collector.metrics import CONTENT_TYPE_LATEST, CollectorMetrics
from collector.openapi import openapi_document
from collector.publisher import KafkaPublisher, Publisher
from collector.ratelimit import RateLimiter
from collector.settings import CollectorSettings
from schemas import Codec, codec_from_settings
from trackflow.apps import App, AppRegistry, open_registry
from trackflow.config import KafkaSettings
from trackflow.exceptions import SerdeError
from trackflow.runtime import tune_gc

log = logging.getLogger(__name__)

SEGMENT_PATH_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_SUCCESS = orjson.dumps({"success": True})
_JSON = "application/json"


class _Disconnected(Exception):
    """Internal: the client went away before sending its whole body."""


Mapper = Callable[[Any, Stamp, Limits], MapResult]


class _Reject(Exception):
    """Internal: answer the request with ``status`` and these errors."""

    def __init__(self, status: int, errors: list[EnvelopeError], headers: dict[str, str] | None = None):
        super().__init__(errors[0].message if errors else str(status))
        self.status = status
        self.errors = errors
        self.headers = headers


def _too_large(limit: int) -> _Reject:
    return _Reject(413, [EnvelopeError(Reason.REQUEST_TOO_LARGE, f"request body is larger than {limit} bytes")])


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON, headers=headers)


class Collector:
    """The request handlers and the state they share.

    Parameters:
        settings: the collector's settings.
        registry: the app registry (write keys -> apps).
        publisher: where events go; None creates a :class:`KafkaPublisher` at startup.
        codec: the RawEvent codec; None uses ``schemas.codec_from_settings("raw_event")``.
        kafka: Kafka settings (topic names, bootstrap); None reads the environment.
    """

    def __init__(
        self,
        settings: CollectorSettings,
        registry: AppRegistry,
        publisher: Publisher | None,
        codec: Codec | None = None,
        kafka: KafkaSettings | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.kafka = kafka or KafkaSettings()
        self.topic = self.kafka.topics.raw
        self.codec = codec or codec_from_settings("raw_event")
        self.encode = raw_event_encoder(self.codec)
        self.publisher = publisher
        self._own_publisher = publisher is None
        self.metrics = CollectorMetrics()
        self.limits = Limits(max_event_bytes=settings.max_event_bytes, max_batch=settings.max_batch)
        self.limiter = RateLimiter(settings.rate_limit_eps, settings.rate_limit_burst)
        self.retry_after = str(settings.retry_after_s)
        self._origins = frozenset(settings.origins())
        self._allow_all_origins = "*" in self._origins
        self.appsflyer_route = IngestRoute(self, "/inappevent", map_appsflyer, appsflyer=True)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        if self.publisher is None:
            self.publisher = KafkaPublisher(self.kafka, self.settings)
            tune_gc()  # a served process (not an app built in a test): start-up is done
        try:
            yield
        finally:
            if self._own_publisher and self.publisher is not None:
                self.publisher.close()

    # -- request plumbing (raw ASGI: the ingestion path skips Starlette's request objects) ------

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.settings.max_request_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise _Reject(
                415,
                [EnvelopeError(Reason.UNSUPPORTED_ENCODING, f"unsupported Content-Encoding {encoding!r}")],
            )
        d = zlib.decompressobj(wbits=47)  # gzip or zlib header, auto-detected
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error:
            raise _Reject(400, [EnvelopeError(Reason.INVALID_JSON, "body is not valid gzip")]) from None
        if len(out) > limit or d.unconsumed_tail:
            raise _too_large(limit)
        if not d.eof:  # cut short: the CRC and length trailer were never checked
            raise _Reject(400, [EnvelopeError(Reason.INVALID_JSON, "gzip body is truncated")])
        return out

    def _app_for(self, key: str | None) -> App:
        app = self.registry.by_write_key(key) if key else None
        if app is None:
            raise _Reject(
                401,
                [EnvelopeError(Reason.UNAUTHORIZED, "unknown or missing write key")],
                {"WWW-Authenticate": 'Basic realm="trackflow"'},
            )
        return app

    def _stamp(self, scope: Scope, headers: dict[str, str], app: App) -> Stamp:
        ip: str | None = None
        if self.settings.trust_forwarded_for:
            fwd = headers.get("x-forwarded-for")
            if fwd:
                ip = fwd.split(",", 1)[0].strip() or None
        client = scope.get("client")
        if ip is None and client:
            ip = client[0]
        masked = app.mask_ip or self.settings.mask_ip
        if ip is not None and masked:
            ip = mask_ip(ip)
        req_id = headers.get("x-request-id")
        return Stamp(
            app_id=app.app_id,
            received_at=time.time_ns() // 1_000_000,
            request_id=req_id or new_message_id(),
            ip=ip,
            user_agent=headers.get("user-agent"),
            fallback_anonymous_id=headers.get("x-anonymous-id") or req_id or None,
            mask_ip=masked,
        )

    async def ingest(
        self, route: IngestRoute, scope: Scope, receive: Receive, send: Send, path_app_id: str | None = None
    ) -> None:
        """Handle one ingestion request end to end and send the answer (an ASGI endpoint)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, body, extra = await self._ingest(route, scope, receive, headers, path_app_id)
        except _Disconnected:
            return
        out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        origin = headers.get("origin")
        if origin is not None:
            out += self._cors_headers(origin)
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """What Starlette's CORSMiddleware adds to a simple (non-preflight) response."""
        if self._allow_all_origins:
            return [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", b"Retry-After"),
            ]
        if origin in self._origins:
            return [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", b"Retry-After"),
                (b"vary", b"Origin"),
            ]
        return []

    async def _ingest(
        self,
        route: IngestRoute,
        scope: Scope,
        receive: Receive,
        headers: dict[str, str],
        path_app_id: str | None,
    ) -> tuple[int, bytes, dict[str, str]]:
        endpoint = route.endpoint
        try:
            body = await self._body(receive, headers)
            header_key = auth.appsflyer_key(headers) if route.appsflyer else auth.header_key(headers)
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                self._app_for(header_key)  # 401 before 400: say nothing to a caller without a key
                raise _Reject(400, [EnvelopeError(Reason.INVALID_JSON, f"invalid JSON: {exc}")]) from None
            app = self._app_for(header_key or auth.body_key(parsed))
            if path_app_id is not None and path_app_id != app.app_id:
                raise _Reject(
                    403,
                    [
                        EnvelopeError(
                            Reason.FORBIDDEN, "the write key does not belong to this app", field="app_id"
                        )
                    ],
                )
            result = route.mapper(parsed, self._stamp(scope, headers, app), self.limits)
            if result.errors:
                raise _Reject(result.status, result.errors)
            events = result.events
            wait = self.limiter.take(app.app_id, len(events))
            if wait:
                raise _Reject(
                    429,
                    [EnvelopeError(Reason.RATE_LIMITED, "rate limit exceeded for this key")],
                    {"Retry-After": str(RateLimiter.retry_after(wait))},
                )
            topic = self.topic
            encode = self.encode
            try:
                messages = [(kafka_key(r), encode(r, topic)) for r in events]
            except (SerdeError, TypeError, ValueError) as exc:  # ValueError covers UnicodeError
                raise _Reject(400, [EnvelopeError(Reason.INVALID_FIELD, str(exc))]) from None
            assert self.publisher is not None
            t0 = time.perf_counter()
            try:
                await self.publisher.publish(topic, messages, self.settings.publish_timeout_s)
            except PublishError as exc:
                log.warning("publish failed (%s): %s", exc.reason, exc)
                raise _Reject(
                    503,
                    [EnvelopeError(Reason.PUBLISH_FAILED, "Kafka did not take the events in time; retry")],
                    {"Retry-After": self.retry_after},
                ) from None
            self.metrics.accepted(events[0]["source"], len(events), time.perf_counter() - t0)
            self.metrics.request(endpoint, 200)
            return 200, _SUCCESS, {}
        except _Reject as rej:
            self.metrics.request(endpoint, rej.status)
            self.metrics.rejected(rej.errors[0].reason.value if rej.errors else str(rej.status))
            payload = orjson.dumps({"success": False, "errors": [e.to_json() for e in rej.errors]})
            return rej.status, payload, rej.headers or {}

    # -- endpoints ------------------------------------------------------------------------

    def ingest_routes(self) -> dict[str, IngestRoute]:
        """The ingestion paths (without ``/inappevent/{app_id}``) and how each maps its body."""
        routes = {f"/v1/{t}": IngestRoute(self, f"/v1/{t}", _segment_mapper(t)) for t in SEGMENT_PATH_TYPES}
        batch = IngestRoute(self, "/v1/batch", _segment_mapper(None))
        routes["/v1/batch"] = batch
        routes["/v1/import"] = batch
        routes["/v1/app-tracking"] = IngestRoute(self, "/v1/app-tracking", map_app_tracking)
        return routes

    async def healthz(self, _request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        ok = self.publisher is not None and await self.publisher.ready()
        if ok:
            return _json({"ready": True})
        return _json({"ready": False, "reason": "kafka unreachable"}, 503, {"Retry-After": self.retry_after})

    async def metrics_endpoint(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, _request: Request) -> Response:
        return _json(openapi_document(self.settings))

    def routes(self) -> list[Route]:
        routes = [Route(path, r, methods=["POST"]) for path, r in self.ingest_routes().items()]
        routes += [
            Route("/inappevent/{app_id}", self.appsflyer_route, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        return routes


def _segment_mapper(path_type: str | None) -> Mapper:
    def mapper(body: Any, stamp: Stamp, limits: Limits) -> MapResult:
        return map_segment(body, stamp, limits, path_type)

    return mapper


class IngestRoute:
    """One ingestion endpoint, as a plain ASGI app (Starlette mounts it as is).

    Parameters:
        collector: the shared handler state.
        endpoint: the metrics label.
        mapper: ``mapper(body, stamp, limits) -> MapResult``.
        appsflyer: the write key comes from AppsFlyer's ``authentication`` header first.
    """

    def __init__(
        self, collector: Collector, endpoint: str, mapper: Mapper, *, appsflyer: bool = False
    ) -> None:
        self.collector = collector
        self.endpoint = endpoint
        self.mapper = mapper
        self.appsflyer = appsflyer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app_id = scope.get("path_params", {}).get("app_id") if self.appsflyer else None
        await self.collector.ingest(self, scope, receive, send, app_id)


class CollectorApp:
    """The collector's ASGI app: ingestion requests go straight to their :class:`IngestRoute`;
    everything else (probes, metrics, OpenAPI, CORS preflights, 404/405, lifespan) to Starlette.

    Bypassing Starlette's middleware and request objects on the hot path roughly halves the
    per-request overhead (see ``bench/collector``); the answers are the same either way.
    """

    def __init__(self, collector: Collector, starlette: Starlette) -> None:
        self.collector = collector
        self.starlette = starlette
        self.state = starlette.state
        self._routes = collector.ingest_routes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            route = self._routes.get(path)
            if route is not None:
                await self.collector.ingest(route, scope, receive, send)
                return
            if path.startswith("/inappevent/"):
                app_id = path[len("/inappevent/") :]
                if app_id and "/" not in app_id:
                    await self.collector.ingest(self.collector.appsflyer_route, scope, receive, send, app_id)
                    return
        await self.starlette(scope, receive, send)


def create_app(
    settings: CollectorSettings | None = None,
    *,
    registry: AppRegistry | None = None,
    publisher: Publisher | None = None,
    codec: Codec | None = None,
    kafka: KafkaSettings | None = None,
) -> CollectorApp:
    """Build the collector's ASGI app.

    Parameters:
        settings: collector settings (default: from the environment).
        registry: app registry (default: :func:`trackflow.apps.open_registry`).
        publisher: event sink (default: a :class:`KafkaPublisher` created at startup, closed at shutdown).
        codec: RawEvent codec (default: from the schema-registry settings).
        kafka: Kafka settings (default: from the environment).
    """
    settings = settings or CollectorSettings()
    collector = Collector(settings, registry or open_registry(), publisher, codec, kafka)
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.origins(),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    ]
    app = Starlette(routes=collector.routes(), middleware=middleware, lifespan=collector.lifespan)
    app.state.collector = collector
    return CollectorApp(collector, app)
