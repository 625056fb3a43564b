"""The worker on the real broker: exact outputs, crash recovery, and scaling across workers.

Expected outputs come from running the same events through :class:`pipeline.process.Processor`
in-process on in-memory state (the pure reference), plus hand-built session scenarios.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.fx import RateTable, parse_csv
from pipeline.process import DictState, Processor
from pipeline.settings import PipelineSettings
from pipeline.traffic import generate, raw_event
from trackflow.apps import open_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fx" / "rates.csv"
T_SEPT = 1_790_000_000_000  # 2026-09-21, inside the fixture window


def reference(events: list[tuple[str, dict[str, Any]]]) -> tuple[set[str], list[str], int]:
    """(enriched message ids, invalid message ids with repeats, dropped duplicates), in-process."""
    rates = RateTable()
    for h, r in parse_csv(FIXTURE.read_text()).items():
        rates.set_hour(h, r)
    proc = Processor(PipelineSettings(), open_registry().get, rates, DictState())
    enriched: set[str] = set()
    invalid: list[str] = []
    dropped = 0
    for i, (_, rec) in enumerate(events):
        res = proc.process(dict(rec), pos=(0, i), now=int(time.time() * 1000))
        enriched |= {r["message_id"] for _, r in res.enriched}
        invalid += [r["message_id"] for _, r in res.invalid]
        dropped += not res.enriched and not res.invalid
    return enriched, invalid, dropped


def traffic(app_id: str, n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    return list(generate(n, app_id, devices=300, seed=seed, start_ms=T_SEPT, step_ms=50))


def test_exact_outputs_sessions_and_fx(pipe, app):
    app_id = app[0].app_id
    loaded = pipe.cli("fx", "load", str(FIXTURE))
    assert loaded.returncode == 0, loaded.stderr
    events = traffic(app_id, 1500, seed=1)
    # hand-built sessions: 3 devices with explicit start / 2 screens / end, one device left open
    t = T_SEPT + 10_000_000
    for d in range(3):
        dev = f"sess-{d}"
        for j, (typ, name) in enumerate(
            [("track", "session_start"), ("screen", "Home"), ("screen", "Shop"), ("track", "session_end")]
        ):
            events.append(
                (
                    f"{app_id}:{dev}",
                    raw_event(
                        app_id,
                        dev,
                        received_at=t + j * 1000,
                        type=typ,
                        event=name,
                        message_id=f"{dev}-{j}",
                        timestamp=str(t + j * 1000),
                        sent_at=None,
                    ),
                )
            )
    events.append(
        (
            f"{app_id}:lonely",
            raw_event(
                app_id,
                "lonely",
                received_at=t,
                message_id="lonely-0",
                event="tap",
                timestamp=str(t),
                sent_at=None,
            ),
        )
    )
    # revenue in EUR on 2026-09-21: converted with the fixture's rate of that day
    events.append(
        (
            f"{app_id}:payer",
            raw_event(
                app_id,
                "payer",
                received_at=T_SEPT,
                message_id="pay-1",
                event="purchase",
                timestamp=str(T_SEPT),
                sent_at=None,
                properties={"revenue": "100", "currency": "EUR"},
            ),
        )
    )
    exp_enriched, exp_invalid, dropped = reference(events)
    assert dropped > 0 and exp_invalid
    pipe.produce(events)
    pipe.start_worker("w1")
    pipe.wait_until(
        lambda: (
            pipe.count(pipe.topics.enriched) >= len(exp_enriched)
            and pipe.count(pipe.topics.invalid) >= len(exp_invalid)
        ),
        180,
        "all outputs",
    )
    enriched = pipe.read(pipe.topics.enriched, "enriched_event")
    invalid = pipe.read(pipe.topics.invalid, "invalid_event")
    assert len(enriched) == len(exp_enriched) and {e["message_id"] for e in enriched} == exp_enriched
    assert sorted(e["message_id"] for e in invalid) == sorted(exp_invalid)
    assert all(r["reason"] and r["message"] and r["payload"] for r in invalid)

    pay = next(e for e in enriched if e["message_id"] == "pay-1")
    day = time.strftime("%Y-%m-%d", time.gmtime(T_SEPT / 1000))
    rows = list(csv.DictReader(FIXTURE.read_text().splitlines()))
    eur = max((r for r in rows if r["currency"] == "EUR" and r["hour"] <= day), key=lambda r: r["hour"])
    assert pay["fx_status"] == "ok" and pay["fx_rate_usd"] == float(eur["rate"])
    assert pay["revenue_usd"] == round(100 / float(eur["rate"]), 2) and pay["reporting_currency"] == "GBP"

    # sessions: the three explicit ones close with session_end; "lonely" closes by the timer (20 s idle)
    def closed() -> list[dict[str, Any]]:
        return [s for s in pipe.read(pipe.topics.sessions, "session") if s["closed"]]

    pipe.wait_until(lambda: any(s["device_id"] == "lonely" for s in closed()), 90, "timer close")
    ends = [s for s in closed() if s["close_reason"] == "session_end"]
    assert len(ends) == 3 and {s["device_id"] for s in ends} == {"sess-0", "sess-1", "sess-2"}
    assert all(s["events"] == 4 and s["screens"] == 2 and s["duration_s"] == 3.0 for s in ends)
    lonely = [s for s in closed() if s["device_id"] == "lonely"]
    assert len(lonely) == 1 and lonely[0]["close_reason"] == "inactivity" and lonely[0]["events"] == 1


def enriched_ids(pipe: Any) -> set[str]:
    return {e["message_id"] for e in pipe.read(pipe.topics.enriched, "enriched_event")}


def wait_for_enriched(pipe: Any, expected: set[str], timeout: float, what: str) -> None:
    """Until every expected message id is on the enriched topic (replays may add duplicates)."""
    pipe.wait_until(
        lambda: pipe.count(pipe.topics.enriched) >= len(expected) and enriched_ids(pipe) >= expected,
        timeout,
        what,
    )


def test_sigkill_mid_stream_loses_nothing(pipe, app):
    # The kill lands while the input is still arriving, so it is mid-stream however fast the worker
    # is: 1,000 events first, then the other 11,000 in slices of 500 every 0.25 s (~5.5 s), and the
    # kill one second into those. (With all 12,000 produced up front, a faster worker had processed
    # every one before the kill.)
    app_id = app[0].app_id
    events = traffic(app_id, 12000, seed=2)
    exp_enriched, exp_invalid, _ = reference(events)
    head, rest = events[:1000], events[1000:]
    pipe.produce(head)
    pipe.start_worker("w1")
    pipe.wait_until(lambda: pipe.count(pipe.topics.enriched) >= 500, 120, "first outputs")

    fed: list[int] = []

    def feed() -> None:
        for i in range(0, len(rest), 500):
            fed.append(pipe.produce(rest[i : i + 500]))
            time.sleep(0.25)

    feeder = threading.Thread(target=feed, name="feed")
    feeder.start()
    try:
        time.sleep(1)
        assert feeder.is_alive(), "the input was complete before the kill"
        pipe.kill("w1")  # SIGKILL, mid-stream
        assert pipe.count(pipe.topics.enriched) < len(exp_enriched)
        pipe.start_worker("w1")
    finally:
        feeder.join(120)
    assert not feeder.is_alive() and sum(fed) == len(rest)  # a failed produce ends the feed short
    wait_for_enriched(pipe, exp_enriched, 180, "all enriched after restart")
    time.sleep(3)
    enriched = pipe.read(pipe.topics.enriched, "enriched_event")
    got = {e["message_id"] for e in enriched}
    assert got == exp_enriched  # nothing lost, nothing extra; replays are duplicates of the same ids
    assert len(enriched) >= len(exp_enriched)
    assert {e["message_id"] for e in pipe.read(pipe.topics.invalid, "invalid_event")} == set(exp_invalid)


def committed_total(pipe: Any) -> int:
    """The pipeline group's committed offsets on the raw topic, summed."""
    from pipeline.worker import app_id_for
    from trackflow.offsets import committed_total as total

    return total(pipe.kafka, app_id_for(pipe.kafka.topic_prefix), pipe.topics.raw)


