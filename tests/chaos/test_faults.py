"""Exact accounting under failure: every fault of issue 7, one at a time and then all together.

Each test sends its own seeded stream (two fresh apps, with duplicates and invalid events) through the
collector while it injects a fault into the running pipeline, waits until the pipeline has committed
every record, and then asserts exactly (:meth:`Chaos.verify`):

- rows in ClickHouse ``events`` counted WITHOUT ``FINAL`` == the expected stored events, and zero
  duplicate message ids; the stored ids are exactly the expected ones;
- every invalid event is in ``invalid_events`` with its expected reason;
- Redis counters (events per minute, errors, dead letters) == the ClickHouse rows;
- no event the client saw acknowledged (2xx) is missing.

Recovery time = from the fault's injection until a probe event sent after the repair is visible in
ClickHouse. Stream sizes: ``TRACKFLOW_CHAOS_EVENTS`` (default 20,000) for the combined fault, a
quarter of it for each single fault. ``make chaos`` runs the long version (1,000,000).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from chaos_harness import CHAOS_EVENTS, Chaos, report

from trackflow import stack as local_stack

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    # trackflow.stack.start_process detaches services on purpose and drops their Popen handles
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.timeout(max(900, CHAOS_EVENTS // 20)),
]

SINGLE = max(2000, CHAOS_EVENTS // 4)


def _record(fault: str, chaos: Chaos, figures: dict[str, Any], **extra: Any) -> None:
    report(
        {
            "fault": fault,
            "events_env": CHAOS_EVENTS,
            **extra,
            **figures,
            "rss_kb": {k: v["peak_kb"] for k, v in chaos.rss().items()},
        }
    )
    assert not figures["problems"], "\n".join(figures["problems"])


def test_worker_sigkill_then_restart(chaos: Chaos) -> None:
    st = chaos.stream(SINGLE, seed=101)
    st.wait_acked(0.3)
    t0 = time.monotonic()
    chaos.kill("worker")
    chaos.start("worker")
    recovery = chaos.probe(t0)
    st.join()
    settle = chaos.settle()
    figures = chaos.verify(st)
    _record(
        "worker SIGKILL + restart", chaos, figures, recovery_s=round(recovery, 1), settle_s=round(settle, 1)
    )


def _crash_sink_after_insert(chaos: Chaos) -> None:
    """Start the sink with the test hook that exits right after its first ClickHouse insert (before the
    Redis apply and the offset commit), wait for that exit, then start it normally."""
    log = chaos.paths.logfile("sink")
    mark = log.stat().st_size if log.exists() else 0
    chaos.start("sink", TRACKFLOW_SINK_CRASH_AFTER_INSERT="1")
    local_stack.wait_until(
        lambda: chaos.pid("sink") is None, timeout=180, what="crash after insert", service="sink"
    )
    with log.open("rb") as f:
        f.seek(mark)
        assert b"TRACKFLOW_SINK_CRASH_AFTER_INSERT" in f.read(), "the sink died before its first insert"
    chaos.start("sink")


def test_sink_killed_between_insert_and_commit(chaos: Chaos) -> None:
    st = chaos.stream(SINGLE, seed=202)
    st.wait_acked(0.3)
    t0 = time.monotonic()
    chaos.kill("sink")
    _crash_sink_after_insert(chaos)
    recovery = chaos.probe(t0)
    st.join()
    settle = chaos.settle()
    figures = chaos.verify(st)
    _record(
        "sink SIGKILL, then killed between insert and commit, restart",
        chaos,
        figures,
        recovery_s=round(recovery, 1),
        settle_s=round(settle, 1),
    )


def test_kafka_broker_restart(chaos: Chaos) -> None:
    st = chaos.stream(SINGLE, seed=303)
    st.wait_acked(0.3)
    t0 = time.monotonic()
    chaos.stop_broker()
    chaos.start_broker()
    restarted = time.monotonic() - t0
    recovery = chaos.probe(t0)
    st.join()
    settle = chaos.settle()
    figures = chaos.verify(st)
    _record(
        "Kafka broker restart",
        chaos,
        figures,
        broker_restart_s=round(restarted, 1),
        recovery_s=round(recovery, 1),
        settle_s=round(settle, 1),
    )


def test_redis_down_10s(chaos: Chaos) -> None:
    st = chaos.stream(SINGLE, seed=404)
    st.wait_acked(0.3)
    t0 = time.monotonic()
    chaos.stop_redis()
    time.sleep(10)
    chaos.start_redis()
    recovery = chaos.probe(t0)
    st.join()
    settle = chaos.settle()
    figures = chaos.verify(st)
    _record(
        "Redis stopped for 10 s",
        chaos,
        figures,
        recovery_s=round(recovery, 1),
        recovery_after_redis_back_s=round(recovery - 10, 1),
        settle_s=round(settle, 1),
    )


def test_client_retries_fill_collector_while_kafka_down(chaos: Chaos) -> None:
    """32 clients retry every 0.25 s while the broker is down for 20 s: never a 2xx, memory bounded."""
    st = chaos.stream(SINGLE, seed=505, concurrency=32, max_retry_after_s=0.25)
    st.wait_acked(0.3)
    before = chaos.rss()["collector"]["rss_kb"]
    chaos.stop_broker()
    down_at = time.monotonic()
    time.sleep(20)
    during = chaos.rss()["collector"]["rss_kb"]
    up_at = time.monotonic()
    chaos.start_broker()
    recovery = chaos.probe(down_at)
    st.join()
    settle = chaos.settle()
    # while the broker was down, every request got an answer, and none was a 2xx
    outage = [e for e in st.recorder.exchanges if e.sent >= down_at and e.answered <= up_at]
    assert len(outage) > 100, "the clients kept retrying during the outage"
    assert not [e for e in outage if 200 <= e.status < 300], "a 2xx while Kafka was down"
    assert {e.status for e in outage} <= {503}, {e.status for e in outage}
    after = chaos.rss()["collector"]["rss_kb"]
    assert during < before + 200 * 1024, (before, during)
    figures = chaos.verify(st)
    _record(
        "client retries while Kafka is down 20 s",
        chaos,
        figures,
        recovery_s=round(recovery, 1),
        recovery_after_broker_back_s=round(recovery - (up_at - down_at), 1),
        settle_s=round(settle, 1),
        requests_during_outage=len(outage),
        collector_rss_kb={"before": before, "during": during, "after": after},
    )


def test_all_faults_together(chaos: Chaos) -> None:
    """Worker and sink SIGKILLed, Redis and the broker down, all at once; then a sink crash mid-commit."""
    st = chaos.stream(CHAOS_EVENTS, seed=606)
    st.wait_acked(0.25)
    t0 = time.monotonic()
    chaos.kill("worker")
    chaos.kill("sink")
    chaos.stop_redis()
    chaos.stop_broker()
    time.sleep(10)
    chaos.start_redis()
    chaos.start_broker()
    chaos.start("worker")
    _crash_sink_after_insert(chaos)
    recovery = chaos.probe(t0)
    st.wait_acked(0.6)
    t1 = time.monotonic()
    chaos.kill("worker")  # and once more while the backlog drains
    chaos.start("worker")
    recovery2 = chaos.probe(t1)
    st.join(timeout=max(900, CHAOS_EVENTS / 100))
    settle = chaos.settle(timeout=max(600, CHAOS_EVENTS / 200))
    figures = chaos.verify(st)
    _record(
        "all together: worker+sink SIGKILL, Redis and broker down 10 s, sink crash after insert; "
        "then worker SIGKILL again",
        chaos,
        figures,
        recovery_s=round(recovery, 1),
        second_worker_kill_recovery_s=round(recovery2, 1),
        settle_s=round(settle, 1),
    )
