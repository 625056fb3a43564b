"""``trackflow replay`` planning: target offsets and time parsing (no broker)."""

from __future__ import annotations

import pytest

from trackflow.config import KafkaSettings
from trackflow.replay import ReplayError, parse_when, plan_offsets, resolve_topic

BOUNDS = {0: (0, 10), 1: (5, 8), 2: (0, 0)}


def test_earliest_latest_absolute_relative() -> None:
    assert plan_offsets(BOUNDS, offset="earliest") == {0: 0, 1: 5, 2: 0}
    assert plan_offsets(BOUNDS, offset="latest") == {0: 10, 1: 8, 2: 0}
    assert plan_offsets(BOUNDS, offset="6") == {0: 6, 1: 6, 2: 0}
    assert plan_offsets(BOUNDS, offset="2") == {0: 2, 1: 5, 2: 0}  # clamped to the low watermark
    assert plan_offsets(BOUNDS, offset="-2") == {0: 8, 1: 6, 2: 0}
    assert plan_offsets(BOUNDS, offset="-100") == {0: 0, 1: 5, 2: 0}


def test_time_offsets_missing_means_end() -> None:
    assert plan_offsets(BOUNDS, time_offsets={0: 4, 1: -1, 2: -1}) == {0: 4, 1: 8, 2: 0}


def test_bad_inputs() -> None:
    with pytest.raises(ReplayError):
        plan_offsets(BOUNDS, offset="yesterday")
    with pytest.raises(ReplayError):
        plan_offsets(BOUNDS)
    with pytest.raises(ReplayError):
        parse_when("last tuesday")


def test_parse_when() -> None:
    assert parse_when("2026-01-01T00:00:00Z") == 1_767_225_600_000
    assert parse_when("2026-01-01 00:00:00") == 1_767_225_600_000  # naive = UTC
    assert parse_when("1767225600") == 1_767_225_600_000
    assert parse_when("1767225600000") == 1_767_225_600_000


def test_topic_aliases_use_the_prefix() -> None:
    kafka = KafkaSettings(topic_prefix="x.")
    assert resolve_topic("raw", kafka) == "x.events.raw"
    assert resolve_topic("sessions", kafka) == "x.sessions"
    assert resolve_topic("other.topic", kafka) == "other.topic"
