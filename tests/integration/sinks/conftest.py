"""Fixtures of the sink tests: the run's embedded (or server) ClickHouse, migrated, and a dataset.

The dataset in ``sink_dataset.py`` is small and hand-built; every metric test
compares against numbers worked out by hand in that module's docstring.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ch_client(tf_env: dict[str, str]) -> Iterator[Any]:
    """A client on the run's migrated ClickHouse database (embedded chdb unless a URL is set)."""
    from sinks.clickhouse import connect
    from sinks.migrate import migrate
    from trackflow.config import ClickHouseSettings

    ch = ClickHouseSettings()
    admin = connect(ch, database=None)
    migrate(admin, database=ch.clickhouse_database)
    admin.close()
    client = connect(ch)
    yield client
    client.close()


@pytest.fixture(scope="session")
def metrics_dataset(ch_client: Any) -> str:
    """Writes the hand-built dataset through the ClickHouse sink; returns its app id."""
    import sink_dataset as dataset

    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink(ch_client, group="test-metrics")
    sink.write(dataset.batches())
    return dataset.APP
