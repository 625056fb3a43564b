"""``trackflow replay`` on the real broker: offsets move to an offset or a time, active groups refuse."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from trackflow.config import KafkaSettings
from trackflow.offsets import high_watermarks
from trackflow.replay import ReplayError, replay, replay_cmd

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, n: int, ts_of) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(n):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 4, timestamp=ts_of(i))
    assert p.flush(30) == 0


def _commit_end(bootstrap: str, topic: str, group: str) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(topic, p, high) for p, high in high_watermarks(c, topic, range(4)).items()]
    c.commit(offsets=tps, asynchronous=False)
    c.close()


def _committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    out = {
        tp.partition: tp.offset
        for tp in c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    }
    c.close()
    return out


@pytest.fixture(scope="module")
def filled(topics, kafka_admin, services) -> tuple[str, str, int]:
    """A topic of this run (deleted with the run's topics) with 40 records, 10 per partition, 1 min apart."""
    from confluent_kafka.admin import NewTopic

    topic = f"{KafkaSettings().topic_prefix}replay.test"
    for fut in kafka_admin.create_topics([NewTopic(topic, 4, 1)], request_timeout=30).values():
        fut.result()
    base = int(time.time() * 1000) - 3_600_000
    _produce(services.kafka_bootstrap, topic, 40, lambda i: base + i * 60_000)
    return services.kafka_bootstrap, topic, base


def test_from_offset_earliest_absolute_and_relative(filled, run_id) -> None:
    bootstrap, topic, _ = filled
    group = f"replay-off-{run_id}"
    _commit_end(bootstrap, topic, group)
    assert set(_committed(bootstrap, topic, group).values()) == {10}

    moves = replay(group, topic, offset="earliest")
    assert [m.target for m in moves] == [0, 0, 0, 0]
    assert sum(m.to_reread for m in moves) == 40
    assert _committed(bootstrap, topic, group) == {0: 0, 1: 0, 2: 0, 3: 0}

    replay(group, topic, offset="7", partitions=[2])
    assert _committed(bootstrap, topic, group)[2] == 7
    replay(group, topic, offset="-3")
    assert set(_committed(bootstrap, topic, group).values()) == {7}
    replay(group, topic, offset="999")  # clamped to the end
    assert set(_committed(bootstrap, topic, group).values()) == {10}


def test_from_time_and_a_consumer_rereads(filled, run_id) -> None:
    bootstrap, topic, base = filled
    group = f"replay-time-{run_id}"
    _commit_end(bootstrap, topic, group)
    # record i has time base + i min and sits on partition i % 4 at offset i // 4: from i = 20 on
    moves = replay(group, topic, when_ms=base + 20 * 60_000)
    assert [m.target for m in moves] == [5, 5, 5, 5]
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    c.subscribe([topic])
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value().decode())
    c.close()
    assert sorted(got, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(20, 40)]
    # a time after the last record: the end of the log
    moves = replay(group, topic, when_ms=base + 10 * 3_600_000)
    assert [m.target for m in moves] == [10, 10, 10, 10]


def test_active_group_is_refused(filled, run_id) -> None:
    bootstrap, topic, _ = filled
    group = f"replay-busy-{run_id}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    deadline = time.monotonic() + 30
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(0.5)
    try:
        assert c.assignment()
        with pytest.raises(ReplayError, match="active member"):
            replay(group, topic, offset="earliest")
    finally:
        c.close()


def test_cli_dry_run_and_errors(filled, run_id) -> None:
    bootstrap, topic, _ = filled
    group = f"replay-cli-{run_id}"
    _commit_end(bootstrap, topic, group)
    res = CliRunner().invoke(
        replay_cmd, ["--group", group, "--topic", topic, "--from-offset", "earliest", "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    assert "would move" in res.output and "40 records" in res.output
    assert set(_committed(bootstrap, topic, group).values()) == {10}  # dry run: nothing moved
    with pytest.raises(ReplayError, match="exactly one"):
        replay(group, topic)
    with pytest.raises(ReplayError, match="does not exist"):
        replay(group, f"{KafkaSettings().topic_prefix}missing", offset="earliest")
