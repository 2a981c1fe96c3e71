"""The Docker engine for tests: present and ready, or a skip (a failure in CI).

CI sets ``REQUIRE_DOCKER=1`` after ``scripts/docker-setup``, which turns a
missing engine or agent image into a failure instead of a skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import docker
import docker.errors
import pytest
from anyio.abc import TaskStatus
from docker import DockerClient
from docker.models.containers import Container

from host.runtimes.docker import HOME_ID_FILE, HOME_LABEL, default_image, home_id

REQUIRE = "REQUIRE_DOCKER"


@functools.cache
def _client() -> DockerClient:
    # One client for the whole run: each new one would leave a socket for the GC.
    return docker.from_env(timeout=60)


def ready_engine() -> DockerClient:
    """The engine with the agent image built, else skip (or fail when required)."""
    image = os.environ.get("CRONBOX_IMAGE") or default_image()
    try:
        client = _client()
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


class EngineProxy:
    """A unix socket that relays to the engine's, and can be cut and restored: the host
    under test talks to the real engine through it (``DOCKER_HOST=unix://<path>``), and
    the test takes the engine away from it and gives it back."""

    def __init__(self, path: Path, engine_socket: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.engine_socket = engine_socket
        self._scope: anyio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Relay until :meth:`cut`; every open connection is dropped then."""
        self.path.unlink(missing_ok=True)
        with anyio.CancelScope() as scope:
            self._scope = scope
            listener = await anyio.create_unix_listener(self.path)
            async with listener, anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    client = await listener.accept()
                    tg.start_soon(self._relay, client)
        self.path.unlink(missing_ok=True)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_unix(self.engine_socket) as upstream:

            async def pump(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream) -> None:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError,
                                         anyio.ClosedResourceError):  # fmt: skip
                    async for chunk in src:
                        await dst.send(chunk)
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await dst.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)

    def cut(self) -> None:
        """The engine is gone: close the socket and every connection through it."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
