"""``trackflow fx load`` and ``trackflow fx fetch`` publish FxRates records to the compacted topic."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fx" / "rates.csv"


def test_fx_load_and_fetch(pipe, tmp_path):
    doc = {"timestamp": 1_790_003_600, "base": "USD", "rates": {"EUR": 0.9, "GBP": 0.78}}
    (tmp_path / "oxr.json").write_text(json.dumps(doc))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = "app_id=k1" in self.path
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write((tmp_path / "oxr.json").read_bytes() if ok else b"{}")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        loaded = pipe.cli("fx", "load", str(FIXTURE))
        assert loaded.returncode == 0, loaded.stderr
        assert json.loads(loaded.stdout)["published_hours"] >= 40 * 24
        url = f"http://127.0.0.1:{srv.server_address[1]}/api/latest.json"
        fetched = pipe.cli("fx", "fetch", extra_env={"TRACKFLOW_FX_URL": url, "TRACKFLOW_FX_APP_ID": "k1"})
        assert fetched.returncode == 0, fetched.stderr
        assert json.loads(fetched.stdout)["hour"] == "2026-09-21T15:00:00Z"
        bad = pipe.cli("fx", "fetch", extra_env={"TRACKFLOW_FX_URL": url, "TRACKFLOW_FX_APP_ID": "nope"})
        assert bad.returncode != 0 and "401" in bad.stderr
    finally:
        srv.shutdown()
        srv.server_close()
    records = pipe.read(pipe.topics.fx, "fx_rates")
    latest = [r for r in records if r["hour"] == "2026-09-21T15:00:00Z"]
    assert latest[-1]["source"] == "openexchangerates" and latest[-1]["rates"]["EUR"] == 0.9
    assert any(r["source"] == "file" and "ETH" in r["rates"] for r in records)
