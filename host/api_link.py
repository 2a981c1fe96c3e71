"""The host's side of the HTTP API: what the API asks of the running host, the errors
that cross between them, and the listening socket the host binds before the API's
process starts (:mod:`host.api_process`).

Kept apart from :mod:`host.http`, which builds the web application, so that the host
itself starts without importing the web framework and the server: only the API's own
process needs those.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from cronbox_shared.errors import (
    AlreadyHandled,
    CronboxError,
    HttpUnavailable,
    InsecureBind,
    SessionExists,
    TaskIdTaken,
    TaskStateError,
    TooManyTasks,
)
from cronbox_shared.timeutil import fmt
from host.config import Settings
from host.metrics import Metrics
from host.service import Cronbox
from host.views import HealthOut, JobOut

if TYPE_CHECKING:
    from host.jobs import JobRunner

API_KEY_HEADER = "x-api-key"
# /health reports the sweep stalled when no pass completed within this many intervals.
STALL_INTERVALS = 3


class ShuttingDown(CronboxError, RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "the host is shutting down and takes no more changes; retry once it is back"
        )


class Unauthorized(CronboxError, PermissionError):
    def __init__(self) -> None:
        super().__init__(
            f"this API needs the {API_KEY_HEADER} header with the host's CRONBOX_API_KEY"
        )


class SweepState(Protocol):
    """What the host's answers read of the running sweep (a :class:`host.sweep.Sweeper`)."""

    started_at: datetime
    last_pass_at: datetime | None
    accepting: bool

    @property
    def live(self) -> Any: ...

    @property
    def waiting(self) -> Any: ...

    @property
    def problems(self) -> Any: ...

    def wake(self) -> None: ...


@runtime_checkable
class EngineRuntime(Protocol):
    """A runtime backed by an engine (docker) that can say which version it talks to."""

    async def engine_version(self) -> str:
        """The engine's version string; raises when the engine cannot be reached."""
        ...


class HostLink(Protocol):
    """What the API asks of the running host: what only the host knows, and the nudge
    after a change.

    Implementers must ensure every answer is the host's own state at the time of the
    call (never a copy kept by the API), that a refusal raises the ``CronboxError`` the
    host raised (its sentence kept), and that a host that cannot answer raises
    :class:`HostUnavailable` rather than hanging the request.
    """

    async def health(self) -> tuple[HealthOut, int]:
        """The health report and its status code (503 when the sweep has stalled)."""
        ...

    async def metrics(self) -> bytes:
        """The Prometheus exposition text, gauges refreshed first."""
        ...

    async def engine(self) -> str | None:
        """The runtime engine's version (None for a runtime without one)."""
        ...

    async def jobs(self) -> list[JobOut]:
        """Each background job's state."""
        ...

    async def trigger(self, job: str) -> JobOut:
        """Run one background job now; its state after the run."""
        ...

    async def changed(self) -> None:
        """Tell the sweep the API just wrote something (it looks at once)."""
        ...


@dataclass
class LocalHost:
    """The host's answers, from its own sweep, metrics, runtime and jobs (in its process)."""

    store: Cronbox
    sweep: SweepState
    settings: Settings
    metrics_: Metrics
    runtime: object = None
    jobs_: JobRunner | None = None

    def health_now(self) -> tuple[HealthOut, int]:
        now = self.store.now()
        since = self.sweep.last_pass_at or self.sweep.started_at
        lag = max(0.0, (now - since).total_seconds())
        stalled = lag > STALL_INTERVALS * self.settings.sweep_interval
        status = "stopping" if not self.sweep.accepting else "stalled" if stalled else "ok"
        problems = [
            {"session_id": sid, "session": p.session, "reason": p.reason, "at": fmt(p.at)}
            for sid, p in sorted(self.sweep.problems.items())
        ]
        if self.jobs_ is not None:
            problems += self.jobs_.stale
        report = HealthOut(
            status=status, uptime_seconds=(now - self.sweep.started_at).total_seconds(),
            sweep_lag_seconds=lag,
            last_sweep=fmt(self.sweep.last_pass_at) if self.sweep.last_pass_at else None,
            live_runners=len(self.sweep.live), pool_size=self.settings.max_containers,
            waiting=len(self.sweep.waiting), awaiting_approval=self.store.awaiting_count(),
            problems=tuple(problems),
        )  # fmt: skip
        return report, 200 if status == "ok" else 503

    async def health(self) -> tuple[HealthOut, int]:
        return self.health_now()

    def refresh_gauges(self) -> None:
        """Set the gauges read at scrape time (runs in a worker thread)."""
        now = self.store.now()
        due = self.store.due_sessions(now)
        self.metrics_.due_rows.set(sum(len(self.store.due_ids(sid)) for sid, _ in due))
        self.metrics_.pool_in_use.set(len(self.sweep.live))
        self.metrics_.pool_waiting.set(len(self.sweep.waiting))
        self.metrics_.approvals_awaiting.set(self.store.awaiting_count())
        self.metrics_.count_decisions(self.store.decision_counts())

    async def metrics(self) -> bytes:
        return await anyio.to_thread.run_sync(self.metrics_.render, self.refresh_gauges)

    async def engine(self) -> str | None:
        if not isinstance(self.runtime, EngineRuntime):
            return None
        try:
            return await self.runtime.engine_version()
        except Exception as exc:  # an engine that is down is reported, not fatal
            return f"unavailable: {exc}"

    async def jobs(self) -> list[JobOut]:
        return await self._jobs().views()

    async def trigger(self, job: str) -> JobOut:
        if not self.sweep.accepting:
            raise ShuttingDown
        return await self._jobs().trigger(job)

    async def changed(self) -> None:
        self.sweep.wake()

    def _jobs(self) -> JobRunner:
        if self.jobs_ is None:
            raise ShuttingDown
        return self.jobs_


class HostUnavailable(CronboxError, ConnectionError):
    """The host did not answer the API's question."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the host did not answer ({why}); its log says why")


class HostRefused(CronboxError):
    """A refusal the host sent back, with the status its own error maps to."""

    def __init__(self, sentence: str, status: int) -> None:
        super().__init__(sentence)
        self.status = status


def status_code(exc: CronboxError) -> int:
    """The HTTP status of a refused request."""
    if isinstance(exc, HostRefused):
        return exc.status
    if isinstance(exc, ShuttingDown | HostUnavailable):
        return 503
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, LookupError):
        return 404
    if isinstance(
        exc, TaskStateError | TaskIdTaken | SessionExists | TooManyTasks | AlreadyHandled
    ):
        return 409
    if isinstance(exc, ValueError):
        return 400
    return 500


def check_bind(settings: Settings) -> None:
    """Refuse a listening address beyond this machine when no API key guards it."""
    if settings.api_key:
        return
    host = settings.http_host
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a name that may resolve anywhere
    if not loopback:
        raise InsecureBind(host)


def bind(settings: Settings) -> socket.socket:
    """The API's listening socket, bound now so a busy port fails the start in one sentence."""
    check_bind(settings)
    host, port = settings.http_host, settings.http_port
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        raise HttpUnavailable(host, port, exc.strerror or str(exc)) from None
    return sock
