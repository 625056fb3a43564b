"""The app registry: hashed keys, settings, and live reload across processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from trackflow.apps import AppRegistry, hash_key
from trackflow.exceptions import AppRegistryError


def test_add_stores_only_the_hash_of_the_key(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    app, wkey, rkey = reg.add("My Game", currency="gbp")
    text = (tmp_path / "apps.json").read_text()
    assert wkey not in text and rkey not in text
    assert hash_key(wkey) in text
    assert app.app_id == "my-game" and app.reporting_currency == "GBP"
    assert app.session_timeout_s == 20 and app.retention_window_days == 30
    assert oct(os.stat(tmp_path / "apps.json").st_mode & 0o777) == "0o600"


def test_lookup_by_write_key_and_read_key(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    app, wkey, rkey = reg.add("Shop")
    assert reg.by_write_key(wkey) == app
    assert reg.by_write_key(wkey + "x") is None
    assert reg.by_write_key(rkey) is None
    assert reg.by_read_key(rkey) == app


def test_other_process_changes_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "apps.json"
    running = AppRegistry(path, refresh_interval=0.05)
    assert running.apps() == []
    _, wkey, _ = AppRegistry(path).add("Late App")
    time.sleep(0.1)
    assert running.by_write_key(wkey) is not None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"currency": "XXZ"}, "currency"), ({"session_timeout_s": 0}, "session_timeout_s"),
     ({"retention_window_days": -1}, "retention_window_days")],
)
def test_bad_settings_name_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(AppRegistryError) as err:
        AppRegistry(tmp_path / "apps.json").add("X", **kwargs)
    assert err.value.field == field


def test_duplicate_app_and_corrupt_file(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    reg.add("Dup")
    with pytest.raises(AppRegistryError, match="already exists"):
        reg.add("Dup")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AppRegistryError, match="not valid JSON"):
        AppRegistry(tmp_path / "bad.json")


def test_update_changes_settings_and_keeps_keys(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    app, wkey, _ = reg.add("Upd")
    reg.update(app.app_id, reporting_currency="eur", session_timeout_s=45)
    data = orjson.loads((tmp_path / "apps.json").read_bytes())
    assert data["apps"][0]["reporting_currency"] == "EUR"
    assert reg.by_write_key(wkey).session_timeout_s == 45  # type: ignore[union-attr]


def test_rotate_keys_revokes_the_old_ones(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    app, old_w, old_r = reg.add("Rot")
    assert reg.by_write_key(old_w) == app  # remembered as valid from here on
    _, new_w, new_r = reg.rotate_keys(app.app_id)
    assert reg.by_write_key(old_w) is None and reg.by_read_key(old_r) is None
    assert reg.by_write_key(new_w).app_id == app.app_id  # type: ignore[union-attr]
    assert reg.by_read_key(new_r).app_id == app.app_id  # type: ignore[union-attr]


def test_a_key_rotated_by_another_process_stops_working_at_the_next_reload(tmp_path: Path) -> None:
    path = tmp_path / "apps.json"
    app, old_w, _ = AppRegistry(path).add("Remote")
    running = AppRegistry(path, refresh_interval=0.05)
    assert running.by_write_key(old_w) == app
    assert running.by_write_key(old_w) == app  # from the cache of valid keys
    _, new_w, _ = AppRegistry(path).rotate_keys(app.app_id)
    time.sleep(0.1)
    assert running.by_write_key(old_w) is None
    assert running.by_write_key(new_w).app_id == app.app_id  # type: ignore[union-attr]


def test_unknown_keys_are_not_remembered(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    reg.add("Shop")
    for i in range(100):
        assert reg.by_write_key(f"tfw_guess{i}") is None
    assert reg._by_key == {}