def test_faust_own_fetch_loop_gives_the_same_outputs(pipe, app):
    # TRACKFLOW_PIPELINE_FAST_FETCH_LOOP=false (and any faust-streaming version the fast loop was
    # not written for): Faust's fetch loop feeds the agent's batches; commits still follow the frontier
    app_id = app[0].app_id
    events = traffic(app_id, 3000, seed=4)
    exp_enriched, exp_invalid, _ = reference(events)
    pipe.env["TRACKFLOW_PIPELINE_FAST_FETCH_LOOP"] = "false"
    pipe.produce(events)
    pipe.start_worker("w1")
    wait_for_enriched(pipe, exp_enriched, 180, "all enriched on Faust's fetch loop")
    pipe.wait_until(lambda: committed_total(pipe) >= len(events), 60, "offsets committed to the end")
    enriched = pipe.read(pipe.topics.enriched, "enriched_event")
    assert {e["message_id"] for e in enriched} == exp_enriched
    assert {e["message_id"] for e in pipe.read(pipe.topics.invalid, "invalid_event")} == set(exp_invalid)


def test_a_wedged_worker_restarts_itself_in_place_and_loses_nothing(pipe, app, tmp_path):
    # the test hook stops the agent for good after 200 events, as Faust's fetch loop was seen to
    # stop after a broker restart: re-reading cannot repair it, so the watchdog restarts the worker
    app_id = app[0].app_id
    events = traffic(app_id, 3000, seed=5)
    exp_enriched, exp_invalid, _ = reference(events)
    marker = tmp_path / "wedged-once"
    pipe.env.update(
        TRACKFLOW_PIPELINE_TEST_WEDGE=str(marker),
        TRACKFLOW_PIPELINE_STALL_S="3",
        TRACKFLOW_PIPELINE_STALL_RESTART_S="10",
    )
    pipe.produce(events)
    worker = pipe.start_worker("w1")
    wait_for_enriched(pipe, exp_enriched, 240, "all enriched after the restart")
    log = pipe.log("w1")
    assert marker.exists() and "TRACKFLOW_PIPELINE_TEST_WEDGE: the agent stops here" in log
    assert "seeking every partition back to its committed offset" in log  # tried first
    assert "restarting this process in place: pipeline worker wedged" in log
    assert "THREAD MainThread" in log  # the wedged state's stacks and tasks, kept for diagnosis
    assert worker.poll() is None  # the same process, running again
    assert enriched_ids(pipe) == exp_enriched
    assert {e["message_id"] for e in pipe.read(pipe.topics.invalid, "invalid_event")} == set(exp_invalid)


