"""Fakes for the collector's unit tests: an in-memory publisher and a temporary app registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.app import create_app
from collector.exceptions import PublishError
from collector.settings import CollectorSettings
from trackflow.apps import App, AppRegistry
from trackflow.config import KafkaSettings


class MemoryPublisher:
    """Keeps published messages in a list; ``fail`` makes every publish raise PublishError."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.fail = False
        self.is_ready = True

    async def publish(self, topic: str, messages: Sequence[tuple[bytes, bytes]], wait_s: float) -> None:
        if self.fail:
            raise PublishError("broker down", topic=topic, reason="_TRANSPORT")
        self.messages.extend((topic, k, v) for k, v in messages)

    async def ready(self) -> bool:
        return self.is_ready

    def close(self) -> None:
        pass


@pytest.fixture
def registry(tmp_path: Path) -> AppRegistry:
    return AppRegistry(tmp_path / "apps.json")


@pytest.fixture
def app_key(registry: AppRegistry) -> tuple[App, str]:
    app, wkey, _ = registry.add("Unit App", app_id="unit-app")
    return app, wkey


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


def make_client(registry: AppRegistry, publisher: MemoryPublisher, **settings: Any) -> httpx.AsyncClient:
    """An httpx client calling the collector app in-process (the publisher is given, so no lifespan)."""
    s = CollectorSettings(**settings)
    kafka = KafkaSettings(topic_prefix="unit.")
    app = create_app(s, registry=registry, publisher=publisher, kafka=kafka)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://collector")


@pytest.fixture
def client_factory(registry: AppRegistry, publisher: MemoryPublisher) -> Any:
    """``client_factory(**settings)``: a client on a collector with those settings."""
    return lambda **settings: make_client(registry, publisher, **settings)


@pytest.fixture
async def client(
    registry: AppRegistry, publisher: MemoryPublisher, app_key: tuple[App, str]
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(registry, publisher) as c:
        yield c
