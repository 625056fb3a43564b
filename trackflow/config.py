"""Effective configuration: one frozen pydantic-settings model per component.

Every setting is read from an environment variable with the ``TRACKFLOW_`` prefix (for example
``TRACKFLOW_KAFKA_BOOTSTRAP``) or from a ``.env`` file in the working directory. Secrets are
``SecretStr`` and are printed masked by :func:`effective_config`.

Components and the variables they read:

- :class:`CoreSettings`            ``TRACKFLOW_HOME`` (state: app registry, logs, pids, embedded data)
- :class:`KafkaSettings`           ``TRACKFLOW_KAFKA_BOOTSTRAP``, ``TRACKFLOW_TOPIC_PREFIX``, ...
- :class:`SchemaRegistrySettings`  ``TRACKFLOW_SCHEMA_REGISTRY_URL`` (unset: single-object encoding)
- :class:`RedisSettings`           ``TRACKFLOW_REDIS_URL``, ``TRACKFLOW_REDIS_KEY_PREFIX``
- :class:`ClickHouseSettings`      ``TRACKFLOW_CLICKHOUSE_URL`` (unset or ``chdb://``: embedded)
- :class:`StackSettings`           ports of the local stack
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TRACKFLOW_"


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True)


class CoreSettings(BaseSettings):
    """Where trackflow keeps its local state.

    Parameters:
        home: folder for the app registry, logs, pid files and the embedded ClickHouse data.
        apps_file: the app registry file; defaults to ``<home>/apps.json``.
    """

    model_config = _config()

    home: Path = Field(default=Path(".trackflow"), description="State folder (TRACKFLOW_HOME).")
    apps_file: Path | None = Field(default=None, description="App registry JSON file.")

    @property
    def apps_path(self) -> Path:
        return self.apps_file if self.apps_file is not None else self.home / "apps.json"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"


class KafkaSettings(BaseSettings):
    """How every component reaches Kafka.

    Parameters:
        kafka_bootstrap: bootstrap servers, ``host:port[,host:port]``.
        topic_prefix: prefix of every topic name (default ``tf.``).
        partitions: partitions of the event topics when trackflow creates them.
        replication_factor: replication of the topics trackflow creates.
        kafka_security_protocol / kafka_sasl_*: optional authentication.
    """

    model_config = _config()

    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = "tf."
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and the admin client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            pw = self.kafka_sasl_password
            conf["sasl.password"] = pw.get_secret_value() if pw else ""
        return conf

    @property
    def topics(self) -> Topics:
        return Topics.from_prefix(self.topic_prefix)


@dataclass(frozen=True)
class Topics:
    """The topic names, derived from the configurable prefix."""

    raw: str
    enriched: str
    invalid: str
    sessions: str
    fx: str

    @classmethod
    def from_prefix(cls, prefix: str) -> Topics:
        return cls(
            raw=f"{prefix}events.raw",
            enriched=f"{prefix}events.enriched",
            invalid=f"{prefix}events.invalid",
            sessions=f"{prefix}sessions",
            fx=f"{prefix}fx.rates",
        )

    def all(self) -> list[str]:
        return [self.raw, self.enriched, self.invalid, self.sessions, self.fx]


class SchemaRegistrySettings(BaseSettings):
    """Schema registry for the Confluent wire format.

    Parameters:
        schema_registry_url: ``http(s)://…`` of a Confluent-compatible registry, or ``mock://name``
            for confluent-kafka's in-process registry. Unset: Avro single-object encoding against
            the schemas shipped in ``schemas/``.
        schema_registry_basic_auth: optional ``user:password``.
    """

    model_config = _config()

    schema_registry_url: str | None = None
    schema_registry_basic_auth: SecretStr | None = None


class RedisSettings(BaseSettings):
    """Live counters.

    Parameters:
        redis_url: ``redis://host:port/db``.
        redis_key_prefix: prefix of every key trackflow writes (default ``tf:``).
    """

    model_config = _config()

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")
    redis_key_prefix: str = "tf:"


class ClickHouseSettings(BaseSettings):
    """Where events are stored.

    Parameters:
        clickhouse_url: ``http(s)://user:pass@host:port`` for a server, or ``chdb:///path`` (or
            unset) for embedded ClickHouse under ``<home>/chdb``.
        clickhouse_database: database name.
        clickhouse_cluster: cluster name; set it to use the clustered DDL variant.
    """

    model_config = _config()

    clickhouse_url: SecretStr | None = None
    clickhouse_database: str = "trackflow"
    clickhouse_cluster: str | None = None

    def is_embedded(self) -> bool:
        url = self.clickhouse_url.get_secret_value() if self.clickhouse_url else ""
        return not url or url.startswith("chdb://")

    def embedded_path(self, core: CoreSettings) -> Path:
        """The embedded data directory, from ``chdb:///path`` or ``<home>/chdb``."""
        url = self.clickhouse_url.get_secret_value() if self.clickhouse_url else ""
        if url.startswith("chdb://") and len(url) > len("chdb://"):
            return Path(url[len("chdb://") :])
        return core.home / "chdb"


class StackSettings(BaseSettings):
    """Ports and memory of the local stack that ``trackflow stack up`` runs.

    Parameters:
        stack_kafka_port / stack_controller_port: the broker and KRaft controller listeners.
        stack_redis_port: redis-server's port.
        stack_kafka_heap: JVM heap of the broker, e.g. ``512m``.
        stack_registry / stack_registry_port: also run Apicurio Registry (Confluent-compatible API at
            ``http://127.0.0.1:<port>/apis/ccompat/v7``); it is used only when
            ``TRACKFLOW_SCHEMA_REGISTRY_URL`` points at it.
    """

    model_config = _config()

    stack_kafka_port: int = 19092
    stack_controller_port: int = 19093
    stack_redis_port: int = 16379
    stack_kafka_heap: str = "768m"
    stack_registry: bool = True
    stack_registry_port: int = 18081


def effective_config() -> dict[str, dict[str, Any]]:
    """Every component's settings as plain data, secrets masked."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in SETTINGS_CLASSES.items():
        inst = cls()
        out[name] = {k: _printable(getattr(inst, k)) for k in type(inst).model_fields}
    return out


def _printable(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, dict):
        return {str(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def register(name: str, cls: type[BaseSettings]) -> type[BaseSettings]:
    """Add a component's settings class to what ``trackflow config`` prints."""
    SETTINGS_CLASSES[name] = cls
    return cls


SETTINGS_CLASSES: dict[str, type[BaseSettings]] = {
    "core": CoreSettings,
    "kafka": KafkaSettings,
    "schema_registry": SchemaRegistrySettings,
    "redis": RedisSettings,
    "clickhouse": ClickHouseSettings,
    "stack": StackSettings,
}
