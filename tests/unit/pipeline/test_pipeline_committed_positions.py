"""committed_positions while the group coordinator is still loading (a broker just restarted):
no partition is taken for never committed because the broker could not answer for it yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import pipeline.worker as worker
from pipeline.worker import committed_positions

LOADING = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)


@dataclass
class Answer:
    """One partition of ``Consumer.committed``'s answer (its ``error`` is read-only on TopicPartition)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class CoordinatorLoading:
    """A confluent consumer's ``committed``/``get_watermark_offsets`` as a loading coordinator answers:
    a raised NOT_COORDINATOR first, then per-partition errors for ``slow`` partitions ``errors`` times."""

    def __init__(
        self, committed: dict[int, int], slow: set[int], errors: int, raise_first: bool = True
    ) -> None:
        self.committed_offsets = committed
        self.slow = slow
        self.errors = errors
        self.raise_first = raise_first
        self.calls = 0

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[Answer]:
        self.calls += 1
        if self.raise_first and self.calls == 1:
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))
        out = []
        for tp in tps:
            if tp.partition in self.slow and self.errors > 0:
                out.append(Answer(tp.topic, tp.partition, -1001, LOADING))
            else:
                out.append(Answer(tp.topic, tp.partition, self.committed_offsets.get(tp.partition, -1001)))
        if any(tp.partition in self.slow for tp in tps):
            self.errors -= 1
        return out

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return (7, 100)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.time, "sleep", lambda _s: None)


def test_partitions_answered_with_an_error_are_read_again() -> None:
    c = CoordinatorLoading({0: 40, 1: 55}, slow={1}, errors=2)
    # partition 2 never committed: its low watermark
    assert committed_positions(c, "raw", [0, 1, 2]) == {0: (40, True), 1: (55, True), 2: (7, False)}
    assert c.calls == 4  # raised, then partition 1 in error twice


def test_a_partition_still_in_error_is_left_out_not_taken_for_uncommitted() -> None:
    c = CoordinatorLoading({0: 40, 1: 55}, slow={1}, errors=100, raise_first=False)
    assert committed_positions(c, "raw", [0, 1], attempts=3) == {0: (40, True)}
    assert c.calls == 3


def test_no_answer_at_all_raises_the_last_error() -> None:
    class Down:
        def committed(self, tps: Any, timeout: float) -> Any:
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))

    with pytest.raises(KafkaException):
        committed_positions(Down(), "raw", [0, 1], attempts=3)
