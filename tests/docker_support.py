"""The Docker engine for tests: present and ready, or a skip (a failure in CI).

CI sets ``CRONBOX_REQUIRE_DOCKER=1`` after ``scripts/docker-setup``, which turns a
missing engine or agent image into a failure instead of a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import pytest
from docker import DockerClient
from docker.models.containers import Container

from host.runtimes.docker import HOME_ID_FILE, HOME_LABEL, default_image, home_id

REQUIRE = "CRONBOX_REQUIRE_DOCKER"


def ready_engine() -> DockerClient:
    """The engine with the agent image built, else skip (or fail when required)."""
    image = os.environ.get("CRONBOX_IMAGE") or default_image()
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"no Docker engine ({str(exc).splitlines()[0][:120]})")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        _unavailable(f"the agent image {image} is not built (cronbox image build)")
    return client


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE):
        pytest.fail(f"{reason}, and {REQUIRE} is set")
    pytest.skip(reason)


def containers_of(client: DockerClient, home: Path, all: bool = False) -> list[Container]:
    """The containers labelled with this home (running only, unless ``all``)."""
    if not (home / HOME_ID_FILE).exists():
        return []  # no container was ever started for it
    label = f"{HOME_LABEL}={home_id(home)}"
    return list(client.containers.list(all=all, filters={"label": label}))


@contextmanager
def no_strays(client: DockerClient, home: Path) -> Iterator[None]:
    """Remove whatever containers of ``home`` a failing test left behind."""
    try:
        yield
    finally:
        for container in containers_of(client, home, all=True):
            container.remove(force=True)
