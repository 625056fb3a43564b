"""CLI of the pipeline: ``trackflow worker`` and ``trackflow fx load|fetch|run``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from pipeline.fx import hour_iso
from pipeline.settings import FxSettings


@click.command("worker")
@click.option(
    "--name", default=None, help="Worker name (local state folder); default TRACKFLOW_PIPELINE_WORKER_NAME."
)
@click.option("--loglevel", default="info", show_default=True, help="Faust log level.")
def worker_cmd(name: str | None, loglevel: str) -> None:
    """Run a pipeline worker (faust-streaming) until interrupted.

    Reads <prefix>events.raw; writes events.enriched, events.invalid and sessions. Start several to
    share the raw topic's partitions; give each a distinct --name if they share TRACKFLOW_HOME.
    """
    import os

    if name:
        os.environ["TRACKFLOW_PIPELINE_WORKER_NAME"] = name
    from pipeline.worker import run_worker

    run_worker(loglevel=loglevel)


@click.group("fx")
def fx_group() -> None:
    """Exchange rates: publish hourly rates (base USD) to the compacted <prefix>fx.rates topic."""


@fx_group.command("load")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--source", default="file", show_default=True, help="Value of FxRates.source.")
def fx_load(path: Path, source: str) -> None:
    """Publish rate history from PATH.

    PATH is a CSV file with the header ``hour,currency,rate`` (rate = units per 1 USD; ``hour`` is
    an ISO hour, or a date meaning all 24 hours of that day), an Open Exchange Rates JSON
    document, or a folder of them.
    """
    from pipeline.rates import load_path, publish
    from trackflow.cli import echo_json

    hours = load_path(path)
    n = publish(hours, source)
    first, last = (hour_iso(min(hours)), hour_iso(max(hours))) if hours else (None, None)
    echo_json(
        {
            "published_hours": n,
            "first": first,
            "last": last,
            "currencies": sorted({c for r in hours.values() for c in r}),
        }
    )


def _provider() -> object:
    from pipeline.rates import OxrProvider

    s = FxSettings()
    return OxrProvider(s.url, s.app_id.get_secret_value() if s.app_id else None, timeout_s=s.timeout_s)


@fx_group.command("fetch")
def fx_fetch() -> None:
    """Fetch the latest rates from TRACKFLOW_FX_URL (Open Exchange Rates-compatible, with
    TRACKFLOW_FX_APP_ID) and publish them for their hour."""
    from pipeline.rates import OxrProvider, fetch_and_publish
    from trackflow.cli import echo_json

    provider = _provider()
    assert isinstance(provider, OxrProvider)
    hour, rates = fetch_and_publish(provider)
    echo_json({"hour": hour_iso(hour), "currencies": len(rates), "source": provider.name})


@fx_group.command("run")
@click.option(
    "--interval",
    type=float,
    default=None,
    help="Seconds between fetches (default TRACKFLOW_FX_INTERVAL_S, 3600).",
)
@click.option("--count", type=int, default=0, help="Stop after this many fetches (0: forever).")
def fx_run(interval: float | None, count: int) -> None:
    """Fetch and publish rates now and then every interval (hourly) until interrupted."""
    from pipeline.exceptions import FxError
    from pipeline.rates import OxrProvider, fetch_and_publish

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("trackflow.fx")
    every = interval if interval is not None else FxSettings().interval_s
    provider = _provider()
    assert isinstance(provider, OxrProvider)
    done = 0
    while True:
        try:
            hour, rates = fetch_and_publish(provider)
            log.info("published %d rates for %s", len(rates), hour_iso(hour))
        except FxError as exc:
            log.error("fetch failed, will retry next interval: %s", exc)
        done += 1
        if count and done >= count:
            return
        time.sleep(every)


commands: list[click.Command] = [worker_cmd, fx_group]
