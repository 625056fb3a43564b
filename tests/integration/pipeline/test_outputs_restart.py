"""The worker's output producer can be restarted without losing a record (real broker)."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.worker import Outputs
from trackflow.config import KafkaSettings


def test_restart_purges_and_resends_every_undelivered_record(topics: Any, consume: Any) -> None:
    out = Outputs(KafkaSettings())
    keys = [f"k{i}".encode() for i in range(3000)]
    for i, k in enumerate(keys):
        out.send(topics.sessions, k, b"v%d" % i, i % 4 if i % 2 else None)
    # records still queued or in flight are purged from the old producer and sent by a new one
    resent = out.restart()
    asyncio.run(out.flush())
    assert out.restarts == 1 and 0 <= resent <= len(keys) and not out.errors
    got = consume(topics.sessions, len(keys), timeout=60)
    assert {m.key() for m in got} >= set(keys)  # nothing lost (duplicates are allowed)
    by_key = {m.key(): m for m in got}
    assert all(by_key[k].partition() == i % 4 for i, k in enumerate(keys) if i % 2)
