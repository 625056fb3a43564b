"""The simulator's traffic against the real collector mapping and pipeline validation (pure code).

Every request the sender builds must pass the collector's envelope checks; every natural event and
duplicate must pass the pipeline's rules, and every invalid event must be dead-lettered with the
reason the simulator announces. This keeps ``simulate``'s printed numbers honest.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

import orjson
import pytest

from trackflow.simulate import ExpectedReason, SimConfig, generate
from trackflow.simulate_cli import AppTarget, build_http, plan_requests

mapping = pytest.importorskip("collector.mapping")
validate_mod = pytest.importorskip("pipeline.validate")
reasons = pytest.importorskip("pipeline.reasons")
psettings = pytest.importorskip("pipeline.settings")


def test_expected_reasons_are_pipeline_reasons() -> None:
    codes = {r.value for r in reasons.Reason}
    assert {r.value for r in ExpectedReason} <= codes


def test_collector_maps_and_pipeline_judges_as_announced() -> None:
    sim = generate(SimConfig(seed=11, users=60, days=4, start=date(2026, 9, 1)))
    targets = {"game": AppTarget("game", "game", "k1"), "shop": AppTarget("shop", "shop", "k2")}
    settings = psettings.PipelineSettings()
    now = datetime.now(UTC)
    limits = mapping.Limits()
    outcome: Counter[str] = Counter()
    for lane in plan_requests(sim.events, lanes=3, batch_size=40):
        for req in lane:
            path, _headers, body, _auth = build_http(req, targets[req.app], now)
            stamp = mapping.Stamp(
                app_id=targets[req.app].app_id,
                received_at=int(now.timestamp() * 1000),
                request_id="r1",
                ip="127.0.0.1",
            )
            data = orjson.loads(body)
            if path == "/v1/batch":
                result = mapping.map_segment(data, stamp, limits)
            elif path == "/v1/app-tracking":
                result = mapping.map_app_tracking(data, stamp, limits)
            else:
                result = mapping.map_appsflyer(data, stamp, limits)
            assert result.ok, (path, [e.to_json() for e in result.errors])
            assert len(result.events) == len(req.events)
            for ev, rec in zip(req.events, result.events, strict=True):
                try:
                    validate_mod.validate(rec, settings)
                except validate_mod.RejectedEvent as exc:
                    assert ev.kind == "invalid", (ev.payload, exc)
                    assert exc.reason == ev.reason, (ev.payload, exc.reason, ev.reason)
                    outcome[str(exc.reason)] += 1
                else:
                    assert ev.kind != "invalid", ev.payload
                    outcome["ok"] += 1
    assert outcome["ok"] == sim.expected.sent - sum(sim.expected.invalid.values())
    assert {k: v for k, v in outcome.items() if k != "ok"} == sim.expected.invalid
