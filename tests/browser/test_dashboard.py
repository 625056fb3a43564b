"""The dashboard in a real browser, against a real ``trackflow sink`` (Kafka, embedded ClickHouse, Redis).

A user opening the page sees every chart drawn from the data in ClickHouse, and the live tiles move
when new events arrive (pushed over server-sent events, without reloading the page).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from dashboard_data import (
    DAYS,
    FUNNEL,
    READ_KEY,
    REPO,
    SinkServer,
    build_dataset,
    live_burst,
    produce,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

#: the read-API metric behind each chart of the page, and a query the fixture data must answer
CHART_METRICS = {
    "active": "active-series",
    "user-types": "user-types",
    "retention": "retention",
    "session-histogram": "session-histogram",
    "funnel": "funnel",
    "sessions": "sessions",
    "revenue": "revenue",
    "revenue-by-currency": "revenue-by-currency",
    "errors": "errors",
    "dead-letters": "dead-letters",
    "attribution": "attribution",
}
SCREENSHOT = REPO / "docs/dashboard.png"


def _wait_for_metrics(
    sink: SinkServer, app_id: str, date_from: str, date_to: str, timeout: float = 180
) -> None:
    """Polls the read API until every chart's metric returns rows (the sink has flushed everything)."""
    pending = dict(CHART_METRICS)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while pending and time.monotonic() < deadline:
        for chart, metric in list(pending.items()):
            params: dict[str, Any] = {"app": app_id, "from": date_from, "to": date_to, "by": "users"}
            if metric == "funnel":
                params.update(steps=",".join(FUNNEL), window=86400)
            try:
                body = sink.get(f"/api/metrics/{metric}", **params)
            except Exception as exc:  # not ready yet, or a metric error worth reporting on timeout
                last[chart] = repr(exc)
                continue
            last[chart] = body.get("rows")
            if body.get("rows"):
                del pending[chart]
        if pending:
            assert sink.proc.poll() is None, f"trackflow sink died:\n{sink.log_tail()}"
            time.sleep(1)
    assert not pending, (
        f"metrics without rows after {timeout} s: { {c: last.get(c) for c in pending} }\n{sink.log_tail()}"
    )


@dataclass
class Loaded:
    """The fixture dataset, visible through the read API."""

    app_id: str
    date_from: str
    date_to: str

    def url(self, sink: SinkServer, **extra: str) -> str:
        query = {"key": READ_KEY, "app": self.app_id, "from": self.date_from, "to": self.date_to, **extra}
        return f"{sink.base_url}/?{urlencode(query)}"


@pytest.fixture(scope="module")
def loaded(sink_server: SinkServer, topics: Any, app: Any) -> Loaded:
    """Produces the fixture dataset to the run's topics and waits until every chart's metric has rows."""
    app_obj = app[0]
    now = datetime.now(UTC)
    data = build_dataset(app_obj.app_id, now)
    produce(topics.enriched, "enriched_event", data.events)
    produce(topics.sessions, "session", data.sessions)
    produce(topics.invalid, "invalid_event", data.invalid)
    date_to = now.date().isoformat()
    date_from = (now.date() - timedelta(days=DAYS - 1)).isoformat()
    _wait_for_metrics(sink_server, app_obj.app_id, date_from, date_to)
    return Loaded(app_obj.app_id, date_from, date_to)


def test_dashboard_renders_every_chart_and_live_tiles_update(
    browser: Any, sink_server: SinkServer, topics: Any, loaded: Loaded
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.goto(loaded.url(sink_server, steps=",".join(FUNNEL)))
    page.wait_for_selector("body[data-charts=done]", timeout=60_000)

    charts = page.eval_on_selector_all(
        ".chart[data-chart]",
        "els => els.map(e => ({chart: e.dataset.chart, state: e.dataset.state, points: +e.dataset.points,"
        " message: e.dataset.message}))",
    )
    assert {c["chart"] for c in charts} == set(CHART_METRICS)
    not_drawn = [c for c in charts if c["state"] != "ok" or c["points"] <= 0]
    assert not not_drawn, f"charts without data points: {not_drawn}; {problems}"
    by_chart = {c["chart"]: c["points"] for c in charts}
    assert by_chart["funnel"] == len(FUNNEL)
    assert by_chart["revenue-by-currency"] == 3  # USD, EUR and GBP purchases
    assert by_chart["active"] >= 3 * 30  # DAU, WAU and MAU over (almost) every day of the range
    # the app selector lists the run's app, with the page's filters applied
    assert page.input_value("#f-app") == loaded.app_id
    assert page.input_value("#f-from") == loaded.date_from

    # live tiles: first values arrive (initial fetch, then the SSE stream)
    page.wait_for_function("+document.querySelector('#live-state').dataset.updates >= 2", timeout=30_000)
    before = _tiles(page)
    assert before["tile-dau"] > 0, before
    updates_before = int(page.get_attribute("#live-state", "data-updates") or 0)

    burst = live_burst(loaded.app_id, datetime.now(UTC))
    produce(topics.enriched, "enriched_event", burst)
    page.wait_for_function(
        f"+document.querySelector('#tile-dau').dataset.value > {before['tile-dau']}"
        f" && +document.querySelector('#tile-epm').dataset.value > {before['tile-epm']}",
        timeout=60_000,
    )
    after = _tiles(page)
    assert after["tile-dau"] > before["tile-dau"], (before, after)
    assert after["tile-epm"] > before["tile-epm"], (before, after)
    assert after["tile-online"] >= 5, after  # the burst's five users are online now
    # the change came through the stream: the page fetched /api/live only once, at load
    assert int(page.get_attribute("#live-state", "data-updates") or 0) > updates_before
    assert page.get_attribute("#live-state", "data-state") == "open"
    assert not problems, problems

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # let the tiles' highlight fade before the picture
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 50_000
    page.close()


def _tiles(page: Any) -> dict[str, float]:
    values = page.eval_on_selector_all(".tile", "els => els.map(e => [e.id, e.dataset.value])")
    return {k: float(v) for k, v in values if v is not None}


def test_funnel_steps_are_user_editable(browser: Any, sink_server: SinkServer, loaded: Loaded) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(loaded.url(sink_server, steps="home,product"))
    page.wait_for_selector("body[data-charts=done]", timeout=60_000)
    assert page.get_attribute("#chart-funnel", "data-points") == "2"

    page.fill("#funnel-steps", "home, product, cart, checkout")
    page.fill("#funnel-window", "3600")
    page.click("#funnel-form button[type=submit]")
    page.wait_for_selector("#chart-funnel[data-points='4'][data-state=ok]", timeout=30_000)
    assert "steps=home%2Cproduct%2Ccart%2Ccheckout" in page.url
    assert "window=3600" in page.url

    page.fill("#funnel-steps", "home")
    page.click("#funnel-form button[type=submit]")
    page.wait_for_selector("#chart-funnel[data-state=empty]", timeout=10_000)
    assert "2 or more" in (page.get_attribute("#chart-funnel", "data-message") or "")
    page.close()


def test_page_without_a_read_key_says_so(browser: Any, sink_server: SinkServer) -> None:
    page = browser.new_page()
    page.goto(f"{sink_server.base_url}/")
    page.wait_for_selector("#status[data-state=error]", timeout=30_000)
    assert "read key" in page.inner_text("#status")
    assert page.eval_on_selector_all(".chart[data-state=ok]", "els => els.length") == 0
    page.close()
