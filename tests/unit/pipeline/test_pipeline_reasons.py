"""The reason enum is documented in one place."""

from __future__ import annotations

from pipeline.reasons import Reason


def test_every_reason_has_a_description():
    for r in Reason:
        assert r.description and r.value == r.value.lower()
