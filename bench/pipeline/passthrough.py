"""A bare Faust pass-through agent: the framework's limit on this broker, for the benchmark.

Same Faust settings (but a 0.1 s commit interval with ``--fast``, see there), the same
librdkafka output path (producer flushed before every commit) and the same garbage-collector
tuning as ``trackflow worker``, but the agent only forwards each raw record to
``<prefix>bench.passthrough``. Run by ``bench/pipeline/run.py``.

By default it is the textbook agent (``async for event in stream.events()``) on Faust's own fetch
loop: the framework's limit. With ``--fast`` it reads its events the way the worker does
(:mod:`pipeline.fastpath`: the fetch loop without ``wait_first`` per record, and batches taken
straight from the channel's queue), which shows the limit of the worker's own consumption path.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import faust

from pipeline.fastpath import DIRECT_QUEUE_RUNS, install_fast_drain, record_batches
from pipeline.worker import MAX_FETCH_BYTES, Outputs, _guard_offsets, init_offsets, tune_gc
from trackflow.config import KafkaSettings


def main() -> None:
    kafka = KafkaSettings()
    topics = kafka.topics
    fast = "--fast" in sys.argv[1:]
    app_id = f"{kafka.topic_prefix}passthrough{'-fast' if fast else ''}"
    init_offsets(kafka, app_id, topics.raw)
    # the benchmark's own folder, not the current directory (Faust's default)
    datadir = Path(os.environ.get("TRACKFLOW_HOME", tempfile.gettempdir())) / f"{app_id}-data"
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        app_id,
        broker=[f"kafka://{h}" for h in kafka.kafka_bootstrap.split(",")],
        processing_guarantee="at_least_once",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10_000,
        # on the worker's path 200,000 events took less than the worker's 1 s commit interval,
        # so the benchmark, which measures from the group's commits, saw one commit only
        broker_commit_interval=0.1 if fast else 1.0,
        stream_buffer_maxsize=8192,
        consumer_max_fetch_size=MAX_FETCH_BYTES,  # as the worker (see there)
    )
    out = Outputs(kafka)
    target = f"{kafka.topic_prefix}bench.passthrough"
    faust_flush = app.producer.flush

    async def flush() -> None:
        await out.flush()
        await faust_flush()

    app.producer.flush = flush  # type: ignore[method-assign]
    raw = app.topic(
        topics.raw, key_serializer="raw", value_serializer="raw", maxsize=DIRECT_QUEUE_RUNS if fast else None
    )

    if fast:
        install_fast_drain(app.consumer, direct_topics=frozenset({topics.raw}))
        done: dict[Any, int] = {}  # raw partition -> the offset after the last record forwarded
        # it acknowledges nothing either, so commits follow what it forwarded, as the worker's frontier
        _guard_offsets(app.consumer, topics.raw, processed=done.get)

        @app.agent(raw, concurrency=1)
        async def passthrough_fast(stream: Any) -> None:
            async for batch in record_batches(stream):
                for tp, records in batch:
                    for rec in records:
                        out.send(target, rec.key or b"", rec.value)
                    done[tp] = records[-1].offset + 1
    else:

        @app.agent(raw, concurrency=1)
        async def passthrough(stream: Any) -> None:
            async for event in stream.events():
                out.send(target, event.key or b"", event.value)

    sys.argv[1:] = []  # Faust's command line parses argv
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    tune_gc()  # as the worker does
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
