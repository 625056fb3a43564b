"""``trackflow demo``: the whole pipeline on the embedded default, with realistic traffic.

Steps (each printed as it runs):

1. bring the local stack up (Kafka, Redis, embedded ClickHouse) and the topics;
2. reset the demo's data (topics, ClickHouse, Redis keys, worker state) so every run is the same;
3. load the FX rates fixture onto the compacted rates topic;
4. start the collector, a pipeline worker and the sink (which serves the read API and the
   dashboard) as background processes, logging to ``<home>/logs/`` and recorded by pid in
   ``<home>/run/``;
5. run ``trackflow simulate`` (seeded) through the collector's HTTP API;
6. wait until every accepted event is visible in ClickHouse;
7. print a summary report and the dashboard URL, and leave the services running.

``trackflow demo stop`` stops the demo's services by pid (``make stop`` also stops the stack).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from trackflow import stack as local_stack
from trackflow.config import CoreSettings, KafkaSettings, RedisSettings

SERVICES = ("collector", "worker", "sink")
REPO = local_stack.REPO_ROOT
FX_FIXTURE = REPO / "tests" / "fixtures" / "fx" / "rates.csv"
COLLECTOR_PORT = 8080
READ_API_PORT = 8081


def _say(step: str) -> None:
    click.secho(f"==> {step}", bold=True, err=True)


def demo_dir(core: CoreSettings) -> Path:
    d = core.home / "demo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _read_key(core: CoreSettings) -> str:
    """The demo's admin read key, created once and kept in a 0600 file."""
    path = demo_dir(core) / "read_key"
    if not path.exists():
        path.write_text("tfr_admin_" + secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def service_env(core: CoreSettings, collector_port: int = COLLECTOR_PORT,
                read_port: int = READ_API_PORT, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the pipeline's services (collector, worker, sink) on loopback."""
    env = dict(os.environ if base is None else base)
    env.update({
        "TRACKFLOW_HOME": str(core.home.resolve()),
        "TRACKFLOW_READ_KEY": _read_key(core),
        "TRACKFLOW_COLLECTOR_HOST": "127.0.0.1",
        "TRACKFLOW_COLLECTOR_PORT": str(collector_port),
        "TRACKFLOW_READ_API_HOST": "127.0.0.1",
        "TRACKFLOW_READ_API_PORT": str(read_port),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _trackflow() -> list[str]:
    return [sys.executable, "-m", "trackflow"]


def start_services(paths: local_stack.StackPaths, env: dict[str, str],
                   names: tuple[str, ...] = SERVICES) -> dict[str, str]:
    """Start the named services (collector, worker, sink) unless running. Returns what was done."""
    cmds = {
        "collector": [*_trackflow(), "collector", "--host", "127.0.0.1", "--port",
                      env["TRACKFLOW_COLLECTOR_PORT"]],
        "worker": [*_trackflow(), "worker"],
        "sink": [*_trackflow(), "sink"],
    }
    done = {}
    for name in names:
        if local_stack.read_pid(paths.pidfile(name)) is not None:
            done[name] = "already running"
            continue
        local_stack.start_process(cmds[name], pidfile=paths.pidfile(name), logfile=paths.logfile(name),
                                  env=env, cwd=REPO)
        done[name] = f"started, log {paths.logfile(name)}"
    return done


def stop_services(paths: local_stack.StackPaths, names: tuple[str, ...] = SERVICES) -> dict[str, str]:
    """Stop the named services by pid (SIGTERM, then SIGKILL after 30 s)."""
    return {name: ("stopped" if local_stack.stop_process(paths.pidfile(name), grace=30) else "was not running")
            for name in names}


def _http_ok(url: str, **kw: Any) -> bool:
    try:
        return httpx.get(url, timeout=2.0, **kw).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(paths: local_stack.StackPaths, env: dict[str, str]) -> None:
    """Wait until the collector is ready (Kafka reachable) and the sink's read API answers."""
    key = env["TRACKFLOW_READ_KEY"]
    cport, rport = env["TRACKFLOW_COLLECTOR_PORT"], env["TRACKFLOW_READ_API_PORT"]
    checks: dict[str, Callable[[], bool]] = {
        "collector": lambda: _http_ok(f"http://127.0.0.1:{cport}/readyz"),
        "sink": lambda: _http_ok(f"http://127.0.0.1:{rport}/api/apps", headers={"X-Read-Key": key}),
    }
    for name, check in checks.items():
        def alive_and(check: Callable[[], bool] = check, name: str = name) -> bool:
            if local_stack.read_pid(paths.pidfile(name)) is None:
                raise click.ClickException(f"{name} exited; see {paths.logfile(name)}")
            return check()

        local_stack.wait_until(alive_and, timeout=120, what="ready", service=name)


def reset_data(core: CoreSettings) -> None:
    """Forget the demo's previous run: topics, embedded ClickHouse, worker state, Redis keys."""
    from confluent_kafka.admin import AdminClient

    kafka = KafkaSettings()
    admin = AdminClient(kafka.client_config())
    names = local_stack.delete_topics(admin, kafka.topic_prefix)
    if names:
        local_stack.wait_until(
            lambda: not (set(names) & set(admin.list_topics(timeout=10).topics)),
            timeout=60, what="topic deletion", service="kafka")
    for sub in ("chdb", "pipeline"):
        shutil.rmtree(core.home / sub, ignore_errors=True)
    import redis

    from sinks.redis import delete_prefixed

    rs = RedisSettings()
    delete_prefixed(redis.Redis.from_url(rs.redis_url.get_secret_value()), rs.redis_key_prefix)
    local_stack.ensure_topics(kafka)


#: the demo's apps: (kind, app_id, reporting currency); X = 7 days so that 14 days of history
#: contain re-engaged users (X = 30, the default, needs more than a month of history)
DEMO_APPS = (("game", "game", "EUR"), ("shop", "shop", "GBP"))
DEMO_RETENTION_WINDOW_DAYS = 7


def ensure_demo_apps(core: CoreSettings, keys_file: Path) -> dict[str, dict[str, str]]:
    """Register the demo's apps (or issue them new keys) and write their keys to ``keys_file``."""
    from trackflow.apps import AppRegistry

    reg = AppRegistry(core.apps_path)
    keys: dict[str, dict[str, str]] = {}
    for kind, app_id, currency in DEMO_APPS:
        if reg.get(app_id) is None:
            app, wkey, rkey = reg.add(kind.capitalize(), app_id=app_id, currency=currency,
                                      retention_window_days=DEMO_RETENTION_WINDOW_DAYS)
        else:
            reg.update(app_id, reporting_currency=currency, retention_window_days=DEMO_RETENTION_WINDOW_DAYS)
            app, wkey, rkey = reg.rotate_keys(app_id)
        keys[kind] = {"app_id": app.app_id, "write_key": wkey, "read_key": rkey}
    keys_file.write_bytes(orjson.dumps(keys, option=orjson.OPT_INDENT_2))
    keys_file.chmod(0o600)
    return keys


def run_cli(args: list[str], env: dict[str, str]) -> str:
    import subprocess

    res = subprocess.run([*_trackflow(), *args], capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        raise click.ClickException(f"trackflow {' '.join(args[:2])} failed:\n{res.stderr[-3000:]}")
    return res.stdout


class ReadApi:
    """A small client of the sink's read API."""

    def __init__(self, key: str, base: str = f"http://127.0.0.1:{READ_API_PORT}") -> None:
        self.client = httpx.Client(base_url=base, headers={"X-Read-Key": key}, timeout=60.0)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ReadApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sql(self, query: str) -> list[dict[str, Any]]:
        r = self.client.post("/api/sql", json={"sql": query})
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["rows"]
        return rows

    def metric(self, name: str, app: str, start: str, end: str, **params: Any) -> list[dict[str, Any]]:
        r = self.client.get(f"/api/metrics/{name}", params={"app": app, "from": start, "to": end, **params})
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["rows"]
        return rows


def wait_visible(api: ReadApi, expected_events: int, expected_invalid: int,
                 paths: local_stack.StackPaths, timeout: float = 600) -> float:
    """Poll ClickHouse until every expected event and dead letter is stored. Returns seconds waited."""
    t0 = time.monotonic()
    last = (-1, -1)
    while time.monotonic() - t0 < timeout:
        for name in SERVICES:
            if local_stack.read_pid(paths.pidfile(name)) is None:
                raise click.ClickException(f"{name} exited; see {paths.logfile(name)}")
        try:
            ev = api.sql("SELECT uniqExact(message_id) AS n FROM events")[0]["n"]
            inv = api.sql("SELECT count() AS n FROM invalid_events")[0]["n"]
        except httpx.HTTPError:
            ev, inv = last
        if (ev, inv) != last:
            click.echo(f"    visible: {ev}/{expected_events} events, {inv}/{expected_invalid} dead letters",
                       err=True)
            last = (ev, inv)
        if ev >= expected_events and inv >= expected_invalid:
            return time.monotonic() - t0
        time.sleep(1.0)
    raise click.ClickException(f"timed out: {last[0]}/{expected_events} events and "
                               f"{last[1]}/{expected_invalid} dead letters visible after {timeout:.0f}s")


def _table(title: str, rows: list[dict[str, Any]], limit: int = 20) -> None:
    click.echo(f"\n{title}")
    if not rows:
        click.echo("  (no rows)")
        return
    cols = list(rows[0])
    shown = rows[:limit]
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in shown)) for c in cols}
    click.echo("  " + "  ".join(c.ljust(widths[c]) for c in cols))
    for r in shown:
        click.echo("  " + "  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))
    if len(rows) > limit:
        click.echo(f"  ... {len(rows) - limit} more rows")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, (list, dict)):
        return orjson.dumps(v).decode()
    return str(v)


REPORT_METRICS = (
    ("DAU / WAU / MAU (users)", "active-series"),
    ("new, retained, re-engaged users", "user-types"),
    ("retention (day-N by cohort)", "retention"),
    ("sessions", "sessions"),
    ("funnel", "funnel"),
    ("revenue (USD and reporting currency)", "revenue"),
    ("revenue by currency", "revenue-by-currency"),
    ("errors", "errors"),
    ("attribution", "attribution"),
)


def print_report(api: ReadApi, sim: dict[str, Any], keys: dict[str, Any], waited: float) -> None:
    """The summary: every metric of both apps, checked against what simulate sent."""
    exp = sim["expected"]
    start, end = exp["start"], exp["end"]
    click.secho("\n================ trackflow demo report ================", bold=True)
    click.echo(f"simulated {exp['users']} users over {exp['days']} days ({start} .. {end}), seed {exp['seed']}")
    click.echo(f"sent {exp['sent']} events; expected stored {exp['expected_stored']} after removing "
               f"{sum(exp['duplicates'].values())} duplicates and {sum(exp['invalid'].values())} invalid")
    stored = api.sql("SELECT app_id, uniqExact(message_id) AS events, count() AS rows_without_final "
                     "FROM events GROUP BY app_id ORDER BY app_id")
    _table("stored events (ClickHouse)", stored)
    dl = api.sql("SELECT reason, count() AS n FROM invalid_events GROUP BY reason ORDER BY reason")
    _table("dead letters by reason (expected: " + ", ".join(f"{k} {v}" for k, v in
                                                            sorted(exp["invalid"].items())) + ")", dl)
    total = sum(r["events"] for r in stored)
    match = "MATCHES" if total == exp["expected_stored"] else "DIFFERS FROM"
    click.echo(f"\n{total} events stored {match} the {exp['expected_stored']} simulate expected")
    for kind, app_id in ((k, v["app_id"]) for k, v in keys.items()):
        click.secho(f"\n---------------- {kind} ({app_id}) ----------------", bold=True)
        steps = ",".join(f["step"] for f in exp["apps"].get(kind, {}).get("funnel", []))
        for title, name in REPORT_METRICS:
            try:
                rows = api.metric(name, app_id, start, end, **({"steps": steps} if name == "funnel" else {}))
            except httpx.HTTPStatusError as exc:
                click.echo(f"\n{title}: {exc.response.status_code} {exc.response.text[:200]}")
                continue
            _table(title, rows, limit=16)
    lat = api.sql(
        "SELECT quantile(0.5)(l) AS p50_s, quantile(0.95)(l) AS p95_s, quantile(0.99)(l) AS p99_s, "
        "max(l) AS max_s FROM (SELECT dateDiff('millisecond', received_at, inserted_at) / 1000 AS l "
        "FROM events)"
    )
    _table("end-to-end latency, collector receipt -> stored in ClickHouse (seconds)", lat)
    click.echo(f"\nall accepted events visible {waited:.1f}s after the simulation finished")


@click.group("demo", invoke_without_command=True)
@click.option("--users", default=200, show_default=True, help="Simulated users (half game, half shop).")
@click.option("--days", default=14, show_default=True, help="Days of backdated history.")
@click.option("--seed", default=42, show_default=True, help="Simulation seed.")
@click.option("--keep-data", is_flag=True, help="Do not reset the previous demo's data first.")
@click.pass_context
def demo(ctx: click.Context, users: int, days: int, seed: int, keep_data: bool) -> None:
    """Run the whole pipeline locally with realistic traffic, print a report, leave it running."""
    if ctx.invoked_subcommand is not None:
        return
    core = CoreSettings()
    paths = local_stack.StackPaths.from_settings(core)
    _say("local stack")
    for name, what in local_stack.up(core).items():
        click.echo(f"    {name:<11} {what}", err=True)
    env = service_env(core)
    if not keep_data:
        _say("reset the previous demo's data")
        stop_services(paths)
        reset_data(core)
    _say("FX rates fixture -> rates topic")
    fx = orjson.loads(run_cli(["fx", "load", str(FX_FIXTURE)], env))
    click.echo(f"    {fx['published_hours']} hourly rate sets, {fx['first']} .. {fx['last']}, "
               f"{len(fx['currencies'])} currencies", err=True)
    _say("start collector, worker, sink")
    for name, what in start_services(paths, env).items():
        click.echo(f"    {name:<11} {what}", err=True)
    key = env["TRACKFLOW_READ_KEY"]
    wait_healthy(paths, env)
    _say(f"simulate {users} users x {days} days (seed {seed})")
    keys_file = demo_dir(core) / "keys.json"
    out = demo_dir(core) / "simulate.json"
    keys = ensure_demo_apps(core, keys_file)
    click.echo(run_cli(["simulate", "--collector", f"http://127.0.0.1:{COLLECTOR_PORT}", "--users", str(users),
                     "--days", str(days), "--seed", str(seed), "--keys-file", str(keys_file),
                     "--out", str(out)], env))
    sim = orjson.loads(out.read_bytes())
    _say("wait until every accepted event is visible in ClickHouse")
    exp = sim["expected"]
    with ReadApi(key) as api:
        waited = wait_visible(api, exp["expected_stored"], sum(exp["invalid"].values()), paths)
        print_report(api, sim, keys, waited)
    game_steps = ",".join(f["step"] for f in exp["apps"].get("game", {}).get("funnel", []))
    url = (f"http://127.0.0.1:{READ_API_PORT}/?key={key}&app=game&from={exp['start']}&to={exp['end']}"
           f"&steps={game_steps}")
    click.secho(f"\nDashboard: {url}", bold=True)
    click.echo(f"Reports:   .venv/bin/trackflow report dau --app game --from {exp['start']} --to {exp['end']}")
    click.echo("Stop:      make stop")


@demo.command("stop")
def stop() -> None:
    """Stop the demo's collector, worker and sink by pid."""
    paths = local_stack.StackPaths.from_settings(CoreSettings())
    for name, what in stop_services(paths).items():
        click.echo(f"{name:<11} {what}")


commands = [demo]
