"""Fixtures of the pipeline unit tests: a raw-event factory and a processor on in-memory state."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.fx import RateTable
from pipeline.process import DictState, Processor
from pipeline.settings import PipelineSettings
from schemas import defaults
from trackflow.apps import App

T0 = 1_790_000_000_000  # 2026-09-21T...Z, inside the FX fixture window


def make_raw(**fields: Any) -> dict[str, Any]:
    """A valid RawEvent (track ``button_click`` from device ``dev1`` of app ``a1``)."""
    rec = defaults("raw_event")
    rec.update(
        message_id="m1",
        type="track",
        event="button_click",
        app_id="a1",
        anonymous_id="dev1",
        received_at=T0,
        timestamp=str(T0),
        sent_at=None,
    )
    for k in ("properties", "traits", "context"):
        if isinstance(fields.get(k), (dict, list)):
            fields[k] = orjson.dumps(fields[k]).decode()
    rec.update(fields)
    return rec


@pytest.fixture
def raw() -> Any:
    return make_raw


@pytest.fixture
def rates() -> RateTable:
    t = RateTable()
    t.set_hour(T0 - 48 * 3_600_000, {"EUR": 1 / 1.13, "GBP": 0.78, "ETH": 0.0004, "USDC": 1.0, "JPY": 150.0})
    return t


@pytest.fixture
def app_gbp() -> App:
    return App(app_id="a1", name="A1", write_key_hash="x", reporting_currency="GBP")


@pytest.fixture
def make_proc(rates: RateTable, app_gbp: App) -> Any:
    def _make(**settings: Any) -> Processor:
        apps = {"a1": app_gbp}
        return Processor(PipelineSettings(**settings), apps.get, rates, DictState())

    return _make


@pytest.fixture
def proc(make_proc: Any) -> Processor:
    return make_proc()
