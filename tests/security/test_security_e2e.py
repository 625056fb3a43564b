"""Security on a running pipeline: privacy options, read keys, read-only SQL, GDPR delete, secrets.

One private pipeline (see ``conftest.py``) serves every test of this module, in file order; the
last test greps everything the services wrote for the secrets they ran with.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from secure_stack import SECRETS, SecureStack

from pipeline.privacy import hash_user_id

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
#: every value a caller could use to try its way into ClickHouse through the read API
INJECTIONS = [
    "x' OR 1=1 --",
    "x'); DROP TABLE events; --",
    "1; DROP TABLE events",
    "a' UNION ALL SELECT name FROM system.tables --",
    "\\'; TRUNCATE TABLE events; --",
]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": uuid.uuid4().hex, "timestamp": now_iso(), **fields}


def cli(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "trackflow", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


OUTPUTS: list[str] = []  # every CLI output and API answer of this module, checked for secrets at the end


def keep(text: str) -> str:
    OUTPUTS.append(text)
    return text


# -- privacy options ----------------------------------------------------------------------------


def test_privacy_options_apply_before_anything_is_stored(secure_stack: SecureStack) -> None:
    s = secure_stack
    priv = s.keys["private"]["app_id"]
    body = {
        "batch": [
            ev(
                "identify",
                userId="alice@example.com",
                anonymousId="dev-a",
                context={"ip": "2001:db8:abcd:12:3456:789a:bcde:f012"},
                traits={"plan": "pro"},
            ),
            ev(
                "track",
                event="signup",
                userId="alice@example.com",
                anonymousId="dev-a",
                properties={"email": "alice@example.com", "plan": "pro"},
                context={"ip": "203.0.113.77"},
            ),
            ev("track", event="opened", anonymousId="dev-a", properties={"email": "x@y.z", "n": 1}),
        ]
    }
    assert s.post("private", "/v1/batch", body).status_code == 200
    plain = {
        "batch": [
            ev(
                "track",
                event="signup",
                userId="alice@example.com",
                anonymousId="dev-p",
                properties={"email": "alice@example.com"},
                context={"ip": "203.0.113.77"},
            )
        ]
    }
    assert s.post("plain", "/v1/batch", plain).status_code == 200
    s.wait_sql("SELECT count() AS n FROM events", 4)

    rows = s.sql(
        f"SELECT user_id, user_key, ip, properties FROM events WHERE app_id = '{priv}' ORDER BY event"
    )
    hashed = hash_user_id(SECRETS["salt"].encode(), priv, "alice@example.com")
    assert {r["user_key"] for r in rows} == {hashed}  # the anonymous event is stitched to the hashed id
    assert {r["ip"] for r in rows} == {"2001:db8:abcd::", "203.0.113.0", "127.0.0.0"}
    text = orjson.dumps(rows).decode()
    assert "alice" not in text and "example.com" not in text and "x@y.z" not in text
    assert [orjson.loads(r["properties"]).get("plan") for r in rows].count("pro") == 1
    # the plain app keeps what it was sent
    row = s.sql(f"SELECT user_id, ip, properties FROM events WHERE app_id = '{s.keys['plain']['app_id']}'")[0]
    assert row["user_id"] == "alice@example.com" and row["ip"] == "203.0.113.77"
    assert orjson.loads(row["properties"]) == {"email": "alice@example.com"}


# -- read keys -------------------------------------------------------------------------------------


def test_read_api_and_dashboard_calls_require_a_read_key(secure_stack: SecureStack) -> None:
    s = secure_stack
    plain, priv = s.keys["plain"], s.keys["private"]
    js = (REPO / "sinks" / "dashboard" / "static" / "js" / "api.js").read_text()
    paths = sorted(set(re.findall(r"[\"'`](api/[a-z/]+)", js)))
    assert {"api/apps", "api/live", "api/live/stream", "api/metrics/"} <= set(paths)
    q = {"app": plain["app_id"], "from": "2026-01-01", "to": "2026-12-31"}
    urls = [f"{s.read_api}/{p}{'dau' if p.endswith('/') else ''}" for p in paths]
    with httpx.Client(timeout=30) as c:
        for url in urls:
            for headers in ({}, {"X-Read-Key": "tfr_wrong"}, {"X-Read-Key": plain["write_key"]}):
                r = c.get(url, params=q, headers=headers)
                assert r.status_code == 401, (url, headers, r.text)
                assert "key" in r.json()["error"]
        # the page itself is public, its data is not
        assert c.get(f"{s.read_api}/").status_code == 200
        # an app's read key reads its app only
        own = c.get(f"{s.read_api}/api/metrics/dau", params=q, headers={"X-Read-Key": plain["read_key"]})
        assert own.status_code == 200 and own.json()["app"] == plain["app_id"]
        other = c.get(
            f"{s.read_api}/api/metrics/dau",
            params={**q, "app": priv["app_id"]},
            headers={"X-Read-Key": plain["read_key"]},
        )
        assert other.status_code == 401
        assert [
            a["app_id"]
            for a in c.get(
                f"{s.read_api}/api/apps", headers={"Authorization": f"Bearer {plain['read_key']}"}
            ).json()
        ] == [plain["app_id"]]
        # SQL and GDPR deletes are admin-only
        for path, body in (
            ("/api/sql", {"sql": "SELECT 1"}),
            ("/api/gdpr/delete", {"app": plain["app_id"], "user_ids": ["u"]}),
        ):
            assert c.post(f"{s.read_api}{path}", json=body).status_code == 401
            assert (
                c.post(
                    f"{s.read_api}{path}", json=body, headers={"X-Read-Key": plain["read_key"]}
                ).status_code
                == 403
            )


# -- read-only SQL ----------------------------------------------------------------------------------


def test_injection_through_metric_parameters_and_sql_fails(secure_stack: SecureStack) -> None:
    s = secure_stack
    before = s.sql("SELECT count() AS n FROM events")[0]["n"]
    tables = {r["name"] for r in s.sql("SELECT name FROM system.tables WHERE database = currentDatabase()")}
    admin = {"X-Read-Key": SECRETS["read_key"]}
    plain = s.keys["plain"]
    with httpx.Client(timeout=60, base_url=s.read_api) as c:
        for bad in INJECTIONS:
            for param in (
                "app",
                "from",
                "to",
                "by",
                "steps",
                "window",
                "window_days",
                "max_day",
                "group",
                "within",
            ):
                q = {"app": plain["app_id"], "from": "2026-01-01", "to": "2026-12-31", param: bad}
                for metric in ("dau", "funnel", "retention", "revenue"):
                    r = c.get(f"/api/metrics/{metric}", params=q, headers=admin)
                    assert r.status_code in (200, 400), (metric, param, bad, r.text)
                    if r.status_code == 200:  # a value used as data, never as SQL
                        assert "system.tables" not in r.text and "events_local" not in r.text
            r = c.get(
                f"/api/metrics/{bad}",
                params={"app": plain["app_id"], "from": "2026-01-01", "to": "2026-12-31"},
                headers=admin,
            )
            assert r.status_code == 404
        writes = [
            "SELECT 1; DROP TABLE events",
            "SELECT 1 /* ; */ ; DELETE FROM events WHERE 1",
            "DROP TABLE events",
            "TRUNCATE TABLE events",
            "INSERT INTO events (app_id, message_id) VALUES ('x', 'y')",
            "ALTER TABLE events DELETE WHERE 1",
            "DELETE FROM events WHERE 1",
            "CREATE TABLE pwned (x UInt8) ENGINE = Memory",
            "SET readonly = 0",
            "SELECT count() FROM events SETTINGS readonly = 0",
            "SYSTEM DROP MARK CACHE",
            "OPTIMIZE TABLE events FINAL",
        ]
        for stmt in writes:
            r = c.post("/api/sql", json={"sql": stmt}, headers=admin)
            assert r.status_code == 400, (stmt, r.text)
            assert r.json()["error"] and r.json()["param"] == "sql"
            keep(r.text)
    assert s.sql("SELECT count() AS n FROM events")[0]["n"] == before
    assert {
        r["name"] for r in s.sql("SELECT name FROM system.tables WHERE database = currentDatabase()")
    } == tables


# -- GDPR ---------------------------------------------------------------------------------------------


def test_gdpr_delete_removes_the_user_and_suppresses_later_events(
    secure_stack: SecureStack, cli_env: dict[str, str]
) -> None:
    s = secure_stack
    app = s.keys["plain"]["app_id"]
    base = s.sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}'")[0]["n"]
    bob = [
        ev("track", event="opened", anonymousId="bob-dev1"),  # anonymous, before identify
        ev("identify", userId="bob", anonymousId="bob-dev1", traits={"email": "bob@x.io"}),
        ev(
            "track",
            event="session_start",
            userId="bob",
            anonymousId="bob-dev1",
            properties={"session_id": "sb1"},
        ),
        ev("track", event="level_up", userId="bob", anonymousId="bob-dev1", properties={"session_id": "sb1"}),
        ev(
            "track",
            event="session_end",
            userId="bob",
            anonymousId="bob-dev1",
            properties={"session_id": "sb1"},
        ),
        ev("track", event="bought", userId="bob", anonymousId="bob-dev2"),
        ev("track", event="=bad name", userId="bob", anonymousId="bob-dev2"),  # a dead letter of bob's
    ]
    eve = [
        ev("identify", userId="eve", anonymousId="eve-dev"),
        ev("track", event="opened", anonymousId="eve-dev"),
    ]
    assert s.post("plain", "/v1/batch", {"batch": bob + eve}).status_code == 200
    s.wait_sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}'", base + 8)
    s.wait_sql(
        f"SELECT count() AS n FROM invalid_events WHERE app_id = '{app}' AND reason = 'invalid_event_name'", 1
    )
    s.wait_sql(
        f"SELECT toUInt8(count() > 0) AS ok FROM sessions WHERE app_id = '{app}' AND user_key = 'bob'", 1
    )
    online = f"{s.redis_prefix}live:{app}:online"
    deadline = time.monotonic() + 30
    while s.redis.zscore(online, "bob") is None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert s.redis.zscore(online, "bob") is not None

    res = cli(["gdpr", "delete", "--app", app, "--user", "bob", "--json"], cli_env)
    out = orjson.loads(keep(res.stdout))
    assert out["via"] == "read_api" and out["devices"] == 2
    assert out["suppressed"] == 2  # "bob" and its salted hash (rows from before hashing was switched on)
    assert out["deleted"]["events"] == 6 and out["deleted"]["invalid_events"] == 1
    assert out["deleted"]["sessions"] >= 1 and out["redis_removed"] >= 1

    mine = "(user_id = 'bob' OR user_key = 'bob' OR anonymous_id IN ('bob-dev1', 'bob-dev2'))"
    assert s.sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}' AND {mine}")[0]["n"] == 0
    assert (
        s.sql(f"SELECT count() AS n FROM sessions WHERE app_id = '{app}' AND user_key = 'bob'")[0]["n"] == 0
    )
    assert (
        s.sql(f"SELECT count() AS n FROM invalid_events WHERE app_id = '{app}' AND payload LIKE '%bob%'")[0][
            "n"
        ]
        == 0
    )
    assert s.sql(f"SELECT count() AS n FROM first_seen WHERE app_id = '{app}' AND key = 'bob'")[0]["n"] == 0
    assert s.sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}' AND user_key = 'eve'")[0]["n"] == 2
    assert s.redis.zscore(online, "bob") is None and s.redis.zscore(online, "eve") is not None
    assert "bob" not in (s.home / "suppressions.json").read_text()

    # later events of bob, by id and from a device stitched to him, end as 'suppressed' dead letters
    later = [
        ev("track", event="came_back", userId="bob", anonymousId="bob-dev3"),
        ev("track", event="tapped", anonymousId="bob-dev1", properties={"secret": "s"}),
        ev("track", event="tapped", anonymousId="eve-dev"),
    ]
    time.sleep(1.5)  # the workers re-read the suppression list within a second
    assert s.post("plain", "/v1/batch", {"batch": later}).status_code == 200
    s.wait_sql(f"SELECT count() AS n FROM invalid_events WHERE app_id = '{app}' AND reason = 'suppressed'", 2)
    s.wait_sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}' AND user_key = 'eve'", 3)
    gone = "(user_id = 'bob' OR user_key = 'bob' OR anonymous_id IN ('bob-dev1', 'bob-dev2', 'bob-dev3'))"
    assert s.sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}' AND {gone}")[0]["n"] == 0
    dead = s.sql(f"SELECT payload FROM invalid_events WHERE app_id = '{app}' AND reason = 'suppressed'")
    assert all("bob" not in d["payload"] and "secret" not in d["payload"] for d in dead)


def test_gdpr_delete_of_a_hashed_app_takes_the_clear_id(
    secure_stack: SecureStack, cli_env: dict[str, str]
) -> None:
    s = secure_stack
    app = s.keys["private"]["app_id"]
    hashed = hash_user_id(SECRETS["salt"].encode(), app, "alice@example.com")
    assert (
        s.sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}' AND user_key = '{hashed}'")[0]["n"]
        == 3
    )
    out = orjson.loads(
        keep(cli(["gdpr", "delete", "--app", app, "--user", "alice@example.com", "--json"], cli_env).stdout)
    )
    assert out["deleted"]["events"] == 3
    assert s.sql(f"SELECT count() AS n FROM events WHERE app_id = '{app}'")[0]["n"] == 0
    status = keep(cli(["gdpr", "status", "--app", app], cli_env).stdout)
    assert "2 suppressed" in status  # the clear and the hashed form


def test_gdpr_delete_of_an_unknown_app_is_a_clear_error(cli_env: dict[str, str]) -> None:
    res = cli(["gdpr", "delete", "--app", "nope", "--user", "u"], cli_env, check=False)
    assert res.returncode == 2 and "unknown app 'nope'" in res.stderr and "Traceback" not in res.stderr
    keep(res.stderr)


# -- secrets ----------------------------------------------------------------------------------------


def test_secrets_never_appear_in_logs_config_or_errors(
    secure_stack: SecureStack, cli_env: dict[str, str]
) -> None:
    s = secure_stack
    # provoke errors that could echo a secret: a wrong key, a bad Redis password, a bad SQL statement
    with httpx.Client(timeout=30, base_url=s.read_api) as c:
        keep(c.get("/api/live", params={"app": s.keys["plain"]["app_id"], "key": "tfr_bad"}).text)
        keep(
            c.post(
                "/api/sql", json={"sql": "SELEC nonsense"}, headers={"X-Read-Key": SECRETS["read_key"]}
            ).text
        )
        keep(c.get("/healthz").text)
    keep(s.post("plain", "/v1/track", {"type": "track"}).text)
    keep(
        httpx.post(
            f"{s.collector}/v1/track",
            json={"type": "track", "event": "x", "userId": "u"},
            auth=("tfw_wrong", ""),
            timeout=10,
        ).text
    )
    for args in (["config"], ["config", "--json"], ["stack", "status", "--json"], ["apps", "list", "--json"]):
        res = cli(args, cli_env, check=False)
        keep(res.stdout + res.stderr)
    bad_pw = dict(
        cli_env,
        TRACKFLOW_REDIS_URL=cli_env["TRACKFLOW_REDIS_URL"].replace(
            SECRETS["redis_password"], SECRETS["redis_password"] + "-wrong"
        ),
    )
    res = cli(["stack", "status", "--json"], bad_pw, check=False)
    keep(res.stdout + res.stderr)
    config = cli(["config", "--json"], cli_env).stdout
    assert "**********" in config or "***" in config  # the secrets are there, masked

    texts = {f"log:{n}": s.log(n) for n in ("collector", "worker", "sink")}
    texts.update({f"output:{i}": t for i, t in enumerate(OUTPUTS)})
    for p in (s.home / "logs").glob("*"):
        texts[f"file:{p.name}"] = p.read_text(errors="replace")
    assert any(texts.values())
    write_keys = [k["write_key"] for k in s.keys.values()] + [k["read_key"] for k in s.keys.values()]
    for name, text in texts.items():
        for label, secret in [*SECRETS.items(), *(("app key", k) for k in write_keys)]:
            assert secret not in text, f"{label} appears in {name}"
