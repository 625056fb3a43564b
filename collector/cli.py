"""``trackflow collector``: run the HTTP ingestion service on uvicorn (uvloop + httptools)."""

from __future__ import annotations

import os

import click

from collector.settings import CollectorSettings  # registers the settings with `trackflow config`


@click.command("collector")
@click.option(
    "--host", default=None, help="Interface to listen on (default TRACKFLOW_COLLECTOR_HOST, 0.0.0.0)."
)
@click.option("--port", type=int, default=None, help="Port (default TRACKFLOW_COLLECTOR_PORT, 8080).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def collector_cmd(host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Run the collector: Segment-compatible, app-tracking and AppsFlyer S2S ingestion into Kafka.

    Every accepted request is acknowledged only after Kafka confirmed each of its events.
    """
    import uvicorn

    s = CollectorSettings()
    host = host or s.host
    port = s.port if port is None else port
    workers = workers or s.workers
    # workers re-read the settings from the environment; pass the CLI overrides along
    os.environ["TRACKFLOW_COLLECTOR_HOST"] = host
    os.environ["TRACKFLOW_COLLECTOR_PORT"] = str(port)
    uvicorn.run(
        "collector.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        server_header=False,
        date_header=False,
        backlog=4096,
    )


commands: list[click.Command] = [collector_cmd]
