"""``trackflow sink``, ``trackflow db migrate``, ``trackflow report`` and ``trackflow sql``."""

from __future__ import annotations

import logging
from typing import Any

import click
import orjson

import sinks.settings  # noqa: F401  (registers the "sink" section of `trackflow config`)
from trackflow.cli import echo_json


@click.command("sink")
@click.option("--no-api", is_flag=True, help="Do not serve the read API (server mode with a separate dashboard).")
@click.option("--port", type=int, default=None, help="Read API port (default TRACKFLOW_READ_API_PORT, 8081; 0: any).")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def sink_cmd(no_api: bool, port: int | None, verbose: bool) -> None:
    """Consume the enriched, sessions, invalid and FX topics into ClickHouse and Redis.

    Applies missing migrations first. In embedded mode this process owns the ClickHouse data, so it
    also serves the read API used by `trackflow report`, `trackflow sql` and the dashboard.
    """
    from sinks.service import serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(with_api=not no_api, port=port)


@click.group("db")
def db() -> None:
    """ClickHouse schema management."""


@db.command("migrate")
@click.option("--json", "as_json", is_flag=True, help="Print the applied migrations as JSON.")
def migrate_cmd(as_json: bool) -> None:
    """Apply the missing DDL migrations (single node, or clustered with TRACKFLOW_CLICKHOUSE_CLUSTER).

    In embedded mode, `trackflow sink` migrates on start; this command then only works while no sink
    owns the data directory.
    """
    from sinks.service import run_migrations
    from sinks.settings import SinkSettings
    from trackflow.config import ClickHouseSettings, CoreSettings

    applied = run_migrations(ClickHouseSettings(), CoreSettings(), SinkSettings())
    if as_json:
        echo_json(applied)
        return
    if not applied:
        click.echo("schema is up to date")
    for m in applied:
        click.echo(f"applied {m['version']:03d}_{m['name']} ({m['statements']} statements)")


METRIC_HELP = ("dau, wau, mau, new-users, retained, reengaged, retention, sessions, funnel, errors, revenue, "
               "attribution, active-series, user-types, session-histogram, dead-letters, revenue-by-currency")


@click.command("report")
@click.argument("metric")
@click.option("--app", required=True, help="App id.")
@click.option("--from", "date_from", required=True, help="First day, YYYY-MM-DD (UTC).")
@click.option("--to", "date_to", required=True, help="Last day, YYYY-MM-DD (inclusive).")
@click.option("--by", type=click.Choice(["users", "devices"]), default="users", show_default=True)
@click.option("--steps", default=None, help="funnel: comma-separated event or screen names.")
@click.option("--window", type=int, default=None, help="funnel: seconds to complete the steps (86400).")
@click.option("--window-days", type=int, default=None, help="retained/reengaged: X days (app setting).")
@click.option("--max-day", type=int, default=None, help="retention: largest day N (7).")
@click.option("--group", type=click.Choice(["day", "product"]), default=None, help="revenue: grouping.")
@click.option("--within", type=int, default=None, help="attribution: purchase window in seconds (86400).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of row objects.")
def report_cmd(metric: str, app: str, date_from: str, date_to: str, by: str, steps: str | None,
               window: int | None, window_days: int | None, max_day: int | None, group: str | None,
               within: int | None, as_json: bool) -> None:
    """Print METRIC for an app and a date range, from the running sink's read API or ClickHouse.

    METRIC is one of: dau, wau, mau, new-users, retained, reengaged, retention, sessions, funnel,
    errors, revenue, attribution, active-series, user-types, session-histogram, dead-letters,
    revenue-by-currency.
    """
    from sinks.reports import report, table

    params: dict[str, Any] = {"steps": steps, "window": window, "window_days": window_days,
                              "max_day": max_day, "group": group, "within": within}
    rows = report(metric, app, date_from, date_to, by, params)
    if as_json:
        echo_json(rows)
    else:
        click.echo(table(rows))


@click.command("sql")
@click.argument("statement")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of row objects.")
def sql_cmd(statement: str, as_json: bool) -> None:
    """Run one read-only SQL STATEMENT against the trackflow database and print the rows."""
    from sinks.reports import sql, table

    result = sql(statement)
    if as_json:
        click.echo(orjson.dumps(result["rows"], default=str, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(table(result["rows"], result["columns"]))


@click.command("dashboard")
@click.option("--host", default=None, help="Interface (default TRACKFLOW_READ_API_HOST).")
@click.option("--port", type=int, default=None, help="Port (default TRACKFLOW_READ_API_PORT, 8081).")
def dashboard_cmd(host: str | None, port: int | None) -> None:
    """Serve the dashboard and the read API against a ClickHouse server (TRACKFLOW_CLICKHOUSE_URL).

    In embedded mode the sink serves them itself (only one process may open the data directory),
    so this command refuses to run there.
    """
    import uvicorn

    from sinks.readapi import create_app_from_settings
    from sinks.settings import SinkSettings
    from trackflow.config import ClickHouseSettings

    if ClickHouseSettings().is_embedded():
        raise click.ClickException(
            "TRACKFLOW_CLICKHOUSE_URL is not set: in embedded mode `trackflow sink` serves the dashboard"
        )
    s = SinkSettings()
    uvicorn.run(create_app_from_settings(), host=host or s.read_api_host,
                port=s.read_api_port if port is None else port, log_level="warning", access_log=False)


commands: list[click.Command] = [sink_cmd, db, report_cmd, sql_cmd, dashboard_cmd]
