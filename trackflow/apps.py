"""The app registry: which apps may send events, and their per-app settings.

The registry is one JSON file (``<TRACKFLOW_HOME>/apps.json`` by default). Write keys are never
stored: only their SHA-256 digest, compared in constant time. A key is shown once, when
``trackflow apps add`` creates it.

Running services hold an :class:`AppRegistry` and call :meth:`AppRegistry.refresh` (cheap: one
``stat`` at most once a second), so edits made by ``trackflow apps add`` are picked up within a
few seconds without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from trackflow.exceptions import AppRegistryError

WRITE_KEY_PREFIX = "tfw_"
READ_KEY_PREFIX = "tfr_"
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def hash_key(key: str) -> str:
    """SHA-256 hex digest of a key; keys are random 192-bit tokens, so no slow KDF is needed."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class App:
    """One app and its settings.

    Parameters:
        app_id: stable id, used in topics keys, tables and metrics.
        name: human name.
        write_key_hash: SHA-256 of the write key.
        reporting_currency: ISO 4217 code that revenue is also converted to.
        session_timeout_s: inactivity timeout for events without a client session id.
        client_session_idle_s: idle time after which a client-declared session closes.
        retention_window_days: X in "retained" / "re-engaged" metrics.
        data_retention_months: TTL of the app's rows in ClickHouse.
        mask_ip: drop the last octet (IPv4) / last 80 bits (IPv6) of client IPs.
        hash_user_ids: replace user ids by a salted hash.
        drop_properties: property keys removed before storage.
        read_key_hash: SHA-256 of the app's read key (read API and dashboard), if any.
    """

    app_id: str
    name: str
    write_key_hash: str
    reporting_currency: str = "USD"
    session_timeout_s: int = 20
    client_session_idle_s: int = 300
    retention_window_days: int = 30
    data_retention_months: int = 24
    mask_ip: bool = False
    hash_user_ids: bool = False
    drop_properties: tuple[str, ...] = ()
    read_key_hash: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["drop_properties"] = list(self.drop_properties)
        return d

    def public(self) -> dict[str, Any]:
        """The app without key digests, for listings."""
        d = self.to_json()
        d.pop("write_key_hash")
        d.pop("read_key_hash")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> App:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["drop_properties"] = tuple(kwargs.get("drop_properties", ()))
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise AppRegistryError(f"invalid app entry {d.get('app_id')!r}: {exc}") from exc


def _validate_currency(code: str) -> str:
    import pycountry

    code = code.upper()
    if pycountry.currencies.get(alpha_3=code) is None:
        raise AppRegistryError(f"unknown ISO 4217 currency {code!r}", field="currency")
    return code


