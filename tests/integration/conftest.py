from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.localdev.broker import EmbeddedBroker
from streams.localdev.model_server import LocalModelServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Tansu broker for the session; tests isolate themselves by topic prefix and app id."""
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    """The real local model (llama.cpp + Gemma 3 270M) over the OpenAI API."""
    with LocalModelServer(parallel=2, ctx_per_slot=1024, log_path=tmp_path_factory.mktemp("model") / "model.log") as m:
        yield m


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
