"""Process-level tuning shared by the long-running services (collector, pipeline worker)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a streaming service.

    The services allocate several short-lived objects per message or request (asyncio tasks and
    futures in Faust, dicts and futures per request in the collector), so the default thresholds run
    a young collection every few messages and full collections that walk every long-lived object
    (the frameworks, the state cache). Objects alive after start-up are moved out of the collector's
    reach (:func:`gc.freeze`) and collections run less often. Called once per process, once
    start-up is done.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
