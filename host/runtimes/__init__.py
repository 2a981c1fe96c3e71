"""Runtimes: where a session's agent runner runs. See :mod:`host.runtimes.base`."""

from __future__ import annotations

from cronbox_shared.timeutil import Clock
from host.runtimes.base import (
    RunnerHandle,
    RunnerSpec,
    RunnerStartFailed,
    Runtime,
    RuntimeNotAvailable,
    UnknownRuntime,
)
from host.runtimes.process import ProcessRuntime

__all__ = [
    "ProcessRuntime",
    "RunnerHandle",
    "RunnerSpec",
    "RunnerStartFailed",
    "Runtime",
    "RuntimeNotAvailable",
    "UnknownRuntime",
    "get_runtime",
]


def get_runtime(name: str, *, clock: Clock | None = None) -> Runtime:
    """The runtime configured as ``CRONBOX_RUNTIME``; ``clock`` stamps ``started_at``."""
    if name == "process":
        return ProcessRuntime(clock=clock)
    if name == "docker":
        raise RuntimeNotAvailable(name)
    raise UnknownRuntime(name)
