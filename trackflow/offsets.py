"""A consumer group's committed offsets, read safely while the group coordinator may be loading.

Right after a broker (re)start the coordinator can fail the read (``NOT_COORDINATOR``) or answer
some partitions with an error and no offset. Taking such a partition for "never committed" moved
consumers back to the start of their partitions (the sink planned every range it ever recorded;
the pipeline worker sought, and committed, the low watermark). :func:`read_committed` reads again
with a back-off and tells which partitions never got an answer; the sink
(``SinkLoop._committed``), the worker (``pipeline.worker.committed_positions``) and the pipeline
benchmark all use it.

:func:`high_watermarks` reads partitions' high watermarks the same way: a partition whose leader is
not settled yet (a topic just created, a broker restarted) answers ``NOT_LEADER_FOR_PARTITION``
for a moment, which once failed a test's wait for output that was on its way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("trackflow.offsets")

#: reads before giving up on the partitions still answered with an error
COMMITTED_ATTEMPTS = 5


def read_committed(
    consumer: Any, partitions: Iterable[tuple[str, int]], attempts: int = COMMITTED_ATTEMPTS
) -> tuple[dict[tuple[str, int], int], list[tuple[str, int]]]:
    """The committed offsets of ``consumer``'s group on ``(topic, partition)`` pairs.

    Returns ``(offsets, missing)``: the offset of every partition the broker answered without an
    error (negative where the group never committed), and the partitions still unanswered after
    ``attempts`` reads (0.5, 1, 2, 4 s apart). Raises the last error if no read answered at all.
    """
    from confluent_kafka import TopicPartition

    out: dict[tuple[str, int], int] = {}
    todo = list(partitions)
    error: Exception | None = None
    answered = False
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
        try:
            answer = consumer.committed([TopicPartition(t, p) for t, p in todo], timeout=10)
        except Exception as exc:
            log.warning("could not read committed offsets (attempt %d): %s", attempt + 1, exc)
            error = exc
            continue
        if not answer:
            continue
        answered = True
        out.update({(tp.topic, tp.partition): tp.offset for tp in answer if tp.error is None})
        todo = [(tp.topic, tp.partition) for tp in answer if tp.error is not None]
        if not todo:
            return out, []
    if error is not None and not answered:
        raise error
    return out, todo


#: reads of a partition's watermarks before giving up while its leader is not settled
WATERMARK_ATTEMPTS = 8


def high_watermarks(consumer: Any, topic: str, partitions: Iterable[int], attempts: int = WATERMARK_ATTEMPTS,
                    timeout: float = 10.0) -> dict[int, int]:
    """``{partition: high watermark}`` of ``topic``, read again (0.25, 0.5, 1, 2, 2 ... s apart) while
    the broker answers that the partition has no leader yet; other errors, and the last one after
    ``attempts`` reads, are raised."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.UNKNOWN_TOPIC_OR_PART}
    out: dict[int, int] = {}
    for p in partitions:
        for attempt in range(attempts):
            try:
                out[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                break
            except KafkaException as exc:
                if exc.args[0].code() not in settling or attempt == attempts - 1:
                    raise
                log.info("watermarks of %s/%d: %s (attempt %d)", topic, p, exc, attempt + 1)
                time.sleep(min(0.25 * 2**attempt, 2.0))
    return out


def committed_total(kafka: Any, group: str, topic: str) -> int:
    """The committed offsets of ``group`` on every partition of ``topic``, summed (0 where it never
    committed): how far a group has got through a topic. ``kafka`` is a ``KafkaSettings``."""
    from confluent_kafka import Consumer

    c = Consumer(kafka.client_config() | {"group.id": group})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        offsets, _missing = read_committed(c, [(topic, p) for p in parts])
        return sum(max(o, 0) for o in offsets.values())
    finally:
        c.close()
