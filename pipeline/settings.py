"""Settings of the pipeline workers (``TRACKFLOW_PIPELINE_*``) and of the FX rate source (``TRACKFLOW_FX_*``).

Both classes are registered with :func:`trackflow.config.register`, so ``trackflow config`` prints
them (secrets masked).
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.dedupe import LATE_MAX
from trackflow.config import register


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", frozen=True)


class PipelineSettings(BaseSettings):
    """How the pipeline stages behave (env ``TRACKFLOW_PIPELINE_<NAME>``).

    Parameters:
        message_id_window_s: a message_id seen again within this many seconds is dropped (24 h).
        content_window_s: an identical event within this many seconds is dropped (10 s).
        content_late_s: how long (wall clock) a content digest is kept after it was recorded, even
            when the device's newer events are out of the window, so that a duplicate arriving late
            (its batch retried after newer batches of the device landed) is still caught
            (0: the state expires exactly with the window).
        content_late_max: at most this many digests per device are kept that way, out of the
            window (the most recently recorded): a device's state stays bounded however fast it
            sends (unbounded, a device sending 10 events/s carried 6,000 digests).
        content_dedupe_exempt_sources: sources exempt from the content rule (server-to-server).
        dead_letter_duplicates: also send dropped duplicates to the invalid topic.
        max_future_s: event times more than this far after ``received_at`` are invalid.
        max_value_length: longest property/trait string value.
        revenue_limit_usd: |revenue_usd| above this sets ``revenue_in_range=false``.
        token_symbols: JSON object mapping web3 token contract addresses to symbols.
        error_event_names: track event names that must follow the error-event schema.
        monetization_event_names: track event names that must follow the monetization schema.
        anonymize_event_names: track event names that start a fresh anonymous identity.
        session_emit_interval_s: an open session is re-emitted at most this often (interim record).
        session_timer_interval_s: how often the worker looks for idle sessions to close.
        fx_wait_s: how long a worker waits to read the FX topic up to its end before processing.
        worker_name: distinguishes the local state folder of workers sharing one TRACKFLOW_HOME.
        commit_interval_s: Faust ``broker_commit_every`` seconds.
        session_timeout_s: Kafka group session timeout of the worker: how soon a crashed worker's
            partitions move to the others (Faust's default is 60 s).
        metrics_port: serve Prometheus counters on this port (0: off).
        stall_s: a raw partition with unread records and no progress for this long is re-read
            from its committed offset (0: never).
        fast_fetch_loop: hand records to the agent through :mod:`pipeline.fastpath`'s fetch loop
            (default); ``false`` keeps Faust's own loop, which costs ~35 µs more per event (a
            switch for ruling the fast loop out when diagnosing). The agent takes its events in
            batches either way.
        stall_restart_s: the worker restarts itself in place (same process id, a fresh
            interpreter: what a SIGKILL and a restart would do) when, with the broker reachable, a
            raw partition has made no progress for this long despite the re-reads, or a rebalance
            (table recovery included) has made none for this long (0: never).
        state_cache_mb: device states stay parsed in memory after they are stored, up to this many
            MB of their JSON (a parsed state takes ~3-4x that): a device's next event skips
            parsing it again (0: off).
        rocksdb_write_buffer_mb / rocksdb_max_write_buffers / rocksdb_block_cache_mb: memory of
            each RocksDB database of the state tables (one per table and partition): memtables of
            this size, at most this many, and a block cache of this size. A worker's RocksDB
            memory is at most 2 x partitions x (write_buffer x max_write_buffers + block_cache).
            Faust's defaults (64 MB x 3 and a 2 GB cache per database) let the memtables keep
            all of a partition's recent state in memory.
    """

    model_config = _config("TRACKFLOW_PIPELINE_")

    message_id_window_s: float = Field(default=24 * 3600, gt=0)
    content_window_s: float = Field(default=10.0, ge=0)
    content_late_s: float = Field(default=600.0, ge=0)
    content_late_max: int = Field(default=LATE_MAX, ge=0)
    content_dedupe_exempt_sources: frozenset[str] = frozenset({"appsflyer_s2s"})
    dead_letter_duplicates: bool = False
    max_future_s: float = Field(default=3600.0, ge=0)
    max_value_length: int = Field(default=1000, gt=0)
    revenue_limit_usd: float = Field(default=10_000.0, gt=0)
    token_symbols: dict[str, str] = Field(
        default_factory=lambda: {
            "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48": "USDC",
            "0xdac17f958d2ee523a2206206994597c13d831ec7": "USDT",
            "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2": "ETH",
            "0x7d1afa7b718fb893db30a3abc0cfc608aacfebb0": "MATIC",
        }
    )
    error_event_names: frozenset[str] = frozenset({"error", "app_error"})
    monetization_event_names: frozenset[str] = frozenset(
        {"monetization", "web2_monetization", "web3_monetization", "web2_purchase", "web3_purchase"}
    )
    anonymize_event_names: frozenset[str] = frozenset({"anonymize", "reset"})
    session_emit_interval_s: float = Field(default=60.0, gt=0)
    session_timer_interval_s: float = Field(default=2.0, gt=0)
    fx_wait_s: float = Field(default=20.0, ge=0)
    worker_name: str = "w0"
    commit_interval_s: float = Field(default=1.0, gt=0)
    session_timeout_s: float = Field(default=10.0, ge=6.0)
    metrics_port: int = 0
    stall_s: float = Field(default=30.0, ge=0)
    stall_restart_s: float = Field(default=90.0, ge=0)
    fast_fetch_loop: bool = True
    state_cache_mb: int = Field(default=16, ge=0)
    rocksdb_write_buffer_mb: int = Field(default=8, ge=1)
    rocksdb_max_write_buffers: int = Field(default=2, ge=2)
    rocksdb_block_cache_mb: int = Field(default=16, ge=1)

    def rocksdb_options(self) -> dict[str, int]:
        """The ``options`` of a Faust rocksdb table (:class:`faust.stores.rocksdb.RocksDBOptions`)."""
        mb = 1024 * 1024
        return {
            "write_buffer_size": self.rocksdb_write_buffer_mb * mb,
            "max_write_buffer_number": self.rocksdb_max_write_buffers,
            "block_cache_size": self.rocksdb_block_cache_mb * mb,
        }


class FxSettings(BaseSettings):
    """Where ``trackflow fx fetch|run`` reads rates (env ``TRACKFLOW_FX_<NAME>``).

    Parameters:
        url: an Open Exchange Rates-compatible endpoint returning ``{"timestamp", "base", "rates"}``
            (``app_id`` is added as a query parameter).
        app_id: the provider's app id (secret).
        interval_s: how often ``fx run`` fetches (hourly).
        timeout_s: HTTP timeout.
    """

    model_config = _config("TRACKFLOW_FX_")

    url: str = "https://openexchangerates.org/api/latest.json"
    app_id: SecretStr | None = None
    interval_s: float = Field(default=3600.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)


register("pipeline", PipelineSettings)
register("fx", FxSettings)
