"""Keys at rest and in comparison, and the privacy options of ``trackflow apps set`` (no services)."""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trackflow import apps as apps_mod
from trackflow.apps import AppRegistry, hash_key


def test_keys_are_stored_only_as_digests(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    app, wkey, rkey = reg.add("Keys", app_id="keys")
    text = (tmp_path / "apps.json").read_text()
    assert wkey not in text and rkey not in text
    assert hash_key(wkey) in text and hash_key(rkey) in text
    assert oct((tmp_path / "apps.json").stat().st_mode & 0o777) == "0o600"
    assert reg.by_write_key(wkey) == app and reg.by_read_key(rkey) == app
    assert reg.by_write_key(rkey) is None and reg.by_read_key(wkey) is None  # not interchangeable
    assert reg.by_write_key(wkey[:-1]) is None and reg.by_write_key("") is None
    assert "write_key_hash" not in app.public() and "read_key_hash" not in app.public()


def test_key_lookups_compare_digests_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    _, wkey, rkey = reg.add("CT", app_id="ct")
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apps_mod.hmac, "compare_digest", spy)  # type: ignore[attr-defined]
    assert reg.by_write_key(wkey) is not None and reg.by_read_key(rkey) is not None
    assert calls == [(hash_key(wkey), hash_key(wkey)), (hash_key(rkey), hash_key(rkey))]


def test_rotated_keys_stop_working(tmp_path: Path) -> None:
    reg = AppRegistry(tmp_path / "apps.json")
    _, wkey, rkey = reg.add("Rot", app_id="rot")
    _, wkey2, rkey2 = reg.rotate_keys("rot")
    assert reg.by_write_key(wkey) is None and reg.by_read_key(rkey) is None
    assert reg.by_write_key(wkey2) is not None and reg.by_read_key(rkey2) is not None


def _cli(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRACKFLOW_")}
    full.update({"TRACKFLOW_HOME": str(home), **env})
    return subprocess.run(
        [sys.executable, "-m", "trackflow", *args], capture_output=True, text=True, env=full, timeout=60
    )


def test_apps_set_privacy_options(tmp_path: Path) -> None:
    assert _cli(["apps", "add", "Priv", "--app-id", "priv"], tmp_path).returncode == 0
    res = _cli(
        [
            "apps",
            "set",
            "priv",
            "--mask-ip",
            "--hash-user-ids",
            "--drop-property",
            "email",
            "--drop-property",
            "phone",
            "--json",
        ],
        tmp_path,
        TRACKFLOW_PRIVACY_USER_ID_SALT="pepper",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (
        out["mask_ip"] is True
        and out["hash_user_ids"] is True
        and out["drop_properties"] == ["email", "phone"]
    )
    assert "pepper" not in res.stdout + res.stderr
    app = AppRegistry(tmp_path / "apps.json").require("priv")
    assert app.mask_ip and app.hash_user_ids and app.drop_properties == ("email", "phone")
    # without a salt here, the command warns but records the option
    warn = _cli(["apps", "set", "priv", "--no-mask-ip", "--keep-all-properties", "--hash-user-ids"], tmp_path)
    assert warn.returncode == 0 and "TRACKFLOW_PRIVACY_USER_ID_SALT" in warn.stderr
    app = AppRegistry(tmp_path / "apps.json").require("priv")
    assert not app.mask_ip and app.drop_properties == ()
    # nothing to change, or an unknown app: clear errors
    assert _cli(["apps", "set", "priv"], tmp_path).returncode == 2
    bad = _cli(["apps", "set", "nope", "--mask-ip"], tmp_path)
    assert bad.returncode == 2 and "unknown app 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_config_masks_the_salt_and_the_read_key(tmp_path: Path) -> None:
    res = _cli(
        ["config", "--json"],
        tmp_path,
        TRACKFLOW_PRIVACY_USER_ID_SALT="pepper-123",
        TRACKFLOW_READ_KEY="tfr_admin_s3cret",
        TRACKFLOW_REDIS_URL="redis://:pw-s3cret@127.0.0.1:1/0",
    )
    assert res.returncode == 0, res.stderr
    for secret in ("pepper-123", "tfr_admin_s3cret", "pw-s3cret"):
        assert secret not in res.stdout + res.stderr
    cfg = json.loads(res.stdout)
    assert cfg["privacy"]["user_id_salt"] not in (None, "")