class AppRegistry:
    """The registry file, loaded and kept fresh.

    Parameters:
        path: the JSON file. It is created on the first :meth:`add`.
        refresh_interval: seconds between ``stat`` checks for changes made by other processes.
    """

    def __init__(self, path: Path, *, refresh_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._checked = 0.0
        self._apps: dict[str, App] = {}
        self._by_hash: dict[str, App] = {}
        self._by_read_hash: dict[str, App] = {}
        #: write keys seen valid -> their app (cleared whenever the registry is reloaded)
        self._by_key: dict[str, App] = {}
        self._load()

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._set({}, None)
            return
        try:
            raw = orjson.loads(self.path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise AppRegistryError(f"app registry {self.path} is not valid JSON: {exc}") from exc
        apps = {a["app_id"]: App.from_json(a) for a in raw.get("apps", [])}
        self._set(apps, st.st_mtime_ns)

    def _set(self, apps: dict[str, App], mtime: float | None) -> None:
        self._apps = apps
        self._by_hash = {a.write_key_hash: a for a in apps.values()}
        self._by_read_hash = {a.read_key_hash: a for a in apps.values() if a.read_key_hash}
        self._by_key = {}
        self._mtime = mtime

    def refresh(self, *, force: bool = False) -> None:
        """Reload the file if another process changed it (checked at most every interval)."""
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_interval:
            return
        self._checked = now
        try:
            mtime: float | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            with self._lock:
                self._load()

    def apps(self) -> list[App]:
        self.refresh()
        return sorted(self._apps.values(), key=lambda a: a.app_id)

    def get(self, app_id: str) -> App | None:
        self.refresh()
        return self._apps.get(app_id)

    def require(self, app_id: str) -> App:
        app = self.get(app_id)
        if app is None:
            raise AppRegistryError(f"unknown app {app_id!r}", field="app_id")
        return app

    #: at most this many valid write keys are remembered (then the memory starts again)
    KEY_CACHE_MAX = 4096

    def by_write_key(self, key: str) -> App | None:
        """The app whose write key this is, or None. The digest comparison is constant-time.

        Keys found valid are remembered until the registry changes (a rotated or removed key
        stops working at the next reload, as before), so a client's every request does not hash
        its key again. Unknown keys are not remembered.
        """
        self.refresh()
        app = self._by_key.get(key)
        if app is not None:
            return app
        digest = hash_key(key)
        app = self._by_hash.get(digest)
        if app is None or not hmac.compare_digest(app.write_key_hash, digest):
            return None
        if len(self._by_key) >= self.KEY_CACHE_MAX:
            self._by_key = {}
        self._by_key[key] = app
        return app

    def by_read_key(self, key: str) -> App | None:
        """The app whose read key this is, or None."""
        self.refresh()
        digest = hash_key(key)
        app = self._by_read_hash.get(digest)
        if app is None or not hmac.compare_digest(app.read_key_hash or "", digest):
            return None
        return app

    # -- writing ---------------------------------------------------------------------------

    def _save(self, apps: dict[str, App]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "apps": [a.to_json() for a in sorted(apps.values(), key=lambda a: a.app_id)]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".apps-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._set(apps, self.path.stat().st_mtime_ns)

    def add(
        self,
        name: str,
        *,
        app_id: str | None = None,
        currency: str = "USD",
        session_timeout_s: int = 20,
        retention_window_days: int = 30,
        data_retention_months: int = 24,
        write_key: str | None = None,
        **options: Any,
    ) -> tuple[App, str, str]:
        """Create an app. Returns ``(app, write_key, read_key)``; the keys are not stored."""
        if not name.strip():
            raise AppRegistryError("app name must not be empty", field="name")
        if session_timeout_s <= 0:
            raise AppRegistryError("session timeout must be positive", field="session_timeout_s")
        if retention_window_days <= 0:
            raise AppRegistryError("retention window must be positive", field="retention_window_days")
        with self._lock:
            self._load()
            apps = dict(self._apps)
            aid = app_id or _SLUG_RE.sub("-", name.lower()).strip("-") or "app"
            if aid in apps:
                raise AppRegistryError(f"app {aid!r} already exists", field="app_id")
            wkey = write_key or WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
            rkey = READ_KEY_PREFIX + secrets.token_urlsafe(24)
            app = App(
                app_id=aid,
                name=name,
                write_key_hash=hash_key(wkey),
                read_key_hash=hash_key(rkey),
                reporting_currency=_validate_currency(currency),
                session_timeout_s=session_timeout_s,
                retention_window_days=retention_window_days,
                data_retention_months=data_retention_months,
                **options,
            )
            apps[aid] = app
            self._save(apps)
            return app, wkey, rkey

    def rotate_keys(self, app_id: str) -> tuple[App, str, str]:
        """Issue a new write key and read key for an app; the old ones stop working at once."""
        wkey = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
        rkey = READ_KEY_PREFIX + secrets.token_urlsafe(24)
        app = self.update(app_id, write_key_hash=hash_key(wkey), read_key_hash=hash_key(rkey))
        return app, wkey, rkey

    def update(self, app_id: str, **changes: Any) -> App:
        """Change an app's settings (not its keys)."""
        with self._lock:
            self._load()
            apps = dict(self._apps)
            if app_id not in apps:
                raise AppRegistryError(f"unknown app {app_id!r}", field="app_id")
            if "reporting_currency" in changes:
                changes["reporting_currency"] = _validate_currency(changes["reporting_currency"])
            apps[app_id] = replace(apps[app_id], **changes)
            self._save(apps)
            return apps[app_id]


def open_registry() -> AppRegistry:
    """The registry named by the effective configuration."""
    from trackflow.config import CoreSettings

    return AppRegistry(CoreSettings().apps_path)
