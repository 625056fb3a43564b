"""High watermarks read again while a partition's leader settles (pure: a stand-in consumer)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from trackflow import offsets


class SettlingConsumer:
    """Answers ``errors[p]`` (in order) for partition ``p`` before its watermarks."""

    def __init__(self, errors: dict[int, list[int]]) -> None:
        self.errors = errors
        self.calls = 0

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        pending = self.errors.get(tp.partition, [])
        if pending:
            raise KafkaException(KafkaError(pending.pop(0)))
        return 0, 100 + tp.partition


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offsets.time, "sleep", lambda _s: None)


def test_a_partition_without_a_leader_yet_is_read_again() -> None:
    c = SettlingConsumer({1: [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]})
    assert offsets.high_watermarks(c, "t", [0, 1]) == {0: 100, 1: 101}
    assert c.calls == 4


def test_other_errors_and_a_leader_that_never_settles_are_raised() -> None:
    denied = SettlingConsumer({0: [KafkaError.TOPIC_AUTHORIZATION_FAILED]})
    with pytest.raises(KafkaException) as err:
        offsets.high_watermarks(denied, "t", [0])
    assert err.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED and denied.calls == 1
    never = SettlingConsumer({0: [KafkaError.NOT_LEADER_FOR_PARTITION] * 10})
    with pytest.raises(KafkaException):
        offsets.high_watermarks(never, "t", [0], attempts=3)
    assert never.calls == 3
