"""``trackflow apps add|list|show``: manage the app registry."""

from __future__ import annotations

import click

from trackflow.apps import open_registry
from trackflow.cli import echo_json


@click.group("apps")
def apps() -> None:
    """Manage the apps allowed to send events."""


@apps.command("add")
@click.argument("name")
@click.option("--app-id", default=None, help="Explicit app id (default: a slug of NAME).")
@click.option("--currency", default="USD", show_default=True, help="Reporting currency (ISO 4217).")
@click.option("--session-timeout", "session_timeout_s", default=20, show_default=True, type=int,
              help="Inactivity timeout in seconds for events without a client session id.")
@click.option("--retention-window", "retention_window_days", default=30, show_default=True, type=int,
              help="X days for retained / re-engaged users.")
@click.option("--data-retention-months", default=24, show_default=True, type=int,
              help="How long rows are kept in ClickHouse.")
@click.option("--write-key", default=None, help="Use this write key instead of generating one.")
@click.option("--json", "as_json", is_flag=True, help='Print {"app_id": ..., "write_key": ...}.')
def add(name: str, app_id: str | None, currency: str, session_timeout_s: int,
        retention_window_days: int, data_retention_months: int, write_key: str | None,
        as_json: bool) -> None:
    """Create app NAME and print its write key (shown only this once)."""
    app, wkey, rkey = open_registry().add(
        name,
        app_id=app_id,
        currency=currency,
        session_timeout_s=session_timeout_s,
        retention_window_days=retention_window_days,
        data_retention_months=data_retention_months,
        write_key=write_key,
    )
    if as_json:
        echo_json({"app_id": app.app_id, "write_key": wkey, "read_key": rkey})
        return
    click.echo(f"app_id:    {app.app_id}")
    click.echo(f"write_key: {wkey}")
    click.echo(f"read_key:  {rkey}")
    click.echo("Store these keys now: only their hashes are kept.")


@apps.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json: bool) -> None:
    """List the registered apps (no keys)."""
    rows = [a.public() for a in open_registry().apps()]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no apps yet: trackflow apps add NAME")
        return
    click.echo(f"{'APP_ID':<24} {'NAME':<24} {'CURRENCY':<8} {'TIMEOUT':>7} {'X':>4}")
    for r in rows:
        click.echo(f"{r['app_id']:<24} {r['name']:<24} {r['reporting_currency']:<8} "
                   f"{r['session_timeout_s']:>7} {r['retention_window_days']:>4}")


@apps.command("rotate-keys")
@click.argument("app_id")
@click.option("--json", "as_json", is_flag=True, help='Print {"app_id", "write_key", "read_key"}.')
def rotate_keys(app_id: str, as_json: bool) -> None:
    """Issue new write and read keys for APP_ID (the old ones stop working within a second)."""
    app, wkey, rkey = open_registry().rotate_keys(app_id)
    if as_json:
        echo_json({"app_id": app.app_id, "write_key": wkey, "read_key": rkey})
        return
    click.echo(f"app_id:    {app.app_id}")
    click.echo(f"write_key: {wkey}")
    click.echo(f"read_key:  {rkey}")


commands = [apps]