def test_two_workers_split_partitions_and_match_one(pipe, app):
    from confluent_kafka.admin import AdminClient

    from pipeline.worker import app_id_for

    app_id = app[0].app_id
    events = traffic(app_id, 4000, seed=3)
    exp_enriched, exp_invalid, _ = reference(events)
    pipe.start_worker("w1")
    pipe.start_worker("w2")
    admin = AdminClient(pipe.kafka.client_config())
    group = app_id_for(pipe.kafka.topic_prefix)

    def assignment() -> dict[str, set[int]]:
        desc = admin.describe_consumer_groups([group])[group].result()
        return {
            m.member_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == pipe.topics.raw}
            for m in desc.members
        }

    pipe.wait_until(lambda: sorted(len(v) for v in assignment().values()) == [2, 2], 120, "a 2+2 assignment")
    parts = list(assignment().values())
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == {0, 1, 2, 3}
    pipe.produce(events)
    pipe.wait_until(
        lambda: (
            pipe.count(pipe.topics.enriched) >= len(exp_enriched)
            and pipe.count(pipe.topics.invalid) >= len(exp_invalid)
        ),
        180,
        "all outputs",
    )
    enriched = pipe.read(pipe.topics.enriched, "enriched_event")
    assert {e["message_id"] for e in enriched} == exp_enriched and len(enriched) == len(exp_enriched)
    assert sorted(e["message_id"] for e in pipe.read(pipe.topics.invalid, "invalid_event")) == sorted(
        exp_invalid
    )


def _tombstoned_keys(pipe: Any, topic: str) -> set[bytes]:
    """Keys of the deletions (null values) in a changelog topic."""
    import uuid

    from confluent_kafka import Consumer

    n = pipe.count(topic)
    c = Consumer(
        pipe.kafka.client_config()
        | {
            "group.id": f"tomb-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    seen = 0
    out: set[bytes] = set()
    deadline = time.monotonic() + 30
    try:
        while seen < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    seen += 1
                    if m.value() is None:
                        out.add(m.key())
    finally:
        c.close()
    return out


def test_message_id_state_expires_with_its_window(pipe, app):
    """Entries older than the message-id window are deleted (tombstones in the changelog) once later
    events arrive, also after the worker restarted in between."""
    from pipeline.dedupe import message_key

    app_id = app[0].app_id
    pipe.env["TRACKFLOW_PIPELINE_MESSAGE_ID_WINDOW_S"] = "2"
    first = list(generate(300, app_id, devices=50, seed=31, start_ms=T_SEPT, step_ms=10, duplicate_rate=0))
    first_ids, _, _ = reference(first)
    pipe.produce(first)
    pipe.start_worker("w1")
    pipe.wait_until(lambda: pipe.count(pipe.topics.enriched) >= len(first_ids), 120, "the first events")
    time.sleep(3)  # flushed: the expiry index is on disk
    pipe.kill("w1")  # the index outlives the process (it used to be in memory, lost on a restart)
    pipe.start_worker("w1")
    later = list(
        generate(300, app_id, devices=50, seed=32, start_ms=T_SEPT + 60_000, step_ms=10, duplicate_rate=0)
    )
    pipe.produce(later)
    changelog = f"{pipe.kafka.topic_prefix}pipeline-seen-changelog"
    want = {message_key(app_id, m).encode() for m in first_ids}
    pipe.wait_until(
        lambda: _tombstoned_keys(pipe, changelog) >= want, 120, "deletions of the expired entries"
    )
    # entries received within the window before the last event cannot have expired
    last = max(int(r["received_at"]) for _, r in later)
    fresh = {r["message_id"] for _, r in later if int(r["received_at"]) > last - 2000} & reference(later)[0]
    assert fresh and not {message_key(app_id, m).encode() for m in fresh} & _tombstoned_keys(pipe, changelog)
