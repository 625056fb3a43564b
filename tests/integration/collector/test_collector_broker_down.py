"""A collector never answers 2xx for events Kafka does not have; the client's retry lands them.

A 503 means "not acknowledged", not "not stored": a request that timed out while the restarted
broker was still coming up may have landed anyway (librdkafka reports such a message as possibly
persisted), and its retry then lands a second copy. The pipeline drops repeated message ids.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from trackflow.config import StackSettings
from trackflow.stack import StackPaths, start_kafka, stop_process

pytestmark = pytest.mark.integration


def _bodies(key: str, tag: str) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    auth = {"X-Write-Key": key}
    return [
        ("/v1/track", {"messageId": f"{tag}-t", "anonymousId": "a", "event": "x"}, auth),
        ("/v1/batch", {"batch": [{"type": "identify", "userId": "u", "messageId": f"{tag}-b"}]}, auth),
        ("/v1/app-tracking", {"event": "track", "action": "x", "user_id": "p"}, auth),
        ("/inappevent/test-app", {"appsflyer_id": "af", "eventName": "x"}, {"authentication": key}),
    ]


def test_unreachable_broker_gives_503_with_retry_after(
    collector_factory: Any, unused_port: Any, app: tuple[Any, str, str]
) -> None:
    dead = f"127.0.0.1:{unused_port()}"
    c = collector_factory(
        create_topics=False, TRACKFLOW_KAFKA_BOOTSTRAP=dead, TRACKFLOW_COLLECTOR_PUBLISH_TIMEOUT_S="1.5"
    )
    _, key, _ = app
    with httpx.Client(base_url=c.url, timeout=15) as http:
        for path, body, headers in _bodies(key, uuid.uuid4().hex[:6]):
            t0 = time.monotonic()
            r = http.post(path, json=body, headers=headers)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["errors"][0]["reason"] == "publish_failed"
            assert time.monotonic() - t0 < 5, "the answer comes within the publish timeout"
        r = http.get("/readyz")
        assert r.status_code == 503
        assert http.get("/healthz").status_code == 200, "the process itself is up"
        metrics = http.get("/metrics").text
        assert 'trackflow_collector_rejections_total{reason="publish_failed"} 4.0' in metrics
        assert "trackflow_collector_events_total{" not in metrics, "no event was acknowledged"


@pytest.mark.slow
@pytest.mark.chaos
# trackflow.stack.start_process detaches the broker on purpose and drops its Popen handle
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_broker_restart_then_retry_lands_every_event(
    collector_factory: Any,
    unused_port: Any,
    app: tuple[Any, str, str],
    raw_reader: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A private single-node broker (never the shared one) is stopped and restarted under the collector."""
    root = tmp_path_factory.mktemp("private-kafka")
    paths = StackPaths(root=root / "stack", run=root / "run", logs=root / "logs")
    port = unused_port()
    settings = StackSettings(
        stack_kafka_port=port, stack_controller_port=unused_port(), stack_kafka_heap="384m"
    )
    start_kafka(paths, settings)
    bootstrap = f"127.0.0.1:{port}"
    try:
        c = collector_factory(TRACKFLOW_KAFKA_BOOTSTRAP=bootstrap, TRACKFLOW_COLLECTOR_PUBLISH_TIMEOUT_S="2")
        _, key, _ = app
        tag = uuid.uuid4().hex[:6]
        http = httpx.Client(base_url=c.url, timeout=30, headers={"X-Write-Key": key})
        assert (
            http.post("/v1/track", json={"messageId": f"{tag}-warm", "userId": "u", "event": "w"}).status_code
            == 200
        )

        assert stop_process(paths.pidfile("kafka"))
        ids = [f"{tag}-{i}" for i in range(50)]
        batch = {
            "batch": [
                {"type": "track", "messageId": m, "anonymousId": f"d{i % 7}", "event": "e"}
                for i, m in enumerate(ids)
            ]
        }
        statuses = [http.post("/v1/batch", json=batch).status_code for _ in range(3)]
        assert statuses == [503, 503, 503], "never a 2xx while the broker is down"

        start_kafka(paths, settings)
        # the client's retry loop: resend the same request until it is acknowledged
        deadline = time.monotonic() + 90
        unacknowledged = 0  # 503s after the restart: those requests may have landed all the same
        while True:
            r = http.post("/v1/batch", json=batch)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            unacknowledged += 1
            assert time.monotonic() < deadline, "the retry was never acknowledged"
            time.sleep(min(1.0, float(r.headers["Retry-After"])))
        http.close()
        events = raw_reader(bootstrap, c.topics.raw, expect=len(ids) + 1, settle=3.0)
        counts = Counter(e["message_id"] for e in events)
        assert set(counts) == {f"{tag}-warm", *ids}, "every event sent, nothing else"
        assert counts[f"{tag}-warm"] == 1
        # once each: the acknowledged retry; at most once more per request answered 503 after the
        # restart (none of the requests answered while the broker was down ever lands)
        assert all(1 <= counts[m] <= 1 + unacknowledged for m in ids), (counts, unacknowledged)
    finally:
        stop_process(paths.pidfile("kafka"))
