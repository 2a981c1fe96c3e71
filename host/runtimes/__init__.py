"""Runtimes: where a session's agent runner runs. See :mod:`host.runtimes.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cronbox_shared.timeutil import Clock
from host.limits import ContainerLimits
from host.runtimes.base import (
    RunnerHandle,
    RunnerSpec,
    RunnerStartFailed,
    Runtime,
    UnknownRuntime,
)
from host.runtimes.process import ProcessRuntime

if TYPE_CHECKING:
    from host.runtimes.docker import DockerConfig

__all__ = [
    "ContainerLimits",
    "ProcessRuntime",
    "RunnerHandle",
    "RunnerSpec",
    "RunnerStartFailed",
    "Runtime",
    "UnknownRuntime",
    "get_runtime",
]


def get_runtime(
    name: str,
    *,
    clock: Clock | None = None,
    docker: DockerConfig | None = None,
    fork: bool = True,
) -> Runtime:
    """The runtime configured as ``CRONBOX_RUNTIME``; ``clock`` stamps ``started_at``.

    The process runtime forks its runners from a warm template unless ``fork`` is False.

    The docker runtime takes its ``docker`` config (the image and the containers'
    default limits; this release's image with the built-in limits when None). Creating a
    runtime contacts no engine.
    """
    if name == "process":
        return ProcessRuntime(clock=clock, fork=fork)
    if name == "docker":
        from host.runtimes.docker import DockerConfig, DockerRuntime

        return DockerRuntime(docker or DockerConfig.default(), clock=clock)
    raise UnknownRuntime(name)
