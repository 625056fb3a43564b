"""The state tables' RocksDB memory budget: settings -> Faust's RocksDBOptions -> an open database."""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.stores.rocksdb import RocksDBOptions
from pydantic import ValidationError

from pipeline.settings import PipelineSettings

MB = 1024 * 1024


def test_defaults_bound_each_database_well_below_fausts() -> None:
    opts = RocksDBOptions(use_rocksdict=True, **PipelineSettings().rocksdb_options())
    assert (opts.write_buffer_size, opts.max_write_buffer_number, opts.block_cache_size) == (
        8 * MB,
        2,
        16 * MB,
    )
    faust = RocksDBOptions(use_rocksdict=True)
    budget = opts.write_buffer_size * opts.max_write_buffer_number + opts.block_cache_size
    assert budget * 60 < faust.write_buffer_size * faust.max_write_buffer_number + faust.block_cache_size


def test_the_environment_sets_the_budget_and_a_database_opens_with_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACKFLOW_PIPELINE_ROCKSDB_WRITE_BUFFER_MB", "4")
    monkeypatch.setenv("TRACKFLOW_PIPELINE_ROCKSDB_BLOCK_CACHE_MB", "2")
    opts = RocksDBOptions(use_rocksdict=True, **PipelineSettings().rocksdb_options())
    assert (opts.write_buffer_size, opts.block_cache_size) == (4 * MB, 2 * MB)
    db = opts.open(tmp_path / "db")
    try:
        for i in range(5000):
            db[f"k{i}".encode()] = b"v" * 200
        assert db[b"k4999"] == b"v" * 200
    finally:
        db.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [("ROCKSDB_WRITE_BUFFER_MB", "0"), ("ROCKSDB_MAX_WRITE_BUFFERS", "1"), ("ROCKSDB_BLOCK_CACHE_MB", "x")],
)
def test_a_bad_budget_names_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"TRACKFLOW_PIPELINE_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        PipelineSettings()
