"""The runtime interface: where a session's agent runner runs (SPEC §7).

The sweep drives runners only through :class:`Runtime`; it never knows whether a runner
is a local process or a container. Implementations live beside this module, named after
their backend (``process.py``, later ``docker.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cronbox_shared.errors import RunnerStartFailed, UnknownRuntime
from host.limits import ContainerLimits

__all__ = [
    "ContainerLimits",
    "RunnerHandle",
    "RunnerSpec",
    "RunnerStartFailed",
    "Runtime",
    "UnknownRuntime",
]


@dataclass(frozen=True)
class RunnerSpec:
    """Everything a runtime needs to start one session's agent runner."""

    session_id: str
    session_dir: Path
    """Absolute path of ``$CRONBOX_HOME/sessions/<session_id>``."""
    home: Path
    """``CRONBOX_HOME`` of the host: the label that marks the runner as this host's."""
    env: Mapping[str, str]
    """The runner's settings as the host renders them (``RunnerSettings.to_env()``):
    provider, timezone, idle timeout… Only names ``RunnerSettings`` defines."""
    secrets: Mapping[str, str] = field(default_factory=dict)
    """Secrets the session's agent profile grants, by variable name (empty today).

    The runner gets them in its environment and their names as its ``secret_names``, so
    it keeps them from its gate scripts and its MCP server; no other variable of the
    host reaches it (see ``cronbox_shared.environment``)."""
    limits: ContainerLimits | None = None
    """The session's own container limits, over the host's defaults."""


@dataclass(frozen=True)
class RunnerHandle:
    """A started (or adopted) runner. Hashable, so callers may key state by it."""

    session_id: str
    ref: str
    """The runtime's own reference: a pid for ``process``, a container id for ``docker``."""
    started_at: datetime
    """Aware UTC instant the runner was started."""


class Runtime(Protocol):
    """Starts, watches and stops agent runners, one per session.

    Implementers must ensure that no method blocks the event loop (blocking work runs in
    a worker thread), that every runner they start carries ``spec.home`` as a label so
    :meth:`list_own` finds it again after the host restarts, and that a handle for a
    runner that has since gone, or whose reference now names something else (a reused
    pid), is reported as not running and is never signalled.
    """

    name: str
    """Short name used in configuration and logs (``process``, ``docker``)."""

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        """Start the session's runner and return as soon as it is running.

        Implementers must ensure the runner's environment is
        ``cronbox_shared.environment.runner_environment`` of the host's, ``spec.env`` and
        ``spec.secrets`` (plus the runtime's labels) and nothing else, that it sees the
        session dir and the home label, and raise :class:`RunnerStartFailed` when it
        cannot be started.
        """
        ...

    async def is_running(self, handle: RunnerHandle) -> bool:
        """Whether the runner is alive.

        Implementers must return ``False`` once the runner has exited, and reap it first
        when it is the host's own child, so no zombie is left behind.
        """
        ...

    async def exit_code(self, handle: RunnerHandle) -> int | None:
        """The runner's exit status (negative signal number when killed by a signal).

        Implementers must return ``None`` while the runner is running and when the
        status cannot be known (a runner adopted from an earlier host process).
        """
        ...

    async def last_words(self, handle: RunnerHandle) -> str | None:
        """The last non-empty line the runner printed (its error, when it failed).

        Implementers must return ``None`` when the runtime keeps no output of the runner,
        and read at most a bounded tail of whatever it keeps.
        """
        ...

    async def stop(self, handle: RunnerHandle, grace: float) -> None:
        """Ask the runner to stop (SIGTERM), force it (SIGKILL) after ``grace`` seconds.

        Implementers must return only once the runner and everything it spawned are
        gone, and return at once for a runner that is already gone.
        """
        ...

    async def kill(self, handle: RunnerHandle) -> None:
        """Kill the runner and everything it spawned at once (SIGKILL).

        Implementers must return only once the runner is gone.
        """
        ...

    async def list_own(self, home: Path) -> list[RunnerHandle]:
        """Live runners labelled with ``home``, including ones a previous host started.

        Implementers must return only runners whose label matches ``home`` exactly, and
        may forget the traces (pid files, exited containers) of runners that are gone.
        """
        ...

    def close(self) -> None:
        """Release what the runtime holds (an engine connection); runners keep running."""
        ...
