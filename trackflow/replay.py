"""``trackflow replay``: rewind (or fast-forward) a consumer group's offsets on one topic.

Backfills and replays are offset moves: stop the consumers of a group, move the group's committed
offsets on a topic to an offset or to a point in time, start the consumers again. Everything
downstream is idempotent (see ``docs/operations.md``), so re-reading is harmless.

Pure planning (:func:`plan_offsets`) is separate from the Kafka I/O (:func:`replay`), which uses
confluent-kafka's admin API (``describe_consumer_groups``, ``alter_consumer_group_offsets``) and a
consumer for watermarks and ``offsets_for_times``. Kafka refuses to move the offsets of a group that
still has members; so do we, with a clear message.

Consumer groups: the pipeline workers use ``<topic_prefix>pipeline`` on the raw topic; the sink uses
``TRACKFLOW_SINK_GROUP_ID`` (default ``<topic prefix>sink``, i.e. ``tf.sink``) on the enriched, invalid and sessions topics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import click
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from trackflow.config import KafkaSettings
from trackflow.exceptions import TrackflowError

#: topic aliases accepted by ``--topic`` (resolved with the configured prefix)
TOPIC_ALIASES = ("raw", "enriched", "invalid", "sessions", "fx")


class ReplayError(TrackflowError):
    """The offsets could not be moved: unknown topic, active group, or a broker error."""

    def __init__(self, message: str, *, group: str | None = None, topic: str | None = None) -> None:
        super().__init__(message)
        self.group = group
        self.topic = topic


@dataclass(frozen=True)
class PartitionMove:
    """One partition's move: where the group was, where it will be, and the log's bounds."""

    partition: int
    committed: int | None
    target: int
    low: int
    high: int

    @property
    def to_reread(self) -> int:
        """Records the group will read (again) from the target to the end of the log."""
        return self.high - self.target


def parse_when(text: str) -> int:
    """``--from-time`` value -> epoch milliseconds: ISO 8601 (naive = UTC) or epoch s / ms."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        n = int(t)
        return n if abs(n) > 100_000_000_000 else n * 1000
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReplayError(f"--from-time {text!r} is not ISO 8601 or epoch time") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def plan_offsets(
    bounds: dict[int, tuple[int, int]],
    *,
    offset: str | None = None,
    time_offsets: dict[int, int] | None = None,
) -> dict[int, int]:
    """Target offset per partition.

    Parameters:
        bounds: ``{partition: (low watermark, high watermark)}``.
        offset: ``earliest``, ``latest``, or an absolute offset (clamped to each partition's bounds);
            a negative number means that many records before the end.
        time_offsets: ``offsets_for_times`` result per partition (-1: nothing at or after the time,
            so the end of the log).
    """
    out: dict[int, int] = {}
    for p, (low, high) in sorted(bounds.items()):
        if time_offsets is not None:
            t = time_offsets.get(p, -1)
            out[p] = high if t < 0 else max(low, min(t, high))
        elif offset == "earliest":
            out[p] = low
        elif offset == "latest":
            out[p] = high
        elif offset is not None:
            try:
                n = int(offset)
            except ValueError as exc:
                raise ReplayError(f"--from-offset {offset!r} is not a number, earliest or latest") from exc
            target = high + n if n < 0 else n
            out[p] = max(low, min(target, high))
        else:
            raise ReplayError("give --from-offset or --from-time")
    return out


def resolve_topic(name: str, kafka: KafkaSettings) -> str:
    """``raw``/``enriched``/... -> the prefixed topic name; anything else is taken as is."""
    if name in TOPIC_ALIASES:
        return str(getattr(kafka.topics, name))
    return name


