"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cronbox_shared.timeutil import ManualClock
from host.service import Cronbox


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the backend the host uses)."""
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand (a Thursday morning, UTC)."""
    return ManualClock("2026-01-15T08:00:00Z")


@pytest.fixture
def app(tmp_path: Path, clock: ManualClock) -> Cronbox:
    """The service over a fresh home, on the test's clock."""
    return Cronbox(tmp_path / "home", clock=clock)


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each runtime in turn: the test runs with local processes, then in containers."""
    name: str = request.param
    if name != "docker":
        yield name
        return
    from tests.docker_support import no_strays, ready_engine

    client = ready_engine()
    with no_strays(client, tmp_path / "home"):
        yield name
