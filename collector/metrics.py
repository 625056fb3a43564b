"""Prometheus metrics of the collector (one registry per app instance, served at ``/metrics``).

- ``trackflow_collector_requests_total{endpoint,status}``
- ``trackflow_collector_events_total{source}`` events acknowledged (on Kafka)
- ``trackflow_collector_rejections_total{reason}`` requests refused, by :class:`~collector.mapping.Reason`
- ``trackflow_collector_publish_seconds`` time from produce to the last delivery report of a request
- ``trackflow_collector_request_events`` events per accepted request

With ``--workers N`` each worker process serves its own figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "CollectorMetrics"]


class CollectorMetrics:
    """The collector's metrics, in their own registry (so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "trackflow_collector_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.events = Counter(
            "trackflow_collector_events",
            "Events acknowledged after Kafka delivery",
            ["source"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "trackflow_collector_rejections",
            "Requests refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "trackflow_collector_publish_seconds",
            "Produce to last delivery report, per request",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.request_events = Histogram(
            "trackflow_collector_request_events",
            "Events per accepted request",
            buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self._req_children: dict[tuple[str, int], Counter] = {}
        self._event_children: dict[str, Counter] = {}

    def request(self, endpoint: str, status: int) -> None:
        child = self._req_children.get((endpoint, status))
        if child is None:
            child = self._req_children[(endpoint, status)] = self.requests.labels(endpoint, str(status))
        child.inc()

    def accepted(self, source: str, n: int, publish_s: float) -> None:
        child = self._event_children.get(source)
        if child is None:
            child = self._event_children[source] = self.events.labels(source)
        child.inc(n)
        self.publish_seconds.observe(publish_s)
        self.request_events.observe(n)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
