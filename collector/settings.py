"""Settings of the collector (``TRACKFLOW_COLLECTOR_*``), registered with ``trackflow config``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackflow.config import register


class CollectorSettings(BaseSettings):
    """The HTTP ingestion service.

    Parameters:
        host / port: where ``trackflow collector`` listens (default ``0.0.0.0:8080``).
        workers: uvicorn worker processes.
        max_event_bytes: largest accepted event (its JSON, re-serialised), default 32 KB.
        max_request_bytes: largest accepted request body, after gzip decompression, default 512 KB.
        max_batch: most events in one batch request.
        rate_limit_eps: events per second allowed per write key in one worker (0 disables).
        rate_limit_burst: token-bucket size of the rate limit (events).
        publish_timeout_s: how long a request waits for Kafka's delivery reports before a 503.
        delivery_timeout_ms: librdkafka ``message.timeout.ms`` (default: the publish timeout), so a
            dead broker yields failed deliveries rather than infinite waiting.
        retry_after_s: the ``Retry-After`` sent with 503.
        linger_ms / compression: producer batching (``lz4`` or ``zstd``).
        poll_mode: who serves librdkafka's delivery reports: the event ``loop`` (default; measured
            ~1.5x the single-event request rate of ``thread``, which pays a GIL hand-off per report batch).
        mask_ip: mask client IPs of every app (an app can also ask for it in the registry).
        trust_forwarded_for: take the client IP from ``X-Forwarded-For`` (behind a proxy).
        cors_origins: comma-separated allowed browser origins, ``*`` for any.
        ready_cache_s: how long ``/readyz`` reuses its last Kafka metadata answer.
    """

    model_config = SettingsConfigDict(
        env_prefix="TRACKFLOW_COLLECTOR_", env_file=".env", extra="ignore", frozen=True
    )

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_event_bytes: int = Field(default=32768, ge=256)
    max_request_bytes: int = Field(default=524288, ge=1024)
    max_batch: int = Field(default=1000, ge=1)
    rate_limit_eps: float = Field(default=100_000.0, ge=0)
    rate_limit_burst: int = Field(default=200_000, ge=1)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    delivery_timeout_ms: int | None = Field(default=None, ge=100)
    retry_after_s: int = Field(default=5, ge=1)
    linger_ms: float = Field(default=5.0, ge=0)
    compression: Literal["lz4", "zstd"] = "lz4"
    poll_mode: Literal["thread", "loop"] = "loop"
    mask_ip: bool = False
    trust_forwarded_for: bool = False
    cors_origins: str = "*"
    ready_cache_s: float = Field(default=1.0, ge=0)

    def origins(self) -> list[str]:
        """The CORS origins as a list."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def message_timeout_ms(self) -> int:
        """librdkafka ``message.timeout.ms``: explicit, or the publish timeout."""
        if self.delivery_timeout_ms is not None:
            return self.delivery_timeout_ms
        return max(100, int(self.publish_timeout_s * 1000))


register("collector", CollectorSettings)
