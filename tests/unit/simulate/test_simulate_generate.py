"""The traffic generator: determinism, proportions, shapes and the expected summary."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime

import orjson
import pytest

from trackflow.simulate import (
    ERROR_LEVELS,
    OUT_OF_RANGE_USD,
    ExpectedReason,
    SimConfig,
    Simulation,
    generate,
)

START = date(2026, 9, 1)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return generate(SimConfig(seed=7, users=200, days=14, start=START))


def _props(payload: dict) -> dict:
    if "eventValue" in payload:
        return payload["eventValue"]
    return payload.get("properties") or payload.get("action_properties") or {}


def _name(payload: dict) -> str | None:
    return payload.get("event") if "messageId" in payload else payload.get("action", payload.get("eventName"))


def test_same_seed_same_events() -> None:
    a = generate(SimConfig(seed=3, users=30, days=5, start=START))
    b = generate(SimConfig(seed=3, users=30, days=5, start=START))
    assert orjson.dumps([e.payload for e in a.events]) == orjson.dumps([e.payload for e in b.events])
    assert a.expected.to_json() == b.expected.to_json()


def test_other_seed_other_events() -> None:
    a = generate(SimConfig(seed=3, users=30, days=5, start=START))
    b = generate(SimConfig(seed=4, users=30, days=5, start=START))
    assert [e.payload for e in a.events] != [e.payload for e in b.events]


def test_events_scale_with_users_and_days() -> None:
    small = generate(SimConfig(seed=1, users=20, days=3, start=START)).expected.sent
    more_users = generate(SimConfig(seed=1, users=80, days=3, start=START)).expected.sent
    more_days = generate(SimConfig(seed=1, users=20, days=12, start=START)).expected.sent
    assert more_users > 2.5 * small
    assert more_days > 1.5 * small


def test_about_two_percent_duplicates_and_one_percent_invalid(sim: Simulation) -> None:
    kinds = Counter(e.kind for e in sim.events)
    natural = kinds["event"]
    dups = kinds["dup_message_id"] + kinds["dup_content"]
    assert natural > 5000
    assert 0.015 <= dups / natural <= 0.025
    assert 0.007 <= kinds["invalid"] / natural <= 0.013
    assert kinds["dup_message_id"] > 0 and kinds["dup_content"] > 0
    exp = sim.expected
    assert exp.sent == len(sim.events)
    assert exp.expected_stored == natural
    assert sum(exp.duplicates.values()) == dups
    assert sum(exp.invalid.values()) == kinds["invalid"]


def test_every_expected_reason_occurs(sim: Simulation) -> None:
    reasons = {e.reason for e in sim.events if e.kind == "invalid"}
    assert reasons == {r.value for r in ExpectedReason}
    bad_names = {_name(e.payload) for e in sim.events if e.reason == ExpectedReason.INVALID_EVENT_NAME}
    assert any(n.startswith("=") for n in bad_names)
    assert any(" " in n for n in bad_names)
    assert any(
        "12,50" in orjson.dumps(_props(e.payload)).decode()
        for e in sim.events
        if e.reason == ExpectedReason.INVALID_REVENUE
    )


def test_timestamps_are_backdated_within_the_period(sim: Simulation) -> None:
    lo = datetime(2026, 9, 1, tzinfo=UTC).timestamp() * 1000
    hi = datetime(2026, 9, 15, tzinfo=UTC).timestamp() * 1000
    assert all(lo <= e.ts_ms < hi for e in sim.events)
    assert len(sim.expected.apps["game"].dau) == 14
    assert sim.expected.start == "2026-09-01" and sim.expected.end == "2026-09-14"


def test_default_start_ends_yesterday() -> None:
    s = generate(SimConfig(seed=1, users=10, days=3))
    today = datetime.now(UTC).date()
    assert s.expected.end == (today.fromordinal(today.toordinal() - 1)).isoformat()
    assert max(e.ts_ms for e in s.events) < datetime.now(UTC).timestamp() * 1000


def test_events_are_in_send_order_and_shapes_are_complete(sim: Simulation) -> None:
    assert [e.seq for e in sim.events] == list(range(len(sim.events)))
    timed = [e for e in sim.events if e.kind != "dup_message_id"]  # resends go out minutes later
    assert all(a.ts_ms <= b.ts_ms for a, b in itertools.pairwise(timed))
    shapes = Counter(e.shape for e in sim.events)
    assert set(shapes) == {"segment", "app_tracking", "appsflyer_s2s"}
    for e in sim.events:
        p = e.payload
        if e.shape == "segment":
            assert {"messageId", "anonymousId", "type", "timestamp", "context"} <= set(p)
            assert "sentAt" not in p  # set by the sender at send time
        elif e.shape == "app_tracking":
            assert {"uuid", "event", "timestamp", "session_id", "offset", "user_id"} <= set(p)
            assert p["event"] in {"identify", "track", "screen", "heartbeat"}
        else:
            assert {"eventName", "eventValue", "eventTime", "appsflyer_id", "customer_user_id", "ip"} <= set(
                p
            )


def test_message_id_duplicates_are_identical_resends(sim: Simulation) -> None:
    originals = {id(e.payload): e for e in sim.events if e.kind == "event"}
    for d in (e for e in sim.events if e.kind == "dup_message_id"):
        orig = originals[id(d.payload)]
        assert d.payload == orig.payload and d.seq > orig.seq


def test_content_duplicates_have_new_ids_within_ten_seconds(sim: Simulation) -> None:
    by_content: dict[tuple, list] = {}
    for e in sim.events:
        if e.shape == "appsflyer_s2s":
            continue
        key = (
            e.app,
            e.lane,
            _name(e.payload),
            e.payload.get("type", e.payload.get("event")),
            orjson.dumps(_props(e.payload), option=orjson.OPT_SORT_KEYS),
        )
        by_content.setdefault(key, []).append(e)
    dups = [e for e in sim.events if e.kind == "dup_content"]
    assert dups
    assert all(d.shape != "appsflyer_s2s" for d in dups)  # AppsFlyer is exempt from the content rule
    for d in dups:
        key = (
            d.app,
            d.lane,
            _name(d.payload),
            d.payload.get("type", d.payload.get("event")),
            orjson.dumps(_props(d.payload), option=orjson.OPT_SORT_KEYS),
        )
        twins = [e for e in by_content[key] if e.kind == "event" and 0 < d.ts_ms - e.ts_ms <= 10_000]
        assert twins, d
        assert (d.payload.get("messageId") or d.payload.get("uuid")) != (
            twins[0].payload.get("messageId") or twins[0].payload.get("uuid")
        )


def test_natural_events_never_look_like_duplicates(sim: Simulation) -> None:
    """No accidental content twins among natural events, and every id is unique."""
    last: dict[tuple, int] = {}
    ids: set[str] = set()
    for e in sim.events:
        if e.kind != "event":
            continue
        mid = e.payload.get("messageId") or e.payload.get("uuid")
        if mid is not None:
            assert mid not in ids
            ids.add(mid)
        key = (
            e.app,
            e.shape,
            e.lane,
            _name(e.payload),
            e.payload.get("type", e.payload.get("event")),
            orjson.dumps(_props(e.payload), option=orjson.OPT_SORT_KEYS),
        )
        if key in last:
            assert e.ts_ms - last[key] > 10_000, e
        last[key] = e.ts_ms


def test_traffic_covers_the_issue(sim: Simulation) -> None:
    natural = [e for e in sim.events if e.kind == "event"]
    names = Counter(_name(e.payload) for e in natural)
    types = Counter(e.payload.get("type") or e.payload.get("event") for e in natural)
    assert names["install"] > 0 and names["application_installed"] > 0
    assert names["session_start"] == names["session_end"] > 0
    assert types["identify"] > 0
    assert types["heartbeat"] > 0 and names["heartbeat"] > 0  # both heartbeat forms
    assert names["af_purchase"] > 0 and names["order_completed"] > 0 and names["web3_purchase"] > 0
    installs = [e for e in natural if _name(e.payload) == "application_installed"]
    assert any("campaign" in e.payload["context"] for e in installs)
    af_installs = [e for e in natural if _name(e.payload) == "install"]
    assert all("media_source" in e.payload["eventValue"] for e in af_installs)
    errors = [_props(e.payload) for e in natural if _name(e.payload) == "error"]
    assert {p["error_level"] for p in errors} == set(ERROR_LEVELS)
    assert all({"error_code", "error_message", "error_stacktrace", "metadata"} <= set(p) for p in errors)
    web3 = [_props(e.payload) for e in natural if _name(e.payload) == "web3_purchase"]
    assert any(p["bundle_paid_currency"].startswith("0x") for p in web3)
    assert all(p["tx_ref"].startswith("0x") for p in web3)


def test_heartbeats_every_thirty_seconds(sim: Simulation) -> None:
    offsets: dict[str, list[float]] = {}
    for e in sim.events:
        if e.kind == "event" and e.shape == "app_tracking" and e.payload["event"] == "heartbeat":
            offsets.setdefault(e.payload["session_id"], []).append(e.payload["offset"])
    assert offsets
    for offs in offsets.values():
        assert offs == [30.0 * (i + 1) for i in range(len(offs))]


def test_summary_revenue_and_funnel(sim: Simulation) -> None:
    shop, game = sim.expected.apps["shop"], sim.expected.apps["game"]
    assert len(shop.revenue_by_currency) >= 4
    assert shop.refunds > 0 and game.refunds > 0
    assert game.web3_purchases > 0 and game.web3_by_token
    oor = sum(a.out_of_range["count"] for a in (shop, game))
    assert oor > 0
    assert all(abs(v) <= OUT_OF_RANGE_USD * 200 for v in shop.revenue_by_currency.values())
    for app in (shop, game):
        users = [s["users"] for s in app.funnel]
        assert users == sorted(users, reverse=True) and users[0] > users[-1] > 0
        assert app.users == 100 and app.installs == 100
        assert max(app.dau.values()) <= app.users
        assert sum(app.installs_by_media_source.values()) == app.installs


def test_apps_subset_and_bad_config() -> None:
    only_shop = generate(SimConfig(seed=1, users=10, days=2, start=START, apps=("shop",)))
    assert {e.app for e in only_shop.events} == {"shop"}
    assert list(only_shop.expected.apps) == ["shop"]
    with pytest.raises(ValueError):
        generate(SimConfig(apps=("bank",)))
    with pytest.raises(ValueError):
        generate(SimConfig(users=0))
