"""The ``trackflow`` command line: one entry point, one subcommand per job.

Subcommands live next to the code they drive; each module listed in :data:`COMMAND_MODULES`
exposes ``commands``, a list of click commands, imported only when the CLI starts.
"""

from __future__ import annotations

import importlib
import sys

import click
import orjson

from trackflow.config import effective_config
from trackflow.exceptions import TrackflowError

#: modules that contribute subcommands (each defines ``commands: list[click.Command]``)
COMMAND_MODULES: list[str] = [
    "trackflow.apps_cli",
    "trackflow.stack",
    "trackflow.demo",
    "collector.cli",
    "pipeline.cli",
    "trackflow.simulate_cli",
    "trackflow.replay",
    "sinks.cli",
    "trackflow.gdpr",
]


def echo_json(data: object) -> None:
    """Print data as indented JSON on stdout."""
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trackflow")
def cli() -> None:
    """trackflow: self-hosted event tracking for product analytics."""


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of KEY=value lines.")
def config_cmd(as_json: bool) -> None:
    """Print the effective configuration, secrets masked."""
    cfg = effective_config()
    if as_json:
        echo_json(cfg)
        return
    for component, values in cfg.items():
        click.echo(f"[{component}]")
        for k, v in values.items():
            click.echo(f"  {k} = {v}")


def _load_commands() -> None:
    for mod_name in COMMAND_MODULES:
        mod = importlib.import_module(mod_name)
        for cmd in mod.commands:
            cli.add_command(cmd)


def main() -> None:
    """Console entry point: run the CLI, turning trackflow errors into a clear message."""
    _load_commands()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TrackflowError as exc:
        field = getattr(exc, "field", None)
        prefix = f"error ({field}): " if field else "error: "
        click.echo(prefix + str(exc), err=True)
        sys.exit(2)
