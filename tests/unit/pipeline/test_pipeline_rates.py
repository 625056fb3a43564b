"""Rate history files and the HTTP provider (against a local server, no internet)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.exceptions import FxError
from pipeline.fx import parse_hour
from pipeline.rates import OxrProvider, load_path

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fx" / "rates.csv"
OXR: dict[str, Any] = {
    "disclaimer": "test",
    "timestamp": 1790003600,
    "base": "USD",
    "rates": {"EUR": 0.9, "GBP": 0.78},
}


def test_fixture_loads_daily_rows_as_hours():
    hours = load_path(FIXTURE)
    assert len(hours) >= 40 * 24
    first = hours[parse_hour("2026-09-01T00:00:00Z")]
    assert first["ETH"] == 0.0004 and 0.7 < first["EUR"] < 1.1
    assert hours[parse_hour("2026-09-01T23:00:00Z")] == first


def test_oxr_folder(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(OXR))
    (tmp_path / "b.json").write_text(json.dumps(OXR | {"timestamp": OXR["timestamp"] + 3600}))
    assert len(load_path(tmp_path)) == 2


@pytest.fixture
def oxr_server():
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = json.dumps(OXR).encode() if "app_id=secret" in self.path else b'{"error": true}'
            self.send_response(200 if "app_id=secret" in self.path else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/api/latest.json", seen
    srv.shutdown()
    srv.server_close()


def test_provider_fetches_with_app_id(oxr_server):
    url, seen = oxr_server
    hour, rates = OxrProvider(url, "secret").fetch()
    assert hour == 1_790_003_600_000 - 1_790_003_600_000 % 3_600_000
    assert rates == {"EUR": 0.9, "GBP": 0.78, "USD": 1.0} and "app_id=secret" in seen[0]
    with pytest.raises(FxError):
        OxrProvider(url, "wrong").fetch()
