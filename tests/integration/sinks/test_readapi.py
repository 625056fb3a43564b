"""The read API's contract, served by uvicorn in a thread on the run's ClickHouse and Redis."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def api(ch_client: Any, metrics_dataset: str, tf_env: dict[str, str]) -> Any:
    import redis

    from sinks.clickhouse import ThreadClients
    from sinks.readapi import ReadApi
    from trackflow.apps import open_registry

    reg = open_registry()
    _, _, mkey = reg.add("Metrics App", app_id="m-app", currency="GBP")
    _, _, okey = reg.add("Other App", app_id="other-app")
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    ra = ReadApi(ThreadClients(), reg, [ADMIN], redis=r, redis_prefix=tf_env["TRACKFLOW_REDIS_KEY_PREFIX"],
                 stream_interval_s=0.05, status=lambda: {"rows_written": 0})
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(ra.asgi(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as client:
        yield client, mkey, okey
    server.should_exit = True
    thread.join(10)
    sock.close()
    ra.close()
    r.close()


def test_health_needs_no_key_and_apps_are_scoped(api):
    client, mkey, _ = api
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/api/apps").status_code == 401
    assert client.get("/api/apps", headers={"X-Read-Key": "wrong"}).status_code == 401
    assert client.get("/api/apps", headers={"X-Read-Key": mkey}).json() == [
        {"app_id": "m-app", "name": "Metrics App", "reporting_currency": "GBP"}]
    ids = {a["app_id"] for a in client.get("/api/apps", headers={"Authorization": f"Bearer {ADMIN}"}).json()}
    assert {"m-app", "other-app"} <= ids


def test_metric_endpoint_shape_and_auth(api):
    client, mkey, okey = api
    q = {"app": "m-app", "from": "2026-10-01", "to": "2026-10-03"}
    body = client.get("/api/metrics/dau", params={**q, "key": mkey}).json()
    assert body == {"metric": "dau", "app": "m-app", "from": "2026-10-01", "to": "2026-10-03", "by": "users",
                    "rows": [{"day": "2026-10-01", "dau": 2}, {"day": "2026-10-02", "dau": 2},
                             {"day": "2026-10-03", "dau": 1}]}
    assert client.get("/api/metrics/dau", params={**q, "key": okey}).status_code == 401  # other app's key
    funnel = client.get("/api/metrics/funnel", params={**q, "key": ADMIN, "steps": "open,view,buy",
                                                        "window": "3600", "by": "devices"}).json()
    assert [r["devices"] for r in funnel["rows"]] == [3, 2, 1]


@pytest.mark.parametrize("params,param", [
    ({"from": "yesterday"}, "from"), ({"by": "cats"}, "by"), ({"to": ""}, "to"), ({"app": ""}, "app"),
    ({"app": "nope"}, "app"),
])
def test_bad_metric_parameters_are_400_naming_them(api, params, param):
    client, *_ = api
    q = {"app": "m-app", "from": "2026-10-01", "to": "2026-10-03", "key": ADMIN, **params}
    r = client.get("/api/metrics/dau", params=q)
    assert r.status_code == 400 and r.json()["param"] == param


def test_sql_is_read_only_single_statement_and_admin_only(api):
    client, mkey, _ = api
    h = {"X-Read-Key": ADMIN}
    ok = client.post("/api/sql", json={"sql": "SELECT count() AS n FROM events WHERE app_id = 'm-app'"}, headers=h)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"columns": ["n"], "rows": [{"n": 16}], "truncated": False}
    for bad in ["SELECT 1; SELECT 2", "INSERT INTO fx_rates (currency) VALUES ('X')", "DROP TABLE events",
                "SELECT 1 SETTINGS readonly = 0", ""]:
        r = client.post("/api/sql", json={"sql": bad}, headers=h)
        assert r.status_code == 400, bad
    assert client.post("/api/sql", content=b"not json", headers=h).status_code == 400
    assert client.post("/api/sql", json={"sql": "SELECT 1"}, headers={"X-Read-Key": mkey}).status_code == 403
    assert client.post("/api/sql", json={"sql": "SELECT 1"}).status_code == 401
    assert client.post("/api/sql", json={"sql": "SELECT count() AS n FROM events"}, headers=h).status_code == 200


def test_live_tiles_and_stream(api, tf_env):
    import redis

    from sinks.base import Batch
    from sinks.redis import RedisSink

    client, mkey, _ = api
    now = int(time.time() * 1000)
    recs = [{"app_id": "m-app", "user_key": f"u{i}", "device_id": f"d{i}", "event": "open", "type": "track",
             "event_time": now} for i in range(3)]
    r = redis.Redis.from_url(tf_env["TRACKFLOW_REDIS_URL"])
    RedisSink(r, tf_env["TRACKFLOW_REDIS_KEY_PREFIX"], "readapi-test").write([Batch("live", 0, [0, 1, 2], recs)])
    r.close()
    tiles = client.get("/api/live", params={"app": "m-app", "key": mkey}).json()
    assert (tiles["dau_users"], tiles["online_now"], tiles["events_this_minute"]) == (3, 3, 3)
    with client.stream("GET", "/api/live/stream", params={"app": "m-app", "key": mkey}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        line = next(x for x in s.iter_lines() if x.startswith("data: "))
    assert '"dau_users":3' in line
