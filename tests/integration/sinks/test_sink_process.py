"""``trackflow sink`` as a process on real Kafka, Redis and embedded ClickHouse.

Records are produced to the enriched, sessions, invalid and FX topics with the schemas codec; the
sink must land exact row counts in ClickHouse (checked through its read API, since it owns the
embedded data directory) and exact Redis counters. A sink killed between its insert and its offset
commit (test hooks ``TRACKFLOW_SINK_CRASH_AFTER_INSERT`` / ``..._AFTER_REDIS``), then restarted,
must leave no duplicate rows (``count()`` without FINAL) and no double-counted counters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

APP = "e2e-app"
USERS = 30
EVENTS = 600
REPO = Path(__file__).resolve().parents[3]


def _records(now_ms: int) -> tuple[list[dict], list[dict], list[dict]]:
    from schemas import defaults

    events = []
    for i in range(EVENTS):
        u = f"user{i % USERS}"
        r = defaults("enriched_event")
        r.update(message_id=f"e{i}", type="track", event=f"ev{i % 5}", app_id=APP, anonymous_id=f"dev-{u}",
                 user_id=u, user_key=u, device_id=f"dev-{u}", received_at=now_ms, event_time=now_ms - i,
                 processed_at=now_ms, reporting_currency="USD")
        if i % 10 == 0:  # 60 purchases of 1.25 USD
            r.update(revenue=1.25, currency="USD", revenue_usd=1.25, revenue_reporting=1.25, fx_status="ok")
        if i % 50 == 1:  # 12 errors
            r.update(event="error", error_level="Error" if i % 100 == 1 else "Warning", error_code="E")
        events.append(r)
    sessions = []
    for i in range(20):
        s = defaults("session")
        s.update(app_id=APP, session_id=f"s{i}", user_key=f"user{i}", device_id=f"dev-user{i}",
                 started_at=now_ms - 60_000, ended_at=now_ms, duration_s=60.0, events=3, heartbeats=1,
                 screens=1, closed=True, close_reason="inactivity", version=1)
        sessions.append(s)
    invalid = []
    for i in range(7):
        invalid.append({"app_id": APP, "message_id": f"x{i}", "stage": "validate", "reason": "invalid_event_name",
                        "message": "bad name", "field": "event", "payload": "{}", "received_at": now_ms,
                        "failed_at": now_ms, "source_topic": None, "source_partition": None, "source_offset": None})
    return events, sessions, invalid


@pytest.fixture
def sink_env(tf_env: dict[str, str], tmp_path: Path, services: Any) -> dict[str, str]:
    """Environment of one sink process: its own topics, home (chdb dir), Redis prefix and group."""
    from trackflow.apps import AppRegistry
    from trackflow.config import KafkaSettings
    from trackflow.stack import ensure_topics

    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(tf_env)
    env.update({
        "TRACKFLOW_HOME": str(tmp_path / "home"),
        "TRACKFLOW_TOPIC_PREFIX": f"s{tag}.",
        "TRACKFLOW_REDIS_KEY_PREFIX": f"s{tag}:",
        "TRACKFLOW_CLICKHOUSE_DATABASE": f"sink_{tag}",
        "TRACKFLOW_SINK_GROUP_ID": f"sink-{tag}",
        "TRACKFLOW_SINK_BATCH_AGE_S": "0.5",
        "TRACKFLOW_SINK_SESSION_TIMEOUT_MS": "6000",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("TRACKFLOW_READ_KEY", None)
    AppRegistry(tmp_path / "home" / "apps.json").add("E2E", app_id=APP)
    ensure_topics(KafkaSettings(kafka_bootstrap=services.kafka_bootstrap, topic_prefix=f"s{tag}."))
    return env


def _produce(env: dict[str, str], events: list[dict], sessions: list[dict], invalid: list[dict]) -> None:
    from confluent_kafka import Producer

    from schemas import codec
    from trackflow.config import Topics

    t = Topics.from_prefix(env["TRACKFLOW_TOPIC_PREFIX"])
    p = Producer({"bootstrap.servers": env["TRACKFLOW_KAFKA_BOOTSTRAP"], "linger.ms": 5})
    ce, cs, ci, cf = codec("enriched_event"), codec("session"), codec("invalid_event"), codec("fx_rates")
    for r in events:
        p.produce(t.enriched, ce.encode(r, t.enriched), key=f"{APP}:{r['device_id']}")
    for r in sessions:
        p.produce(t.sessions, cs.encode(r, t.sessions), key=f"{APP}:{r['session_id']}")
    for r in invalid:
        p.produce(t.invalid, ci.encode(r, t.invalid), key=f"{APP}:x")
    fx = {"hour": "2026-10-01T13:00:00Z", "base": "USD", "rates": {"EUR": 0.9, "GBP": 0.8, "JPY": 150.0},
          "source": "test", "fetched_at": 1}
    p.produce(t.fx, cf.encode(fx, t.fx), key=fx["hour"])
    assert p.flush(30) == 0


def _start(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    e = dict(env, **extra)
    with open(Path(env["TRACKFLOW_HOME"]).parent / f"sink-{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "trackflow", "sink", "--port", "0", "-v"], env=e,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _api(env: dict[str, str], proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[str, str]:
    info = Path(env["TRACKFLOW_HOME"]) / "run" / "readapi.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sink exited with {proc.returncode}"
        if info.exists():
            d = json.loads(info.read_text())
            if d["pid"] == proc.pid:
                try:
                    if httpx.get(d["url"] + "/healthz", timeout=2).status_code == 200:
                        return d["url"], d["token"]
                except httpx.HTTPError:
                    pass
        time.sleep(0.2)
    raise AssertionError("the sink's read API did not come up")


def _sql(url: str, token: str, sql: str) -> list[dict]:
    r = httpx.post(url + "/api/sql", json={"sql": sql}, headers={"X-Read-Key": token}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def _wait_count(url: str, token: str, table: str, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = _sql(url, token, f"SELECT count() AS n FROM {table}")[0]["n"]
        if got >= n:
            return int(got)
        time.sleep(0.3)
    return int(got)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _redis_totals(env: dict[str, str], now_ms: int) -> dict[str, Any]:
    from sinks.redis import live_tiles

    r = redis.Redis.from_url(env["TRACKFLOW_REDIS_URL"])
    epm = 0
    for key in r.scan_iter(match=f"{env['TRACKFLOW_REDIS_KEY_PREFIX']}live:{APP}:epm:*"):
        epm += sum(int(v) for v in r.hvals(key))
    tiles = live_tiles(r, env["TRACKFLOW_REDIS_KEY_PREFIX"], APP, now_ms / 1000)
    r.close()
    return {"epm_total": epm, **tiles}


def _check_everything(env: dict[str, str], url: str, token: str, now_ms: int) -> None:
    assert _wait_count(url, token, "events", EVENTS) == EVENTS
    assert _wait_count(url, token, "sessions", 20) == 20
    assert _wait_count(url, token, "invalid_events", 7) == 7
    assert _wait_count(url, token, "fx_rates", 3) == 3
    time.sleep(1.5)  # anything extra (a duplicate) would have landed by now
    rows = _sql(url, token, "SELECT count() AS n, uniqExact(message_id) AS ids FROM events")
    assert rows == [{"n": EVENTS, "ids": EVENTS}]  # no FINAL: duplicates would show
    assert _sql(url, token, "SELECT count() AS n FROM sessions")[0]["n"] == 20
    assert _sql(url, token, "SELECT count() AS n FROM invalid_events")[0]["n"] == 7
    assert _sql(url, token, "SELECT sum(events) AS n FROM daily_active")[0]["n"] == EVENTS  # rollup, no dup
    # Redis: exact counters, applied once
    deadline = time.monotonic() + 20
    totals = _redis_totals(env, now_ms)
    while totals["epm_total"] < EVENTS and time.monotonic() < deadline:
        time.sleep(0.3)
        totals = _redis_totals(env, now_ms)
    assert totals["epm_total"] == EVENTS
    assert totals["revenue_today_usd"] == pytest.approx(60 * 1.25)
    assert totals["errors_last_hour"] == {"Error": 6, "Warning": 6}
    assert totals["dead_letters_last_hour"] == {"invalid_event_name": 7}
    assert totals["dau_users"] == USERS
    assert totals["dau_devices"] == USERS
    assert totals["online_now"] == USERS


def test_sink_writes_exact_rows_and_counters(sink_env):
    now_ms = int(time.time() * 1000)
    events, sessions, invalid = _records(now_ms)
    _produce(sink_env, events, sessions, invalid)
    proc = _start(sink_env)
    try:
        url, token = _api(sink_env, proc)
        _check_everything(sink_env, url, token, now_ms)
        # the read API's contract, on the same process
        assert httpx.get(url + "/api/apps").status_code == 401
        r = httpx.get(url + "/api/live", params={"app": APP, "key": token})
        assert r.status_code == 200 and r.json()["dau_users"] == USERS
        bad = httpx.post(url + "/api/sql", json={"sql": "SELECT 1; SELECT 2"}, headers={"X-Read-Key": token})
        assert bad.status_code == 400 and bad.json()["param"] == "sql"
        ro = httpx.post(url + "/api/sql", json={"sql": "DROP TABLE events"},
                        headers={"Authorization": f"Bearer {token}"})
        assert ro.status_code == 400
        assert _sql(url, token, "SELECT count() AS n FROM events")[0]["n"] == EVENTS
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.chaos
@pytest.mark.parametrize("hook,code", [("TRACKFLOW_SINK_CRASH_AFTER_INSERT", 99),
                                       ("TRACKFLOW_SINK_CRASH_AFTER_REDIS", 98)])
def test_sink_killed_before_commit_leaves_no_duplicates(sink_env, hook, code):
    now_ms = int(time.time() * 1000)
    events, sessions, invalid = _records(now_ms)
    _produce(sink_env, events, sessions, invalid)
    crashing = _start(sink_env, **{hook: "1"})
    assert crashing.wait(90) == code  # died after writing, before committing offsets
    proc = _start(sink_env)
    try:
        url, token = _api(sink_env, proc)
        _check_everything(sink_env, url, token, now_ms)
        replayed = _sql(url, token, "SELECT count() AS n FROM sink_batches")[0]["n"]
        assert replayed >= 1
    finally:
        _stop(proc)
