"""Prometheus metrics of the collector (one registry per app instance, served at ``/metrics``).

- ``trackflow_collector_requests_total{endpoint,status}``
- ``trackflow_collector_events_total{source}`` events acknowledged (on Kafka)
- ``trackflow_collector_rejections_total{reason}`` requests refused, by :class:`~collector.mapping.Reason`
- ``trackflow_collector_publish_seconds`` time from produce to the last delivery report of a request
- ``trackflow_collector_request_events`` events per accepted request

The request path only bumps plain counters (the event loop is the only writer); prometheus_client
reads them when ``/metrics`` is scraped. Its own ``Counter``/``Histogram`` take a lock per update,
four to six updates per request: about 5% of a single-event request's CPU in the collector
benchmark's profile.

With ``--workers N`` each worker process serves its own figures.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "CollectorMetrics"]

PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
EVENTS_BUCKETS = (1, 2, 5, 10, 50, 100, 250, 500, 1000)


class _Histogram:
    """Observation counts per bucket (``le`` upper bounds, then +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


def _counter(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, n in sorted(values.items()):
        family.add_metric(list(label_values), n)
    return family


class CollectorMetrics:
    """The collector's metrics, in their own registry (so several apps can live in one process)."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.rejections: collections.Counter[str] = collections.Counter()
        self.publish_seconds = _Histogram(PUBLISH_BUCKETS)
        self.request_events = _Histogram(EVENTS_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def accepted(self, source: str, n: int, publish_s: float) -> None:
        self.events[source] += n
        self.publish_seconds.observe(publish_s)
        self.request_events.observe(n)

    def rejected(self, reason: str) -> None:
        self.rejections[reason] += 1

    def collect(self) -> Iterator[Metric]:
        """The figures as Prometheus metric families (called by the registry at each scrape)."""
        yield _counter(
            "trackflow_collector_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            {(endpoint, str(status)): n for (endpoint, status), n in self.requests.items()},
        )
        yield _counter(
            "trackflow_collector_events",
            "Events acknowledged after Kafka delivery",
            ["source"],
            {(source,): n for source, n in self.events.items()},
        )
        yield _counter(
            "trackflow_collector_rejections",
            "Requests refused, by reason",
            ["reason"],
            {(reason,): n for reason, n in self.rejections.items()},
        )
        yield self.publish_seconds.family(
            "trackflow_collector_publish_seconds", "Produce to last delivery report, per request"
        )
        yield self.request_events.family("trackflow_collector_request_events", "Events per accepted request")

    def render(self) -> bytes:
        return generate_latest(self.registry)
