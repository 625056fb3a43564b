"""End to end on real services: simulated traffic through collector, worker and sink.

Events posted to the collector's HTTP API (all three shapes) must come out in ClickHouse with the
exact counts simulate predicts (duplicates removed, invalid events as dead letters by reason), and
Redis counters must agree with ClickHouse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from trackflow import demo
from trackflow.config import CoreSettings
from trackflow.stack import StackPaths, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def pipeline(isolated_env: Callable[[], dict[str, str]]) -> Iterator[dict[str, Any]]:
    """Collector, worker and sink running on their own topics, home, database and key prefix."""
    base = isolated_env()
    core = CoreSettings(home=Path(base["TRACKFLOW_HOME"]))
    paths = StackPaths.from_settings(core)
    env = demo.service_env(core, free_port(), free_port(), base=base)
    demo.run_cli(["fx", "load", str(demo.FX_FIXTURE)], env)
    demo.start_services(paths, env)
    try:
        demo.wait_healthy(paths, env)
        yield {"core": core, "paths": paths, "env": env}
    finally:
        demo.stop_services(paths)
        for name in demo.SERVICES:
            log = paths.logfile(name)
            if log.exists():
                print(f"--- {name} log tail ---\n" + log.read_text()[-3000:])


def test_simulated_traffic_lands_exactly(pipeline: dict[str, Any], tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    core, paths, env = pipeline["core"], pipeline["paths"], pipeline["env"]
    keys_file = tmp_path / "keys.json"
    out = tmp_path / "sim.json"
    demo.ensure_demo_apps(core, keys_file)
    demo.run_cli(["simulate", "--collector", f"http://127.0.0.1:{env['TRACKFLOW_COLLECTOR_PORT']}",
                  "--users", "30", "--days", "5", "--seed", "7", "--keys-file", str(keys_file),
                  "--out", str(out)], env)
    sim = orjson.loads(out.read_bytes())
    exp = sim["expected"]
    assert sim["report"]["failed"] == 0
    api = demo.ReadApi(env["TRACKFLOW_READ_KEY"], f"http://127.0.0.1:{env['TRACKFLOW_READ_API_PORT']}")
    request.addfinalizer(api.close)
    demo.wait_visible(api, exp["expected_stored"], sum(exp["invalid"].values()), paths, timeout=240)

    # exact events: no duplicate message ids even without FINAL, and the predicted count
    row = api.sql("SELECT count() AS rows, uniqExact(message_id) AS ids FROM events")[0]
    assert row == {"rows": exp["expected_stored"], "ids": exp["expected_stored"]}
    by_app = {r["app_id"]: r["n"] for r in api.sql("SELECT app_id, count() AS n FROM events GROUP BY app_id")}
    keys = orjson.loads(keys_file.read_bytes())
    for kind, info in exp["apps"].items():
        assert by_app[keys[kind]["app_id"]] == info["events"], kind

    # every invalid event is a dead letter with its reason
    reasons = {r["reason"]: r["n"] for r in
               api.sql("SELECT reason, count() AS n FROM invalid_events GROUP BY reason")}
    assert reasons == exp["invalid"]

    # revenue converted: every purchase in a known currency has USD and reporting amounts
    unconverted = api.sql("SELECT count() AS n FROM events WHERE revenue IS NOT NULL AND fx_status = 'ok' "
                          "AND (revenue_usd IS NULL OR revenue_reporting IS NULL)")[0]["n"]
    assert unconverted == 0

    # Redis counters agree with ClickHouse: events per minute summed over every bucket
    prefix = env["TRACKFLOW_REDIS_KEY_PREFIX"]
    r = redis.Redis.from_url(env["TRACKFLOW_REDIS_URL"])
    request.addfinalizer(r.close)
    for kind in exp["apps"]:
        app_id = keys[kind]["app_id"]
        total = 0
        for key in r.scan_iter(match=f"{prefix}live:{app_id}:epm:*", count=1000):
            total += sum(int(v) for v in r.hvals(key))
        assert total == by_app[app_id], kind
