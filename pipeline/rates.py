"""Publishing exchange rates to the compacted FX topic (I/O edge of :mod:`pipeline.fx`).

- :func:`load_path` reads history: a CSV ``hour,currency,rate`` file, an Open Exchange Rates JSON
  document, or a folder of them.
- :class:`RateProvider` is the seam for live sources; :class:`OxrProvider` is the real one, an
  Open Exchange Rates-compatible HTTP endpoint read with httpx.
- :func:`publish` writes one ``FxRates`` record per hour, keyed by the ISO hour, to
  ``<prefix>fx.rates`` (created compacted if missing).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from pipeline.exceptions import FxError
from pipeline.fx import fx_record, parse_csv, parse_oxr
from trackflow.config import KafkaSettings

log = logging.getLogger("trackflow.fx")

HourRates = dict[int, dict[str, float]]


def load_path(path: Path) -> HourRates:
    """Rates by hour from a CSV file, an OXR JSON file, or a folder of either."""
    path = Path(path)
    if path.is_dir():
        out: HourRates = {}
        for p in sorted(path.iterdir()):
            if p.suffix.lower() in (".csv", ".json"):
                for h, r in load_path(p).items():
                    out.setdefault(h, {}).update(r)
        return out
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FxError(f"cannot read {path}: {exc}", source=str(path)) from exc
    if path.suffix.lower() == ".json":
        hour, rates = parse_oxr(data, source=str(path))
        return {hour: rates}
    return parse_csv(data.decode("utf-8-sig"), source=str(path))


class RateProvider(Protocol):
    """A live source of the current hour's rates (base USD)."""

    name: str

    def fetch(self) -> tuple[int, dict[str, float]]:
        """``(hour_ms, rates)`` of the latest available rates."""
        ...


class OxrProvider:
    """An Open Exchange Rates-compatible endpoint (``GET url?app_id=...``).

    Parameters:
        url: e.g. ``https://openexchangerates.org/api/latest.json``.
        app_id: the app id sent as a query parameter (omitted when None).
        timeout_s: HTTP timeout.
    """

    name = "openexchangerates"

    def __init__(self, url: str, app_id: str | None, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.app_id = app_id
        self.timeout_s = timeout_s

    def fetch(self) -> tuple[int, dict[str, float]]:
        import httpx

        params = {"app_id": self.app_id} if self.app_id else {}
        try:
            resp = httpx.get(self.url, params=params, timeout=self.timeout_s)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise FxError(f"cannot fetch rates from {self.url}: {exc}", source=self.url) from exc
        return parse_oxr(resp.content, source=self.url)


def ensure_fx_topic(kafka: KafkaSettings) -> str:
    """Create the compacted FX topic if it does not exist; return its name."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = kafka.topics.fx
    admin = AdminClient(kafka.client_config())
    if topic not in admin.list_topics(timeout=10).topics:
        fut = admin.create_topics(
            [NewTopic(topic, 1, kafka.replication_factor, config={"cleanup.policy": "compact"})]
        )[topic]
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise FxError(f"cannot create {topic}: {exc}", source=topic) from exc
    return topic


def publish(hours: HourRates, source: str, kafka: KafkaSettings | None = None) -> int:
    """Publish one FxRates record per hour to the FX topic; return how many were written."""
    from confluent_kafka import Producer

    from schemas import codec_from_settings

    kafka = kafka or KafkaSettings()
    topic = ensure_fx_topic(kafka)
    codec = codec_from_settings("fx_rates")
    producer = Producer(kafka.client_config() | {"acks": "all", "enable.idempotence": True, "linger.ms": 20})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    now = int(time.time() * 1000)
    for hour in sorted(hours):
        rec = fx_record(hour, hours[hour], source, now)
        producer.produce(
            topic, key=rec["hour"].encode(), value=codec.encode(rec, topic), on_delivery=on_delivery
        )
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining or errors:
        raise FxError(f"{remaining} records undelivered; errors: {errors[:3]}", source=topic)
    return len(hours)


def fetch_and_publish(
    provider: RateProvider, kafka: KafkaSettings | None = None
) -> tuple[int, dict[str, float]]:
    """Fetch the provider's latest rates and publish them for their hour."""
    hour, rates = provider.fetch()
    publish({hour: rates}, provider.name, kafka)
    return hour, rates
