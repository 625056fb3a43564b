"""The sender: request shapes, auth, per-device order, retries on 429/503 with Retry-After."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import date

import httpx
import orjson
import pytest
from click.testing import CliRunner

from trackflow.simulate import SimConfig, generate
from trackflow.simulate_cli import AppTarget, load_keys_file, plan_requests, retry_after_s, send, simulate

TARGETS = {"game": AppTarget("game", "game-1", "tfw_game"), "shop": AppTarget("shop", "shop-1", "tfw_shop")}


def _sim(users: int = 20, days: int = 3):
    return generate(SimConfig(seed=5, users=users, days=days, start=date(2026, 9, 1)))


class Recorder:
    """A fake collector: records requests, answers 429/503 a few times first if asked."""

    def __init__(self, fail_first: int = 0, status: int = 429, retry_after: str = "0") -> None:
        self.fail_first = fail_first
        self.status = status
        self.retry_after = retry_after
        self.requests: list[httpx.Request] = []
        self.failures = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.failures < self.fail_first:
            self.failures += 1
            return httpx.Response(self.status, headers={"Retry-After": self.retry_after})
        self.requests.append(request)
        return httpx.Response(200, json={"success": True})

    def events(self) -> list[tuple[str, dict]]:
        out = []
        for r in self.requests:
            body = orjson.loads(r.content)
            for ev in body.get("batch") or body.get("events") or [body]:
                out.append((r.url.path, ev))
        return out


async def test_every_event_is_sent_with_its_shape_and_key() -> None:
    sim = _sim()
    rec = Recorder()
    report = await send(
        sim, TARGETS, "http://collector", concurrency=4, batch_size=50, transport=httpx.MockTransport(rec)
    )
    assert report.events == report.accepted == len(sim.events)
    assert report.failed == report.rejected == 0
    paths = Counter(p.split("/")[1] + "/" + p.split("/")[2] for p, _ in rec.events())
    assert paths["v1/batch"] == sim.expected.sent_by_shape["segment"]
    assert paths["v1/app-tracking"] == sim.expected.sent_by_shape["app_tracking"]
    assert paths["inappevent/game-1"] == sim.expected.sent_by_shape["appsflyer_s2s"]
    for r in rec.requests:
        if r.url.path == "/v1/batch":
            user = base64.b64decode(r.headers["authorization"].split()[1]).decode().split(":")[0]
            assert user == "tfw_shop"
            assert all("sentAt" in ev for ev in orjson.loads(r.content)["batch"])
        elif r.url.path == "/v1/app-tracking":
            assert r.headers["x-write-key"] == "tfw_game"
            assert len(orjson.loads(r.content)["events"]) <= 50
        else:
            assert r.headers["authentication"] == "tfw_game"
            assert isinstance(orjson.loads(r.content)["eventValue"], str)  # as AppsFlyer sends it


async def test_events_of_one_device_arrive_in_order() -> None:
    sim = _sim()
    rec = Recorder()
    await send(
        sim, TARGETS, "http://collector", concurrency=8, batch_size=7, transport=httpx.MockTransport(rec)
    )
    seen: dict[str, list[int]] = {}
    for _, ev in rec.events():
        device = ev.get("anonymousId") or ev.get("device_id") or ev.get("appsflyer_id")
        ts = ev.get("timestamp") or ev.get("eventTime")
        seen.setdefault(device, []).append(ts)
    assert seen
    order = {e.seq: e for e in sim.events}
    assert len(order) == len(sim.events)
    for reqs in plan_requests(sim.events, lanes=8, batch_size=7):
        seqs = [ev.seq for r in reqs for ev in r.events]
        per_stream: dict[tuple[str, str], list[int]] = {}
        for r in reqs:
            per_stream.setdefault((r.app, r.shape), []).extend(ev.seq for ev in r.events)
        for s in per_stream.values():
            assert s == sorted(s)
        assert len(seqs) == len(set(seqs))


async def test_retries_on_429_and_503_honour_retry_after() -> None:
    sim = _sim(users=4, days=1)
    for status in (429, 503):
        rec = Recorder(fail_first=3, status=status, retry_after="0.01")
        report = await send(
            sim, TARGETS, "http://collector", concurrency=1, transport=httpx.MockTransport(rec)
        )
        assert report.retries == 3
        assert report.accepted == len(sim.events)
        assert report.statuses[str(status)] == 3


async def test_gives_up_after_bounded_retries() -> None:
    sim = _sim(users=2, days=1)
    rec = Recorder(fail_first=10**6, status=503, retry_after="0")
    report = await send(
        sim, TARGETS, "http://collector", concurrency=2, max_retries=2, transport=httpx.MockTransport(rec)
    )
    assert report.failed == len(sim.events)
    assert report.accepted == 0
    assert report.retries == 2 * report.requests


async def test_client_errors_are_counted_not_retried() -> None:
    sim = _sim(users=2, days=1)
    calls = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(401, json={"errors": [{"reason": "unauthorized"}]})

    report = await send(sim, TARGETS, "http://collector", transport=httpx.MockTransport(handler))
    assert report.rejected == len(sim.events)
    assert calls["n"] == report.requests
    assert report.errors and "401" in report.errors[0]


def test_retry_after_parsing_is_bounded() -> None:
    assert retry_after_s("2", 1.0, 10.0) == 2.0
    assert retry_after_s("3600", 1.0, 10.0) == 10.0
    assert retry_after_s(None, 0.4, 10.0) == 0.4
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 1.0, 10.0) == 0.0
    assert retry_after_s("soon", 0.5, 10.0) == 0.5


def test_keys_file(tmp_path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(
        orjson.dumps(
            {
                "game": {"app_id": "g", "write_key": "k1", "read_key": "r"},
                "shop": {"app_id": "s", "write_key": "k2"},
            }
        )
    )
    keys = load_keys_file(path)
    assert keys["game"] == AppTarget("game", "g", "k1")
    assert keys["shop"].write_key == "k2"


def test_cli_dry_run_json_prints_expected() -> None:
    res = CliRunner().invoke(
        simulate,
        ["--dry-run", "--json", "--users", "10", "--days", "2", "--start", "2026-09-01", "--seed", "9"],
    )
    assert res.exit_code == 0, res.output
    data = orjson.loads(res.output)
    assert data["report"] is None
    assert (
        data["expected"]["sent"]
        == generate(SimConfig(seed=9, users=10, days=2, start=date(2026, 9, 1))).expected.sent
    )


def test_cli_table_and_missing_keys() -> None:
    res = CliRunner().invoke(simulate, ["--dry-run", "--users", "10", "--days", "2", "--start", "2026-09-01"])
    assert res.exit_code == 0, res.output
    assert "expected stored events" in res.output and "funnel" in res.output
    res = CliRunner().invoke(simulate, ["--users", "4", "--days", "1", "--write-key-game", "k"])
    assert res.exit_code != 0
    assert "no write key for shop" in res.output


@pytest.mark.parametrize("apps", ["bank", ""])
def test_cli_rejects_unknown_apps(apps: str) -> None:
    res = CliRunner().invoke(simulate, ["--dry-run", "--apps", apps])
    assert res.exit_code != 0
