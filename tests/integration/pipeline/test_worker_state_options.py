"""The worker's state tables open their RocksDB databases with the configured memory budget."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.settings import PipelineSettings
from pipeline.worker import build_app
from trackflow.config import KafkaSettings

MB = 1024 * 1024


@pytest.fixture
def prefix(kafka_admin: Any) -> Iterator[str]:
    """A topic prefix of its own (not the run's: build_app initialises its group's offsets)."""
    pfx = f"opt{uuid.uuid4().hex[:6]}."
    yield pfx
    names = [t for t in kafka_admin.list_topics(timeout=10).topics if t.startswith(pfx)]
    if names:
        for f in kafka_admin.delete_topics(names).values():
            f.result()


def test_both_state_tables_use_the_configured_rocksdb_budget(
    tf_env: dict[str, str], app: Any, prefix: str
) -> None:
    settings = PipelineSettings(
        rocksdb_write_buffer_mb=4, rocksdb_max_write_buffers=3, rocksdb_block_cache_mb=2
    )
    faust_app = build_app(kafka=KafkaSettings(topic_prefix=prefix), settings=settings, partitions=2)
    for name in ("devices", "seen"):
        store = faust_app.tables[name].data
        opts = store.rocksdb_options
        assert (opts.write_buffer_size, opts.max_write_buffer_number, opts.block_cache_size) == (
            4 * MB,
            3,
            2 * MB,
        )
        db = store._db_for_partition(0)
        db[b"k"] = b"v"
        assert db[b"k"] == b"v"
        assert any(store.path.iterdir())  # the database is on disk under the worker's data folder