def replay(
    group: str,
    topic: str,
    *,
    offset: str | None = None,
    when_ms: int | None = None,
    partitions: list[int] | None = None,
    dry_run: bool = False,
    kafka: KafkaSettings | None = None,
    timeout_s: float = 10.0,
) -> list[PartitionMove]:
    """Move ``group``'s committed offsets on ``topic`` and return what moved.

    Parameters:
        group: the consumer group (it must have no active members).
        topic: the full topic name.
        offset: see :func:`plan_offsets`; exclusive with ``when_ms``.
        when_ms: move to the first record whose timestamp is at or after this time.
        partitions: only these partitions (default: all).
        dry_run: compute and return the moves without applying them.
    """
    if (offset is None) == (when_ms is None):
        raise ReplayError("give exactly one of --from-offset and --from-time", group=group, topic=topic)
    kafka = kafka or KafkaSettings()
    conf = kafka.client_config()
    admin = AdminClient(conf)
    meta = admin.list_topics(timeout=timeout_s)  # not topic=...: that can auto-create the topic
    tmeta = meta.topics.get(topic)
    if tmeta is None or tmeta.error is not None or not tmeta.partitions:
        raise ReplayError(f"topic {topic!r} does not exist", group=group, topic=topic)
    parts = sorted(tmeta.partitions)
    if partitions:
        unknown = sorted(set(partitions) - set(parts))
        if unknown:
            raise ReplayError(f"topic {topic!r} has no partition(s) {unknown}", group=group, topic=topic)
        parts = sorted(set(partitions))

    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        bounds = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in parts
        }
        committed = {
            tp.partition: (tp.offset if tp.offset >= 0 else None)
            for tp in consumer.committed([TopicPartition(topic, p) for p in parts], timeout=timeout_s)
        }
        time_offsets: dict[int, int] | None = None
        if when_ms is not None:
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, when_ms) for p in parts], timeout=timeout_s
            )
            time_offsets = {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()

    targets = plan_offsets(bounds, offset=offset, time_offsets=time_offsets)
    moves = [PartitionMove(p, committed.get(p), targets[p], bounds[p][0], bounds[p][1]) for p in parts]
    if dry_run:
        return moves

    _require_inactive(admin, group, topic, timeout_s)
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, m.partition, m.target) for m in moves]
    )
    futures = admin.alter_consumer_group_offsets([request], request_timeout=timeout_s)
    for fut in futures.values():
        try:
            result = fut.result()
        except KafkaException as exc:
            raise ReplayError(
                f"could not move the offsets of {group!r}: {exc}", group=group, topic=topic
            ) from exc
        for tp in result.topic_partitions:
            if tp.error is not None:
                raise ReplayError(f"partition {tp.partition}: {tp.error}", group=group, topic=topic)
    return moves


def _require_inactive(admin: AdminClient, group: str, topic: str, timeout_s: float) -> None:
    futures = admin.describe_consumer_groups([group], request_timeout=timeout_s)
    for fut in futures.values():
        try:
            desc = fut.result()
        except KafkaException:
            return  # an unknown group has no members: offsets can be set
        if desc.members:
            raise ReplayError(
                f"consumer group {group!r} has {len(desc.members)} active member(s); stop its consumers "
                "(trackflow worker / trackflow sink) first",
                group=group,
                topic=topic,
            )


@click.command("replay")
@click.option("--group", required=True, help="Consumer group, e.g. tf.pipeline (workers) or tf.sink.")
@click.option(
    "--topic",
    required=True,
    help="Topic: raw, enriched, invalid, sessions, fx (prefixed with TRACKFLOW_TOPIC_PREFIX) or a full name.",
)
@click.option(
    "--from-offset",
    "from_offset",
    default=None,
    help="earliest, latest, an absolute offset, or -N (N records before the end), per partition.",
)
@click.option(
    "--from-time",
    "from_time",
    default=None,
    help="ISO 8601 time (naive = UTC) or epoch s/ms: the first record at or after it.",
)
@click.option("--partition", "partitions", multiple=True, type=int, help="Only this partition (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the moves without applying them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def replay_cmd(
    group: str,
    topic: str,
    from_offset: str | None,
    from_time: str | None,
    partitions: tuple[int, ...],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Reset consumer group GROUP's offsets on TOPIC to an offset or a time, for a replay or backfill.

    Stop the group's consumers first; start them again afterwards and they re-read from there.
    Sinks are idempotent, so records read twice are not stored twice.
    """
    kafka = KafkaSettings()
    full = resolve_topic(topic, kafka)
    when = parse_when(from_time) if from_time is not None else None
    moves = replay(
        group,
        full,
        offset=from_offset,
        when_ms=when,
        partitions=list(partitions) or None,
        dry_run=dry_run,
        kafka=kafka,
    )
    rows: list[dict[str, Any]] = [{**asdict(m), "to_reread": m.to_reread} for m in moves]
    if as_json:
        from trackflow.cli import echo_json

        echo_json({"group": group, "topic": full, "dry_run": dry_run, "partitions": rows})
        return
    verb = "would move" if dry_run else "moved"
    click.echo(f"{verb} group {group} on {full}:")
    click.echo(f"  {'PART':>4} {'COMMITTED':>10} {'TARGET':>10} {'LOW':>10} {'HIGH':>10} {'RE-READ':>10}")
    for m in moves:
        committed = "-" if m.committed is None else str(m.committed)
        click.echo(
            f"  {m.partition:>4} {committed:>10} {m.target:>10} {m.low:>10} {m.high:>10} {m.to_reread:>10}"
        )
    click.echo(f"  {sum(m.to_reread for m in moves)} records to (re)read")


commands: list[click.Command] = [replay_cmd]
