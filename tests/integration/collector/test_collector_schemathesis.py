"""Schemathesis drives every operation of /openapi.json against a running collector: no 5xx.

(``schemathesis.pytest.from_fixture`` does not run under pytest 9, so the cases are drawn with
hypothesis from each operation's schemathesis strategy.)
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration


def test_schemathesis_finds_no_server_error(collector: Any, app: tuple[Any, str, str]) -> None:
    _, key, _ = app
    schema = schemathesis.openapi.from_url(f"{collector.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    labels = {op.label for op in operations}
    expected = {f"POST /v1/{t}" for t in ("track", "identify", "page", "screen", "group", "alias", "batch")}
    assert expected | {"POST /v1/app-tracking", "POST /inappevent/{app_id}"} <= labels
    token = base64.b64encode(f"{key}:".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "authentication": key}
    seen: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []

    cases = st.sampled_from(operations).flatmap(lambda op: op.as_strategy())

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=cases)
    def run(case: Any) -> None:
        response = case.call(base_url=collector.url, headers=headers, timeout=30)
        seen[(case.operation.label, response.status_code)] += 1
        if response.status_code >= 500 and case.path != "/readyz":
            failures.append(f"{case.operation.label} -> {response.status_code}: {response.text[:300]}")

    run()
    assert not failures, failures
    assert any(status == 200 for (label, status) in seen if label.startswith("POST")), seen
