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


@apps.command("set")
@click.argument("app_id")
@click.option("--mask-ip/--no-mask-ip", default=None,
              help="Drop the last octet of IPv4 / last 80 bits of IPv6 client addresses (collector).")
@click.option("--hash-user-ids/--no-hash-user-ids", default=None,
              help="Store user ids as HMAC-SHA256 with TRACKFLOW_PRIVACY_USER_ID_SALT (pipeline).")
@click.option("--drop-property", "drop_properties", multiple=True, metavar="KEY",
              help="A property key removed before storage (repeatable; replaces the list).")
@click.option("--keep-all-properties", is_flag=True, help="Clear the list of dropped property keys.")
@click.option("--currency", default=None, help="Reporting currency (ISO 4217).")
@click.option("--session-timeout", "session_timeout_s", default=None, type=click.IntRange(min=1),
              help="Inactivity timeout in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the app as JSON.")
def set_(app_id: str, mask_ip: bool | None, hash_user_ids: bool | None, drop_properties: tuple[str, ...],
         keep_all_properties: bool, currency: str | None, session_timeout_s: int | None, as_json: bool) -> None:
    """Change APP_ID's privacy options and settings; running services pick them up within seconds."""
    changes: dict[str, object] = {}
    if mask_ip is not None:
        changes["mask_ip"] = mask_ip
    if hash_user_ids is not None:
        changes["hash_user_ids"] = hash_user_ids
    if keep_all_properties and drop_properties:
        raise click.UsageError("--drop-property and --keep-all-properties are exclusive")
    if drop_properties or keep_all_properties:
        changes["drop_properties"] = tuple(dict.fromkeys(k for k in drop_properties if k))
    if currency is not None:
        changes["reporting_currency"] = currency
    if session_timeout_s is not None:
        changes["session_timeout_s"] = session_timeout_s
    if not changes:
        raise click.UsageError("nothing to change (see --help)")
    if hash_user_ids:
        from pipeline.privacy import PrivacySettings

        if PrivacySettings().salt() is None:
            click.echo("warning: TRACKFLOW_PRIVACY_USER_ID_SALT is not set here; workers without it "
                       "dead-letter this app's events rather than store clear user ids", err=True)
    app = open_registry().update(app_id, **changes)
    if as_json:
        echo_json(app.public())
        return
    click.echo(f"{app.app_id}: mask_ip={app.mask_ip} hash_user_ids={app.hash_user_ids} "
               f"drop_properties={','.join(app.drop_properties) or '-'} currency={app.reporting_currency} "
               f"session_timeout={app.session_timeout_s}s")


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
