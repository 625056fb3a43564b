"""Settings of the sink process, its read API and the live counters (``TRACKFLOW_`` prefix)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackflow.config import register


class SinkSettings(BaseSettings):
    """How ``trackflow sink`` batches, commits and serves.

    Parameters:
        sink_group_id: Kafka consumer group of the sink (default ``<topic prefix>sink``, so that
            installations sharing a broker under different prefixes never share a group).
        sink_batch_rows: flush when this many rows are buffered (all partitions together); while the
            previous flush is still being written, the next one takes everything buffered by then
            (up to ``sink_max_buffer_rows``).
        sink_batch_age_s: flush when the oldest buffered row is this old (from its Kafka timestamp).
        sink_max_buffer_rows: above this, consumption pauses until a flush succeeds (bounded memory).
        sink_retry_max_s: longest back-off between retries while ClickHouse or Redis is down.
        sink_dedup_window: ``non_replicated_deduplication_window`` of the tables (blocks remembered).
        sink_insert_threads: a flush's batches (one per partition and kind) inserted at once
            (1: one after the other).
        sink_crash_after_insert: test hook; the process ``os._exit(99)``s after its first ClickHouse
            insert, before Redis and the offset commit.
        sink_crash_after_redis: test hook; ``os._exit(98)`` after the first Redis apply, before the commit.
        sink_session_timeout_ms: Kafka group session timeout: how soon a crashed sink's partitions move.
        online_window_s: a user is "online" after an event or heartbeat in the last N seconds.
        read_api_host / read_api_port: where the sink serves the read API (``TRACKFLOW_READ_API_PORT``).
        read_key: admin read key accepted for every app (``TRACKFLOW_READ_KEY``).
        live_stream_interval_s: seconds between server-sent events of ``/api/live/stream``.
    """

    model_config = SettingsConfigDict(env_prefix="TRACKFLOW_", env_file=".env", extra="ignore", frozen=True)

    sink_group_id: str | None = None

    def group_id(self, topic_prefix: str) -> str:
        """The consumer group: ``TRACKFLOW_SINK_GROUP_ID``, else ``<topic prefix>sink``."""
        return self.sink_group_id or f"{topic_prefix}sink"
    sink_batch_rows: int = Field(default=50_000, ge=1)
    sink_batch_age_s: float = Field(default=1.0, gt=0)
    sink_max_buffer_rows: int = Field(default=200_000, ge=1)
    sink_retry_max_s: float = Field(default=30.0, gt=0)
    sink_dedup_window: int = Field(default=10_000, ge=1)
    sink_insert_threads: int = Field(default=4, ge=1)
    sink_crash_after_insert: bool = False
    sink_crash_after_redis: bool = False
    sink_session_timeout_ms: int = Field(default=10_000, ge=1000)
    online_window_s: int = Field(default=300, ge=1)
    read_api_host: str = "127.0.0.1"
    read_api_port: int = 8081
    read_key: SecretStr | None = None
    live_stream_interval_s: float = Field(default=2.0, gt=0)


register("sink", SinkSettings)
