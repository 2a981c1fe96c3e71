"""The sweep: wake sessions with due work, tend their runners, settle what they did.

Each pass reads, decides with pure functions (:func:`plan_pool`,
:func:`decide_liveness`, :func:`plan_retry`) and acts. It sleeps until the earliest
``next_due_at``, the sweep interval, or a change, whichever comes first, and its cost
follows the sessions with due work or a live runner: idle sessions' files are never
opened. One session's error is logged with its id and never stops the others.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from cronbox_shared import sessiondb as sdb
from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.models import MessageStatus, RunOutcome
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, parse_utc
from host.delivery import Delivery
from host.liveness import Claim, LivenessAction, decide_liveness, plan_retry
from host.pool import Live, Waiting, plan_pool
from host.runtimes import RunnerHandle, RunnerSpec, Runtime
from host.store import RowFate, Session, Store

log = logging.getLogger("cronbox.sweep")
T = TypeVar("T")
QUARANTINE_BASE = 5.0
_QUIET = (RunOutcome.OK, RunOutcome.SKIPPED)
QUARANTINE_MAX = 300.0


@dataclass(frozen=True)
class SweepConfig:
    """Timing and limits of the sweep; see the configuration table in README.md."""

    sweep_interval: float = DEFAULTS.sweep_interval
    max_containers: int = DEFAULTS.max_containers
    idle_timeout: float = DEFAULTS.idle_timeout
    task_timeout: float = DEFAULTS.task_timeout
    live_poll: float = 0.25
    heartbeat_ceiling: float = 30.0
    startup_grace: float = 30.0
    stop_grace: float = 10.0
    runner_poll: float = DEFAULTS.runner_poll
    retry_base: float = 5.0


@dataclass(frozen=True)
class StartRecord:
    """One runner start: which session, when its work was due, how late the start was."""

    session_id: str
    due_at: datetime
    started_at: datetime

    @property
    def lateness(self) -> float:
        return (self.started_at - self.due_at).total_seconds()


@dataclass
class LiveRunner:
    """What the sweep knows of one running runner."""

    handle: RunnerHandle
    session: Session
    busy: bool = True
    idle_since: datetime | None = None
    claims: list[Claim] = field(default_factory=list)
    stopping: bool = False


class Sweeper:
    """Owns the live runners and runs the sweep loop; the only writer while the host runs."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        delivery: Delivery,
        config: SweepConfig,
        clock: Clock,
        runner_env: Callable[[Session], dict[str, str]] | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.delivery = delivery
        self.config = config
        self.clock = clock
        self.runner_env = runner_env or self.default_runner_env
        self.live: dict[str, LiveRunner] = {}
        self.waiting: dict[str, datetime] = {}
        self.accepting = True
        self._wake = anyio.Event()
        self.started_total = 0
        self.peak_live = 0
        self.starts: deque[StartRecord] = deque(maxlen=10_000)
        self.quarantine: dict[str, tuple[datetime, int]] = {}

    # --- plumbing --------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop run a pass now (something changed)."""
        self._wake.set()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    def default_runner_env(self, session: Session) -> dict[str, str]:
        """The session's runner settings, rendered for its environment.

        What the host knows (the session's agent and zone, the sweep's timings, the
        store's limits) is set here; the rest (``gate_timeout``, ``max_batch``) an
        operator may set in the host's own environment, and the default applies
        otherwise. Raises RunnerConfigError for a bad value there.
        """
        settings = RunnerSettings.from_env(
            os.environ,
            session_dir=self.store.session_dir(session.id).resolve(),
            provider=session.agent,
            timezone=session.timezone,
            idle_timeout=self.config.idle_timeout,
            poll_interval=self.config.runner_poll,
            min_interval=self.store.limits.min_interval.total_seconds(),
            max_tasks=self.store.limits.max_tasks_per_session,
            secret_names=(),
        )
        return settings.to_env()

    # --- start-up --------------------------------------------------------------------

    async def recover(self) -> None:
        """Re-derive state from the files and adopt or reap runners a previous host left."""
        known = {s.id: s for s in await self._io(self.store.list_sessions)}
        stale = await self._io(self.store.stale_sessions)
        for session_id in stale:
            try:
                await self._io(self.store.sync_session, session_id)
            except Exception:
                log.exception("session %s: could not re-derive its state", session_id)
        for handle in await self.runtime.list_own(self.store.home):
            session = known.get(handle.session_id)
            if session is None:
                log.warning(
                    "reaping runner %s of unknown session %s", handle.ref, handle.session_id
                )
                await self.runtime.kill(handle)
                continue
            log.info("adopting runner %s of session %s", handle.ref, session.name)
            self.live[session.id] = LiveRunner(handle=handle, session=session)
        log.info(
            "%d sessions, %d re-derived from their files, %d runners adopted",
            len(known), len(stale), len(self.live),
        )  # fmt: skip

    # --- the loop ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sweep until :meth:`stop_accepting`; each pass waits on a fresh event."""
        task_status.started()
        while self.accepting:
            self._wake = anyio.Event()
            try:
                await self.tick()
            except Exception:
                log.exception("sweep pass failed; retrying at the next pass")
            delay = await self._io(self._next_delay)
            with anyio.move_on_after(delay):
                await self._wake.wait()

    def _next_delay(self) -> float:
        now = self.clock.now()
        delay = self.config.sweep_interval
        if self.live or self.waiting:
            delay = min(delay, self.config.live_poll)
        nxt = self.store.next_wake()
        if nxt is not None:
            until = (nxt - now).total_seconds()
            # Work already due is being served (or is waiting for a slot, or quarantined);
            # polling for it at the live rate keeps the loop from spinning.
            delay = min(delay, until if until > 0 else self.config.live_poll)
        return delay

    async def tick(self) -> None:
        """One pass: tend live runners, then wake sessions with due work."""
        for session_id in list(self.live):
            try:
                await self._tend(session_id)
            except Exception:
                log.exception("session %s: tending its runner failed", session_id)
        if not self.accepting:
            return
        now = self.clock.now()
        due = await self._io(self.store.due_sessions, now)
        self.waiting = {
            sid: parse_utc(at)
            for sid, at in due
            if sid not in self.live and self.quarantine.get(sid, (now, 0))[0] <= now
        }
        plan = plan_pool(
            [Waiting(sid, at) for sid, at in self.waiting.items()],
            [Live(sid, r.busy, r.idle_since) for sid, r in self.live.items()],
            self.config.max_containers,
            timedelta(seconds=self.config.idle_timeout),
            now,
        )
        for session_id in plan.evict:
            runner = self.live[session_id]
            if not runner.stopping:
                runner.stopping = True
                log.info("session %s: idle runner yields its slot", runner.session.name)
                await self.runtime.stop(runner.handle, self.config.stop_grace)
                await self._tend(session_id)
        for session_id in plan.start:
            try:
                await self._start(session_id)
            except Exception:
                # Back off so one broken session neither floods the log nor spins the loop.
                _, failures = self.quarantine.get(session_id, (now, 0))
                pause = min(QUARANTINE_MAX, QUARANTINE_BASE * 2**failures)
                self.quarantine[session_id] = (now + timedelta(seconds=pause), failures + 1)
                log.exception(
                    "session %s: could not start its runner; next try in %d s", session_id, pause
                )
            else:
                self.quarantine.pop(session_id, None)

    async def _start(self, session_id: str) -> None:
        await self._io(self.store.prepare_due, session_id)
        session = await self._io(self.store.get_session, session_id)
        if session.next_due_at is None or parse_utc(session.next_due_at) > self.clock.now():
            return  # catch-up moved or settled the work; nothing is due after all
        spec = RunnerSpec(
            session_id=session.id,
            session_dir=self.store.session_dir(session.id).resolve(),
            home=self.store.home.resolve(),
            env=self.runner_env(session),
        )
        due_at = parse_utc(session.next_due_at)
        handle = await self.runtime.start(spec)
        self.live[session.id] = LiveRunner(handle=handle, session=session)
        self.waiting.pop(session.id, None)
        self.started_total += 1
        self.peak_live = max(self.peak_live, len(self.live))
        self.starts.append(StartRecord(session.id, due_at, self.clock.now()))
        log.info("session %s: runner %s started", session.name, handle.ref)

    async def _tend(self, session_id: str) -> None:
        """Settle acks and replies of one live runner, enforce liveness, notice its exit."""
        runner = self.live[session_id]
        default_timeout = timedelta(seconds=self.config.task_timeout)
        runner.claims = await self._settle(runner.session, default_timeout)
        await self._deliver(runner.session)
        now = self.clock.now()
        if not await self.runtime.is_running(runner.handle):
            await self._after_exit(runner, reason="runner exited while working")
            return
        heartbeat = await self._io(_mtime, self.store.session_dir(session_id) / sdb.HEARTBEAT)
        verdict = decide_liveness(
            now,
            runner.handle.started_at,
            heartbeat,
            runner.claims,
            timedelta(seconds=self.config.heartbeat_ceiling),
            timedelta(seconds=self.config.startup_grace),
        )
        if verdict.action is not LivenessAction.OK:
            log.warning("session %s: killing runner: %s", runner.session.name, verdict.reason)
            await self.runtime.kill(runner.handle)
            await self._after_exit(
                runner, reason=f"runner killed: {verdict.reason}", timed_out=verdict.timed_out
            )
            return
        session = await self._io(self.store.get_session, session_id)
        due_now = session.next_due_at is not None and parse_utc(session.next_due_at) <= now
        busy = bool(runner.claims) or due_now
        if busy:
            runner.idle_since = None
        elif runner.busy or runner.idle_since is None:
            runner.idle_since = now
        runner.busy = busy

    async def _after_exit(
        self, runner: LiveRunner, reason: str, timed_out: tuple[str, ...] = ()
    ) -> None:
        """Settle what an exited runner left: last acks and replies, then its claimed rows."""
        session_id = runner.session.id
        default_timeout = timedelta(seconds=self.config.task_timeout)
        claims = await self._settle(runner.session, default_timeout)
        await self._deliver(runner.session)
        now = self.clock.now()
        fates: list[RowFate] = []
        rows = {r.id: r for r in await self._io(self.store.inbound_rows, session_id)}
        for claim in claims:
            row = rows.get(claim.message_id)
            if row is None:
                continue
            if claim.message_id in timed_out:
                error = f"timed out after {int(claim.timeout.total_seconds())} s"
                fates.append(
                    RowFate(
                        row.id, MessageStatus.FAILED, row.tries + 1, None, error, RunOutcome.TIMEOUT
                    )
                )
                continue
            plan = plan_retry(row.tries, now, base=timedelta(seconds=self.config.retry_base))
            status = MessageStatus.PENDING if plan.status == "pending" else MessageStatus.FAILED
            note = f"{reason} (try {plan.tries})"
            fates.append(RowFate(row.id, status, plan.tries, plan.process_after, note))
        await self._io(self.store.requeue, session_id, fates)
        del self.live[session_id]
        if fates:
            log.warning("session %s: %s; %d rows requeued", runner.session.name, reason, len(fates))
        else:
            log.info("session %s: runner finished", runner.session.name)
        self.wake()

    async def _settle(self, session: Session, default_timeout: timedelta) -> list[Claim]:
        settlement = await self._io(self.store.settle_acks, session.id, default_timeout)
        for done in settlement.finished:
            what = done.series_id or done.message_id
            detail = f": {done.error}" if done.error else ""
            level = logging.INFO if done.outcome in _QUIET else logging.WARNING
            log.log(level, "session %s: %s %s%s", session.name, what, done.outcome.value, detail)
        return settlement.claims

    async def _deliver(self, session: Session) -> None:
        rows = await self._io(self.delivery.pending, session.id)
        if rows:
            handled = await self.delivery.deliver(session, rows)
            if any(h.status == "applied" for h in handled):
                self.wake()

    # --- shutdown --------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Stage one of shutdown: wake no more sessions."""
        self.accepting = False
        self.wake()

    async def drain(self) -> None:
        """Stages two and three: let runners finish within the grace, then stop them.

        Every row a runner leaves claimed goes back to ``pending`` with a retry.
        """
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for runner in list(self.live.values()):
                    tg.start_soon(self.runtime.stop, runner.handle, self.config.stop_grace)
            for session_id in list(self.live):
                try:
                    runner = self.live[session_id]
                    await self._after_exit(runner, reason="host shut down")
                except Exception:
                    log.exception("session %s: settling at shutdown failed", session_id)


def _mtime(path: Path) -> datetime | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(stamp, UTC)
