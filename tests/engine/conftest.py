"""Fixtures of the engine tests: one private dockerd per session and the stand-in images.

Every test under tests/engine/ is marked `engine` (`pytest -m engine` selects them). In CI
(CI=true) a missing or failing engine fails the run; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.engine.daemon import CACHE_DIR, Engine, EngineUnavailable, private_engine

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        with private_engine() as running:
            yield running
    except EngineUnavailable as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Docker engine: {error}")
        pytest.skip(f"no Docker engine: {error}")


@pytest.fixture(scope="session")
def engine_client(engine: Engine) -> docker.DockerClient:
    return engine.client


@pytest.fixture(scope="session")
def engine_images(engine_client: docker.DockerClient) -> dict[str, str]:
    from tests.engine.images import build_all

    return build_all(engine_client, CACHE_DIR)
