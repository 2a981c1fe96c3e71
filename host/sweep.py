"""The sweep: wake sessions with due work, tend their runners, settle what they did.

Each pass reads, decides with pure functions (:func:`plan_pool`,
:func:`decide_liveness`, and the settlement plans of :mod:`host.settlement` behind the
service layer) and acts; its writes go through the host's one writer. It sleeps until
the earliest ``next_due_at``, the sweep interval, or a change, whichever comes first,
and its cost follows the sessions with due work or a live runner: idle sessions' files
are never opened. One session's error is logged with its id and never stops the
others. Stopping an idle runner happens beside the loop, so no session waits for it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from cronbox_shared import sessiondb as sdb
from cronbox_shared.agents import AgentProfile
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import (
    EngineUnavailable,
    InvalidInput,
    OutboxUnreadable,
    SessionNotFound,
)
from cronbox_shared.models import DeliveryStatus, RunOutcome
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, Instant, parse_utc
from host.delivery import Delivery
from host.gateway import ROUTES as GATEWAY_ROUTES
from host.gateway import Gateways
from host.limits import ContainerLimits
from host.liveness import Claim, LivenessAction, decide_liveness
from host.logs import session_fields
from host.metrics import Metrics
from host.pool import Live, Waiting, plan_pool
from host.runtimes import RunnerHandle, RunnerSpec, Runtime
from host.service import UNDELIVERED_BATCH, Cronbox
from host.settlement import Finished, SettlementPlan
from host.store.records import Session
from host.writer import read

log = logging.getLogger("cronbox.sweep")
QUARANTINE_BASE = 5.0
_QUIET = (RunOutcome.OK, RunOutcome.SKIPPED)
QUARANTINE_MAX = 300.0
# Beyond the runners' own stop grace, how long shutdown waits for their settlement.
DRAIN_MARGIN = 10.0
PRUNE_EVERY = timedelta(hours=1)
# How long after its runner exits a session's outbox is still watched: an MCP request
# the agent made just before its runner went idle is applied within a pass, not at the
# session's next wake.
OUTBOX_WATCH = timedelta(minutes=5)
# How long a session whose doorbell rang is watched: long enough to read its outbox
# again if the first read fails; the writer rings again after every write.
RING_WATCH = timedelta(seconds=30)
# How early the loop wakes to sleep out the rest of a planned wait precisely (the
# event loop's poll rounds its timeout up to whole milliseconds).
WAKE_LEAD = 0.001


@dataclass
class Watched:
    """A session whose runner is gone, watched for late requests in its outbox."""

    session: Session
    until: datetime


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
    idle_poll: float = DEFAULTS.idle_poll
    change_signal: bool = True
    """Whether idle runners and the sweep wait on change signals (inotify) rather than
    polling at ``runner_poll`` and ``live_poll``."""
    retry_base: float = 5.0
    keep_finished: float = DEFAULTS.keep_finished
    outbox_stall: float = DEFAULTS.outbox_stall
    tend_concurrency: int = 8
    """Runners tended at once in a pass (1: one after another, the old path)."""


OUTBOX_CHANGED = "outbox"
"""The change signal's tag prefix for a watched session's outbox: ``outbox:<session id>``."""


def outbox_tag(session_id: str) -> str:
    """The change signal's tag for one session's outbox."""
    return f"{OUTBOX_CHANGED}:{session_id}"


def outbox_sessions(tags: Collection[str]) -> set[str]:
    """The sessions whose outboxes the change signal's ``tags`` name."""
    prefix = f"{OUTBOX_CHANGED}:"
    return {t.removeprefix(prefix) for t in tags if t.startswith(prefix)}


def live_delay(
    live: Sequence[LiveRunner],
    waiting: bool,
    config: SweepConfig,
    watching: bool,
    now: datetime,
    more_to_read: bool = False,
) -> float:
    """How soon the sweep must look at its live runners (and watched outboxes) again.

    At the live rate while a runner works, is stopping, a session waits for a slot, or
    an outbox has more than one pass took in (or a channel to retry).
    With their outboxes watched (a runner's writes wake the sweep), an idle pool is
    looked at only when a runner's idle time runs out, or at the slow fallback poll.
    """
    if not watching or waiting or more_to_read or any(r.busy or r.stopping for r in live):
        return config.live_poll
    delay = config.idle_poll
    for runner in live:
        if runner.idle_since is not None:
            left = (runner.idle_since - now).total_seconds() + config.idle_timeout
            delay = min(delay, max(config.live_poll, left))
    return delay


@dataclass(frozen=True)
class StartRecord:
    """One runner start: which session, when its work was due, how late the start was."""

    session_id: str
    due_at: datetime
    started_at: datetime

    @property
    def lateness(self) -> float:
        return (self.started_at - self.due_at).total_seconds()


@dataclass(frozen=True)
class _Wakeup:
    """What the sweep reads to start a session's runner."""

    caught_up: SettlementPlan
    """What the catch-up rule did to the session's due rows (see ``prepare_due``)."""
    session: Session
    profile: AgentProfile
    refused: InvalidInput | None
    """Why no runner can serve the session's agent profile (``profile`` is then a stand-in)."""
    session_dir: Path
    woken_for: tuple[str, ...]


@dataclass
class LiveRunner:
    """What the sweep knows of one running runner."""

    handle: RunnerHandle
    session: Session
    busy: bool = True
    idle_since: datetime | None = None
    claims: list[Claim] = field(default_factory=list)
    stopping: bool = False
    woken_for: tuple[str, ...] = ()
    """The due rows that woke it (what its failure to start counts against)."""
    worked: bool = False
    """Whether it has claimed or finished anything."""
    settling: bool = False
    """Whether its exit is being settled (by the pass, or by the task that stopped it)."""
    tended_at: datetime | None = None
    """When a pass last tended it (None: not yet)."""


@dataclass
class Quarantined:
    """A session whose outbox cannot be read safely: not woken, not read, until it is sane.

    What its runner left claimed is held here and settled when the quarantine lifts (its
    acks may be readable by then), so a quarantine neither loses nor repeats a run.
    """

    session: Session
    reason: str
    since: datetime
    claims: list[Claim] = field(default_factory=list)
    timed_out: tuple[str, ...] = ()
    hot_journal: bool = False


@dataclass(frozen=True)
class Problem:
    """Why a session's work is not getting done, for the log and ``cronbox status``."""

    session: str
    reason: str
    at: datetime


class Sweeper:
    """Owns the live runners and runs the sweep loop.

    Every write goes through the host's one writer (the delivery's); every read and
    file check runs in a worker thread, so the event loop never waits on SQLite.
    """

    def __init__(
        self,
        store: Cronbox,
        runtime: Runtime,
        delivery: Delivery,
        config: SweepConfig,
        clock: Clock,
        runner_env: Callable[[Session, AgentProfile], dict[str, str]] | None = None,
        host_id: str | None = None,
        metrics: Metrics | None = None,
        gateways: Gateways | None = None,
        changes: ChangeWatch | None = None,
    ) -> None:
        self.store = store
        self.changes = changes
        """The change signal the host waits on; the sweep adds the outboxes it watches."""
        self._outbox_watches: set[Path] = set()
        self.runtime = runtime
        self.delivery = delivery
        self.writer = delivery.writer
        self.config = config
        self.clock = clock
        self.runner_env = runner_env or self.default_runner_env
        # None: a profile's key goes to its runner as a secret (no gateway served).
        self.gateways = gateways
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}"
        self.live: dict[str, LiveRunner] = {}
        self.waiting: dict[str, datetime] = {}
        self.accepting = True
        self._wake = anyio.Event()
        self._tend_all = True
        """Whether the next pass tends every live runner (see :meth:`_to_tend`)."""
        self._written: set[str] = set()
        """Sessions whose outboxes the change signal saw written since their last tend."""
        self._background: TaskGroup | None = None
        self.started_total = 0
        self.peak_live = 0
        self.starts: deque[StartRecord] = deque(maxlen=10_000)
        self.quarantine: dict[str, tuple[datetime, int]] = {}
        self.sick: dict[str, Quarantined] = {}
        """Sessions quarantined because their outbox cannot be read safely."""
        self._locked_since: dict[str, datetime] = {}
        self._pruned: dict[str, datetime] = {}
        self.problems: dict[str, Problem] = {}
        self._names: dict[str, str] = {}
        self.watched: dict[str, Watched] = {}
        # Why the runtime's engine cannot be reached, while it cannot (logged once).
        self.engine_down: str | None = None
        self._outbox_seen: dict[str, int | None] = {}
        self.metrics = metrics or Metrics()
        self.started_at = clock.now()
        self.last_pass_at: datetime | None = None
        """When the loop last completed a pass (for ``/health``)."""
        self._pass_over = anyio.Event()
        self._pass_over.set()
        self.asleep_until: datetime | None = None
        """While the loop sleeps between passes, when it means to wake (else None)."""
        self.planned_for: datetime | None = None
        """The store's next wake the loop last planned its sleep by."""

    # --- plumbing --------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop run a pass now (something changed), tending every live runner."""
        self._tend_all = True
        self._wake.set()

    def outboxes_written(self, session_ids: Collection[str]) -> None:
        """Make the loop run a pass now for what these sessions' runners wrote: it tends
        those runners (and any not tended for ``live_poll``), not all of them."""
        self._written.update(session_ids)
        self._wake.set()

    def _slot_freed(self) -> None:
        """Make the loop run a pass now to start what waits for the slot a runner left;
        nothing about the other runners changed."""
        self._wake.set()

    def sleeps_past(self, nxt: datetime | None) -> bool:
        """Whether the loop sleeps (or is about to) past ``nxt``, a next wake of the store it
        did not plan by (a commit of another process made it earlier, and its signal was
        missed)."""
        until, planned = self.asleep_until, self.planned_for
        if nxt is None or not self._pass_over.is_set() or (until is not None and nxt >= until):
            return False  # a pass in progress plans by what it reads at its end
        # Asleep, or planning by a read that may have come before the commit.
        return planned is None or nxt < planned

    async def between_passes(self) -> None:
        """Return once no pass is in progress (at once when none is).

        Work that may wait (an HTTP request) waits here, so it never takes the loop, a
        thread or the GIL from a pass that is waking a session.
        """
        await self._pass_over.wait()

    def default_runner_env(
        self, session: Session, profile: AgentProfile | None = None
    ) -> dict[str, str]:
        """The session's runner settings, rendered for its environment.

        What the host knows (the session's agent ``profile`` and zone, the sweep's
        timings, the store's limits) is set here; the rest (``gate_timeout``, ``max_batch``) an
        operator may set in the host's own environment, and the default applies
        otherwise. Raises RunnerConfigError for a bad value there. ``profile`` is read
        from agents.toml when not given.
        """
        if profile is None:
            profile = self.store.agent_profile(session.agent)
        settings = RunnerSettings.from_env(
            os.environ,
            session_dir=self.store.session_dir(session.id).resolve(),
            **_profile_fields(profile),
            timezone=session.timezone,
            idle_timeout=self.config.idle_timeout,
            poll_interval=self.config.runner_poll,
            idle_poll=self.config.idle_poll,
            change_signal=self.config.change_signal,
            min_interval=self.store.limits.min_interval.total_seconds(),
            max_tasks=self.store.limits.max_tasks_per_session,
            secret_names=(),
        )
        return settings.to_env()

    async def _beside(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` beside the loop (or at once when no loop runs, as in tests)."""
        if self._background is None:
            await work()
        else:
            self._background.start_soon(work)

    # --- start-up --------------------------------------------------------------------

    async def recover(self) -> None:
        """Re-derive state from the files and adopt or reap runners a previous host left."""
        # Names and agents only: a home of 10,000 sessions builds no 10,000 records here.
        agents = {sid: (name, agent) for sid, name, agent in await read(self.store.session_agents)}
        self._names.update((sid, name) for sid, (name, _) in agents.items())
        await self.rederive_stale()
        for handle in await self.runtime.list_own(self.store.home):
            session = await self._known(handle.session_id) if handle.session_id in agents else None
            if session is None:
                log.warning(
                    "reaping runner %s of unknown session %s", handle.ref, handle.session_id
                )
                await self.runtime.kill(handle)
                continue
            log.info("adopting runner %s of session %s", handle.ref, session.name)
            self.live[session.id] = LiveRunner(handle=handle, session=session)
            await self.writer(self.store.acquire_lease, session.id, self.host_id, handle.ref)
        # Each profile is checked once, however many sessions use it (10,000 sessions
        # of one agent are one check, not 10,000 reads of agents.toml).
        refused = await read(self._refused_agents, {agent for _, agent in agents.values()})
        for session_id, (_, agent) in agents.items():
            if agent in refused and (session := await self._known(session_id)) is not None:
                self._profile_problem(session, refused[agent])
        for session in await read(self.store.webhook_sessions):
            # Replies still owed to a webhook are delivered though no runner is woken.
            await self.delivery.note_backlog(session)
            if session.id in self.delivery.backlog:
                self.watched[session.id] = Watched(session, self.clock.now() + OUTBOX_WATCH)
        for lease in await read(self.store.leases):
            runner = self.live.get(lease.session_id)
            if runner is None or runner.handle.ref != lease.runner_ref:
                await self.writer(self.store.release_lease, lease.session_id, lease.runner_ref)
            gone = await self._known(lease.session_id) if runner is None else None
            if gone is not None:
                # Its runner died with the last host or exited while none ran: what it
                # wrote since that host last read its outbox is delivered now, not at
                # the session's next wake.
                self.watched[gone.id] = Watched(gone, self.clock.now() + OUTBOX_WATCH)
        log.info("%d sessions, %d runners adopted", len(agents), len(self.live))

    async def rederive_stale(self) -> list[str]:
        """Re-derive the sessions whose inbound.db changed after their central view (a host
        died between the two writes), then wake the loop; returns their ids.

        Part of :meth:`recover`, before the first pass. (Run beside the sweep after
        ready instead, it saved about 0.1 s of a 10,000-session start but raced the
        change feed's telling of outside commits from the host's own.)
        """
        stale = await read(self.store.stale_sessions)
        for session_id in stale:
            try:
                await self.writer(self.store.sync_session, session_id)
            except Exception:
                log.exception("session %s: could not re-derive its state", session_id)
        if stale:
            self.wake()
        log.info("%d sessions re-derived from their files", len(stale))
        return stale

    # --- the loop ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sweep until :meth:`stop_accepting`; each pass waits on a fresh event.

        Slow steps that concern one runner (stopping an idle one) run beside the loop,
        so no session waits for another's.
        """
        async with anyio.create_task_group() as tg:
            self._background = tg
            task_status.started()
            try:
                while self.accepting:
                    self._wake = anyio.Event()
                    began = time.perf_counter()
                    self._pass_over = anyio.Event()
                    try:
                        await self.tick()
                    except Exception:
                        log.exception("sweep pass failed; retrying at the next pass")
                    else:
                        self.last_pass_at = self.clock.now()
                    finally:
                        self._pass_over.set()
                    self.metrics.sweep_duration.observe(time.perf_counter() - began)
                    self._watch_outbox_changes()
                    delay, deadline = await read(self._next_deadline)
                    self.asleep_until = self.clock.now() + timedelta(seconds=delay)
                    try:
                        await self._sleep_until(deadline)
                    finally:
                        self.asleep_until = None
            finally:
                self._background = None

    def _watch_outbox_changes(self) -> None:
        """Have the change signal cover the outboxes of live and watched sessions only."""
        if self.changes is None:
            return
        wanted = {self.store.session_dir(s) / sdb.OUTBOX: s for s in [*self.live, *self.watched]}
        for gone in self._outbox_watches - wanted.keys():
            self.changes.remove(gone)
        self._outbox_watches = {
            d for d, s in wanted.items()
            if self.changes.add(d, (Path(sdb.OUTBOUND).name,), outbox_tag(s))
        }  # fmt: skip
        if len(self._outbox_watches) < len(wanted):
            # An outbox that cannot be watched is polled, as without change signals.
            self._outbox_watches.clear()

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (``time.monotonic()``) or a wake, whichever is first.

        The event loop's poll takes whole milliseconds, rounded up, so a pass planned
        for a due time would start up to a millisecond after it: the loop is woken
        :data:`WAKE_LEAD` early instead and sleeps out the rest on the clock, holding
        the loop no longer than that.
        """
        with anyio.move_on_after(deadline - WAKE_LEAD - time.monotonic()):
            await self._wake.wait()
            return
        rest = min(WAKE_LEAD, deadline - time.monotonic())
        if rest > 0 and not self._wake.is_set():
            time.sleep(rest)  # noqa: ASYNC251 - under a millisecond, on purpose (above)

    def _next_deadline(self) -> tuple[float, float]:
        """How long the loop may sleep, and when that is on ``time.monotonic()``'s clock
        (fixed here, so the hop back to the loop does not make the wake late)."""
        delay = self._next_delay()
        return delay, time.monotonic() + delay

    def _next_delay(self) -> float:
        now = self.clock.now()
        delay = self.config.sweep_interval
        if self.live or self.waiting or self.watched:
            watching = self.changes is not None and bool(self._outbox_watches)
            more = any(s not in self._outbox_seen for s in [*self.live, *self.watched])
            runners = list(self.live.values())
            delay = min(
                delay, live_delay(runners, bool(self.waiting), self.config, watching, now, more)
            )
        nxt = self.planned_for = self.store.next_wake()
        if nxt is not None:
            until = (nxt - now).total_seconds()
            # Work already due is being served (or is waiting for a slot, or quarantined);
            # polling for it at the live rate keeps the loop from spinning.
            delay = min(delay, until if until > 0 else self.config.live_poll)
        return delay

    async def tick(self) -> None:
        """One pass: tend live runners, then wake sessions with due work.

        Due work for which a slot is free starts first: tending reads every live
        runner's outbox, and a start that waited for it would be late by that much. A
        session whose outbox holds what was not taken in yet (a runner that just exited,
        an MCP server run by hand) starts after it is, as before.
        """
        await self._check_sick()
        tend = self._to_tend(self.clock.now())
        if self.live and self.accepting and len(self.live) < self.config.max_containers:
            await self._start_due(evict=False)
        await self._each(tend, self._tend_one)
        if not self.accepting:
            return
        await self._watch_outboxes()
        await self._start_due(evict=True)

    def _to_tend(self, now: datetime) -> list[str]:
        """The live runners this pass tends.

        Every one, unless the pass was woken only by outbox writes the change signal
        named (or by a slot changing hands): then the runners that wrote, and those not
        tended for ``live_poll`` (as often as a pass tended every runner while any was
        busy). So in a burst a pass reads the few outboxes that changed, not all.
        Without change signals every pass tends every runner.
        """
        everyone, self._tend_all = self._tend_all, False
        written, self._written = self._written, set()
        if everyone or self.changes is None or not self._outbox_watches:
            return list(self.live)
        overdue = now - timedelta(seconds=self.config.live_poll)
        return [
            sid for sid, r in self.live.items()
            if sid in written or r.tended_at is None or r.tended_at <= overdue
        ]  # fmt: skip

    def _held(self, now: datetime) -> frozenset[str]:
        """The sessions whose due work does not wait for a slot now: live, sick, or
        quarantined until later."""
        quarantined = (sid for sid, (until, _) in self.quarantine.items() if until > now)
        return frozenset([*self.live, *self.sick, *quarantined])

    def _due_now(
        self, now: datetime, held: frozenset[str]
    ) -> tuple[list[tuple[str, Instant]], set[str]]:
        """The sessions with due work, and when any of them is not ``held`` the ones with
        a chat message due (read in one hop off the loop)."""
        due = self.store.due_sessions(now)
        waiting = any(sid not in held for sid, _ in due)
        return due, self.store.chat_due_sessions(now) if waiting else set()

    async def _start_due(self, *, evict: bool) -> None:
        """Start the sessions with due work the free slots allow; with ``evict``, stop
        the idle runners the waiting sessions need the slots of."""
        now = self.clock.now()
        due, chat = await read(self._due_now, now, self._held(now))
        held = self._held(now)  # again: a runner may have gone during the read
        self.waiting = {sid: parse_utc(at) for sid, at in due if sid not in held}
        plan = plan_pool(
            [Waiting(sid, at, sid in chat) for sid, at in self.waiting.items()],
            [Live(sid, r.busy, r.idle_since) for sid, r in self.live.items()],
            self.config.max_containers,
            timedelta(seconds=self.config.idle_timeout),
            now,
        )
        for session_id in plan.evict if evict else ():
            runner = self.live[session_id]
            if not runner.stopping:
                runner.stopping = True
                why = "yields its slot to a waiting session" if self.waiting else "stops, idle"
                log.info(
                    "session %s: idle runner %s", runner.session.name, why,
                    extra=_runner_fields(runner),
                )  # fmt: skip
                await self._beside(partial(self._stop, runner))
        for session_id in plan.start:
            if not evict and session_id in self.watched and not await self._outbox_read(session_id):
                continue  # what its outbox holds (a pause, say) is applied first, after tending
            try:
                await self._start(session_id)
            except Exception as exc:
                # Back off so one broken session neither floods the log nor spins the loop;
                # its work stays pending (a start that never happened costs no try).
                _, failures = self.quarantine.get(session_id, (now, 0))
                pause = min(QUARANTINE_MAX, QUARANTINE_BASE * 2**failures)
                self.quarantine[session_id] = (now + timedelta(seconds=pause), failures + 1)
                if isinstance(exc, EngineUnavailable):
                    self._engine_lost(exc)
                    continue
                log.exception(
                    "session %s: could not start its runner; next try in %d s",
                    self._name(session_id), pause,
                )  # fmt: skip
            else:
                self.quarantine.pop(session_id, None)
                self._engine_back()

    async def _each(
        self, session_ids: Sequence[str], work: Callable[[str], Coroutine[Any, Any, None]]
    ) -> None:
        """Run ``work`` for each session, ``tend_concurrency`` at once: one session's slow
        read (a locked outbox's wait) delays no other session's."""
        if len(session_ids) <= 1 or self.config.tend_concurrency <= 1:
            for session_id in session_ids:
                await work(session_id)
            return
        limiter = anyio.CapacityLimiter(self.config.tend_concurrency)

        async def limited(session_id: str) -> None:
            async with limiter:
                await work(session_id)

        async with anyio.create_task_group() as tg:
            for session_id in session_ids:
                tg.start_soon(limited, session_id)

    async def _tend_one(self, session_id: str) -> None:
        """Tend one runner; its errors are logged with its session and stop no other."""
        runner = self.live.get(session_id)
        if runner is None:
            return
        try:
            await self._tend(session_id)
        except EngineUnavailable as exc:
            self._engine_lost(exc)
        except OutboxUnreadable as exc:
            await self._outbox_fault(runner.session, exc)
        except Exception:
            log.exception("session %s: tending its runner failed", runner.session.name)
        else:
            self._engine_back()

    def rang(self, sessions: Sequence[Session]) -> None:
        """Take in what a process outside these sessions' runners wrote to their outboxes
        (an MCP server run by hand): watch each a little while and sweep now."""
        until = self.clock.now() + RING_WATCH
        for session in sessions:
            if session.id not in self.live:
                known = self.watched.get(session.id)
                later = max(until, known.until) if known else until
                self.watched[session.id] = Watched(session, later)
        if sessions:
            self.wake()

    def _engine_lost(self, exc: EngineUnavailable) -> None:
        """Log once that the runtime's engine is gone; work waits and is retried."""
        # Only the sentence is kept: the exception would hold the failed call's frames.
        reason = str(exc)
        if self.engine_down is None:
            log.error("%s; due work stays pending and is retried with backoff", reason)
        self.engine_down = reason

    def _engine_back(self) -> None:
        if self.engine_down is not None:
            log.info("the %s runtime's engine is reachable again", self.runtime.name)
            self.engine_down = None

    async def _watch_outboxes(self) -> None:
        """Deliver what arrived in the outbox of a session whose runner recently exited.

        Unchanged outboxes are not opened (see :meth:`_deliver`); the cost follows the
        sessions that worked in the last few minutes, not all sessions.
        """
        now = self.clock.now()
        due = []
        for session_id, watched in list(self.watched.items()):
            if session_id in self.sick:
                continue  # read again once its quarantine lifts
            if session_id in self.live or (
                now > watched.until and session_id not in self.delivery.backlog
            ):
                del self.watched[session_id]
                continue
            due.append(session_id)
        # One read of every watched outbox's change counter (hundreds of sessions after a
        # burst, each a thread hop of its own otherwise); only those that changed are
        # read, concurrently. The others only retry their failed channels when due.
        counters = await read(self._outbox_counters, due)
        changed = []
        for session_id in due:
            counter = counters.get(session_id)
            if counter is None or self._outbox_seen.get(session_id) != counter:
                changed.append(session_id)
            else:
                await self._watch_one(session_id, counter)
        await self._each(changed, self._watch_one)

    def _outbox_counters(self, session_ids: Sequence[str]) -> dict[str, int]:
        """The outbox change counters of these sessions, leaving out those that cannot be
        read (their own read reports why)."""
        counters = {}
        for session_id in session_ids:
            try:
                counter = self._outbox_counter(session_id)
            except Exception:  # reported by the session's own read, which raises it again
                continue
            if counter is not None:
                counters[session_id] = counter
        return counters

    async def _watch_one(self, session_id: str, counter: int | None = None) -> None:
        """Deliver what a watched session's outbox holds; ``counter``, when given, is its
        change counter as just read."""
        watched = self.watched.get(session_id)
        if watched is None:
            return
        try:
            await self._deliver(watched.session, counter)
            self._locked_since.pop(session_id, None)
        except OutboxUnreadable as exc:
            await self._outbox_fault(watched.session, exc)
        except Exception:
            log.exception("session %s: delivering late requests failed", watched.session.name)

    def _name(self, session_id: str) -> str:
        """A session's name for the log, when the sweep knows it (else its id)."""
        return self._names.get(session_id, session_id)

    async def _stop(self, runner: LiveRunner) -> None:
        """Stop an evicted runner and settle what it left as soon as it is gone, so its
        slot changes hands at once (the pass it wakes starts the waiting session)."""
        try:
            await self.runtime.stop(runner.handle, self.config.stop_grace)
            await self._settle_exit(runner, "runner exited while working")
        except Exception:
            log.exception("session %s: settling its stopped runner failed", runner.session.name)
        finally:
            self._slot_freed()

    def _gateway_profile(self, session_id: str) -> tuple[AgentProfile, str | None]:
        """What the session's gateway forwards with, read again for every model call."""
        session = self.store.get_session(session_id)
        profile = self.store.agent_profile(session.agent)
        key = os.environ.get(profile.api_key_env) if profile.api_key_env else None
        return profile, key

    async def _known(self, session_id: str) -> Session | None:
        """The session, or None when it was deleted meanwhile."""
        try:
            return await read(self.store.get_session, session_id)
        except SessionNotFound:
            return None

    def _refused_agents(self, agents: set[str]) -> dict[str, InvalidInput]:
        """Why each of these agent profiles cannot be served, for those that cannot."""
        refused = {}
        for agent in agents:
            try:
                self.store.agent_profile(agent)
            except InvalidInput as exc:
                refused[agent] = exc
        return refused

    def _profile_problem(self, session: Session, exc: InvalidInput) -> None:
        """Report a session whose agent profile no runner can serve."""
        reason = f"{exc}; fix agents.toml or `cronbox session update {session.name} --agent ...`"
        log.warning("session %s: %s", session.name, reason)
        self.problems[session.id] = Problem(session.name, reason, self.clock.now())

    def _wakeup(self, session_id: str, caught_up: SettlementPlan | None = None) -> _Wakeup | None:
        """What starting a session's runner reads, read in one go (one hop off the loop:
        each hop is a thread's wake-up, and on a busy machine each one costs).

        Without ``caught_up`` the catch-up rule is applied here too when it writes
        nothing; None when it would write (the caller applies it under the writer and
        passes its plan).
        """
        if caught_up is None:
            caught_up = self.store.prepare_due_unwritten(session_id)
            if caught_up is None:
                return None
        session = self.store.get_session(session_id)
        try:
            profile, refused = self.store.agent_profile(session.agent), None
        except InvalidInput as exc:
            profile, refused = AgentProfile.model_construct(provider=session.agent), exc
        return _Wakeup(
            caught_up, session, profile, refused, self.store.session_dir(session.id).resolve(),
            self.store.due_ids(session.id),
        )  # fmt: skip

    async def _start(self, session_id: str) -> None:
        wakeup = await read(self._wakeup, session_id)
        if wakeup is None:
            caught_up = await self.writer(self.store.prepare_due, session_id)
            wakeup = await read(self._wakeup, session_id, caught_up)
            assert wakeup is not None
        caught_up = wakeup.caught_up
        session, profile, session_dir = wakeup.session, wakeup.profile, wakeup.session_dir
        await self._finished(session, caught_up.finished)
        if caught_up.gated:
            await self.delivery.announce(session)  # approval requests, on its webhook
        self._names[session.id] = session.name
        if session.next_due_at is None or parse_utc(session.next_due_at) > self.clock.now():
            return  # catch-up moved or settled the work; nothing is due after all
        if wakeup.refused is not None:
            # The runner refuses the name and the rows' tries run out, as for any runner
            # that fails before taking work; the problem says why in the host's words.
            self._profile_problem(session, wakeup.refused)
        env = self.runner_env(session, profile)
        key = profile.api_key_env
        secrets = {key: os.environ[key]} if key else {}
        if self.gateways is not None and profile.provider in GATEWAY_ROUTES:
            # The model is reached through the host: the runner holds no key, nor its name.
            resolve = partial(self._gateway_profile, session.id)
            socket_path = await self.gateways.ensure(session.id, session_dir, resolve)
            env[RunnerSettings.env_name("gateway")] = socket_path
            env[RunnerSettings.env_name("api_key_env")] = ""
            secrets = {}
        spec = RunnerSpec(
            session_id=session.id,
            session_dir=session_dir,
            home=self.store.home.resolve(),
            env=env,
            secrets=secrets,
            limits=ContainerLimits.of(session.container),
        )
        due_at = parse_utc(session.next_due_at)
        handle = await self.runtime.start(spec)
        self.live[session.id] = LiveRunner(
            handle=handle, session=session, woken_for=wakeup.woken_for
        )
        self.waiting.pop(session.id, None)
        self.started_total += 1
        self.peak_live = max(self.peak_live, len(self.live))
        start = StartRecord(session.id, due_at, self.clock.now())
        self.starts.append(start)
        self.metrics.runner_starts.inc()
        self.metrics.schedule_lag.observe(max(0.0, start.lateness))
        log.info(
            "session %s: runner %s started", session.name, handle.ref,
            extra=session_fields(session.name, session.id, runner=handle.ref),
        )  # fmt: skip
        await self.writer(self.store.acquire_lease, session.id, self.host_id, handle.ref)

    async def _tend(self, session_id: str) -> None:
        """Notice a runner's exit, settle its acks and replies, enforce liveness.

        Whether the runner still runs is asked first, so no error reading its files can
        keep a dead runner "live" (holding a slot); an outbox that cannot be read now is
        raised after the liveness check, with the claims of the last good read.
        """
        runner = self.live[session_id]
        if runner.settling:
            return
        runner.tended_at = self.clock.now()
        default_timeout = timedelta(seconds=self.config.task_timeout)
        if not await self.runtime.is_running(runner.handle):
            await self._settle_exit(runner, "runner exited while working")
            return
        fault: OutboxUnreadable | None = None
        try:
            runner.claims = await self._settle(runner, default_timeout)
            await self._deliver(runner.session)
            self._locked_since.pop(session_id, None)
        except OutboxUnreadable as exc:
            fault = exc
        now = self.clock.now()
        heartbeat = await read(_mtime, self.store.session_dir(session_id) / sdb.HEARTBEAT)
        verdict = decide_liveness(
            now,
            runner.handle.started_at,
            heartbeat,
            runner.claims,
            timedelta(seconds=self.config.heartbeat_ceiling),
            timedelta(seconds=self.config.startup_grace),
        )
        if verdict.action is not LivenessAction.OK:
            log.warning(
                "session %s: killing runner: %s", runner.session.name, verdict.reason,
                extra=_runner_fields(runner),
            )  # fmt: skip
            await self.runtime.kill(runner.handle)
            await self._settle_exit(
                runner, f"runner killed: {verdict.reason}", timed_out=verdict.timed_out
            )
            return
        if fault is not None:
            raise fault
        session = await read(self.store.get_session, session_id)
        due_now = session.next_due_at is not None and parse_utc(session.next_due_at) <= now
        busy = bool(runner.claims) or due_now
        if busy:
            runner.idle_since = None
        elif runner.busy or runner.idle_since is None:
            runner.idle_since = now
        runner.busy = busy

    async def _settle_exit(
        self, runner: LiveRunner, reason: str, timed_out: tuple[str, ...] = ()
    ) -> None:
        """Settle an exited runner once, whichever of the pass and the task that stopped
        it notices first; a settlement that fails is tried again by the next pass."""
        if runner.settling or self.live.get(runner.session.id) is not runner:
            return
        runner.settling = True
        try:
            await self._after_exit(runner, reason, timed_out)
        except BaseException:
            runner.settling = False
            raise

    async def _after_exit(
        self, runner: LiveRunner, reason: str, timed_out: tuple[str, ...] = ()
    ) -> None:
        """Settle what an exited runner left: last acks and replies, then its claimed rows.

        Touches only the rows the runner still held, whatever the size of the inbox.
        """
        session_id = runner.session.id
        default_timeout = timedelta(seconds=self.config.task_timeout)
        try:
            claims = await self._settle_gone(runner, default_timeout)
        except OutboxUnreadable as exc:
            # The runner is gone whatever its files say: it leaves the pool now, and what
            # it held waits in the quarantine, to be settled once its acks can be read.
            await self._forget_runner(runner)
            await self._quarantine(runner.session, exc.reason, runner.claims, timed_out,
                                   hot_journal=exc.hot_journal)  # fmt: skip
            return
        if not runner.worked and not claims and runner.woken_for and self.accepting:
            claims, reason = await self._failed_start(runner, reason)
        plan = await self.writer(
            self.store.requeue, session_id, claims, reason, timed_out=timed_out,
            retry_base=timedelta(seconds=self.config.retry_base),
        )  # fmt: skip
        await self._finished(runner.session, plan.finished)
        # Watched before it leaves the pool (no await between the two): a session whose
        # runner is gone is never, even for the lease's release, neither live nor watched.
        self.watched[session_id] = Watched(runner.session, self.clock.now() + OUTBOX_WATCH)
        await self._forget_runner(runner)
        if claims:
            ended = len(plan.finished)
            retried = len(plan.runs) - ended
            log.warning(
                "session %s: %s; %d rows to retry, %d ended",
                runner.session.name, reason, retried, ended, extra=_runner_fields(runner),
            )  # fmt: skip
        elif (died := await self._died(runner, reason)) is not None:
            log.warning("session %s: %s", runner.session.name, died, extra=_runner_fields(runner))
        else:
            log.info(
                "session %s: runner finished", runner.session.name, extra=_runner_fields(runner)
            )
        await self._prune(runner.session)
        self._slot_freed()

    async def _died(self, runner: LiveRunner, why: str) -> str | None:
        """How a runner holding no work that the host neither stopped nor killed went,
        when it failed (a non-zero status, a signal, its container out of memory); None
        for one that simply ended (a kill is logged where it is made)."""
        if runner.stopping or why.startswith("runner killed"):
            return None
        return await self._exit_story(runner, why, ", holding no work")

    async def _exit_story(self, runner: LiveRunner, why: str, context: str) -> str | None:
        """How a runner that failed went, with its last words: ``why`` for one the sweep
        killed, else its exit status followed by ``context``; None for a clean exit.
        ``why`` is how the sweep saw it go."""
        killed = why.startswith("runner killed")
        code = None if killed else await self.runtime.exit_code(runner.handle)
        if not killed and (code is None or code == 0):
            return None
        words = await self.runtime.last_words(runner.handle)
        story = why if killed else f"runner exited with status {code}{context}"
        return f"{story}: {words}" if words else story

    async def _forget_runner(self, runner: LiveRunner) -> None:
        """A runner that is gone leaves the pool and its lease."""
        self.live.pop(runner.session.id, None)
        await self.writer(self.store.release_lease, runner.session.id, runner.handle.ref)

    async def _settle_gone(self, runner: LiveRunner, default_timeout: timedelta) -> list[Claim]:
        """The last settlement of a runner that is gone; a hot journal it left by dying
        mid-write is rolled back first (nothing else writes that file any more)."""
        try:
            claims = await self._settle(runner, default_timeout)
            await self._deliver(runner.session)
        except OutboxUnreadable as exc:
            if not exc.hot_journal:
                raise
            log.warning(
                "session %s: rolling back the journal its killed runner left",
                runner.session.name, extra=_runner_fields(runner),
            )  # fmt: skip
            await read(self.store.files.roll_back_outbox, runner.session.id)
            claims = await self._settle(runner, default_timeout)
            await self._deliver(runner.session)
        return claims

    # --- quarantine --------------------------------------------------------------------

    async def _outbox_fault(self, session: Session, exc: OutboxUnreadable) -> None:
        """A read of one session's outbox failed: quarantine that session (a lock its
        writer holds only after ``outbox_stall``); no other session waits for it."""
        now = self.clock.now()
        if exc.transient:
            since = self._locked_since.setdefault(session.id, now)
            if (now - since).total_seconds() < self.config.outbox_stall:
                return
            reason = f"{exc.reason} for more than {self.config.outbox_stall:g} s"
        else:
            reason = exc.reason
        runner = self.live.get(session.id)
        claims: list[Claim] = []
        if runner is not None:
            runner.stopping = True
            await self.runtime.kill(runner.handle)
            await self._forget_runner(runner)
            claims = runner.claims
        await self._quarantine(session, reason, claims, hot_journal=exc.hot_journal)

    async def _quarantine(
        self, session: Session, reason: str, claims: Sequence[Claim],
        timed_out: tuple[str, ...] = (), *, hot_journal: bool = False,
    ) -> None:  # fmt: skip
        """Put a session (its runner gone) in quarantine: logged, audited, in the status."""
        self._locked_since.pop(session.id, None)
        self._outbox_seen.pop(session.id, None)
        known = self.sick.get(session.id)
        if known is not None:
            known.claims += [c for c in claims if c not in known.claims]
            known.hot_journal = hot_journal
            return
        now = self.clock.now()
        self.sick[session.id] = Quarantined(
            session, reason, now, list(claims), timed_out, hot_journal
        )
        shown = (
            f"quarantined: {reason}; it lifts by itself once its outbox is sane, or run "
            f"`cronbox session reset {session.name}`"
        )
        self.problems[session.id] = Problem(session.name, shown, now)
        log.error(
            "session %s: %s", session.name, shown, extra=session_fields(session.name, session.id)
        )
        await self.writer(
            self.store.record_audit, "cronbox", "session.quarantine", session.id, session.name,
            {"reason": reason[:500], "held": len(claims)},
        )  # fmt: skip

    async def _check_sick(self) -> None:
        """Lift the quarantine of each session whose outbox reads cleanly again, then
        settle what its runner had left claimed."""
        for session_id, sick in list(self.sick.items()):
            if session_id in self.live:
                continue
            try:
                if sick.hot_journal:
                    await read(self.store.files.roll_back_outbox, session_id)
                await read(self.store.files.probe_outbox, session_id)
            except OutboxUnreadable as exc:
                sick.hot_journal = exc.hot_journal
                continue
            except Exception:
                log.exception("session %s: checking its outbox failed", sick.session.name)
                continue
            try:
                await self._lift(sick)
            except OutboxUnreadable:
                continue
            except Exception:
                log.exception("session %s: lifting its quarantine failed", sick.session.name)

    async def _lift(self, sick: Quarantined) -> None:
        session = sick.session
        default_timeout = timedelta(seconds=self.config.task_timeout)
        plan = await self.writer(self.store.settle_acks, session.id, default_timeout)
        await self._finished(session, plan.finished)
        has_outbox = await read(self.store.files.has_outbox, session.id)
        settled = {f.message_id for f in plan.finished}
        claims = list(plan.claims) if has_outbox else sick.claims
        claims = [c for c in claims if c.message_id not in settled]
        requeued = await self.writer(
            self.store.requeue, session.id, claims, f"session quarantined: {sick.reason}",
            timed_out=sick.timed_out, retry_base=timedelta(seconds=self.config.retry_base),
        )  # fmt: skip
        await self._finished(session, requeued.finished)
        del self.sick[session.id]
        self.problems.pop(session.id, None)
        self.watched[session.id] = Watched(session, self.clock.now() + OUTBOX_WATCH)
        log.info(
            "session %s: quarantine lifted, its outbox is sane again; %d rows to retry",
            session.name, len(claims), extra=session_fields(session.name, session.id),
        )  # fmt: skip
        await self.writer(
            self.store.record_audit, "cronbox", "session.release", session.id, session.name,
            {"reason": sick.reason[:500]},
        )  # fmt: skip
        self.wake()

    async def _failed_start(self, runner: LiveRunner, why: str) -> tuple[list[Claim], str]:
        """A runner that failed before taking any work: each row it was woken for counts
        a failed try (the 5-try rule), so a broken session cannot make the host restart
        its runner forever. ``why`` is how the sweep saw it go."""
        reason = await self._exit_story(runner, why, " before taking any work")
        if reason is None:
            return [], "runner finished"
        self.problems[runner.session.id] = Problem(runner.session.name, reason, self.clock.now())
        now = self.clock.now()
        timeout = timedelta(seconds=self.config.task_timeout)
        return [Claim(message_id, now, timeout) for message_id in runner.woken_for], reason

    async def _prune(self, session: Session) -> None:
        """Drop old finished inbox rows of a session that just worked (at most hourly)."""
        now = self.clock.now()
        last = self._pruned.get(session.id)
        if last is not None and now - last < PRUNE_EVERY:
            return
        self._pruned[session.id] = now
        keep = timedelta(seconds=self.config.keep_finished)
        removed = await self.writer(self.store.prune_finished, session.id, keep)
        if removed:
            log.info("session %s: pruned %d finished inbox rows", session.name, removed)

    async def _settle(self, runner: LiveRunner, default_timeout: timedelta) -> list[Claim]:
        # Most settlements while a runner works bring no news: read, they never wait for
        # the writer (nor hold it from the settlements that do).
        plan = await read(self.store.settle_acks_unwritten, runner.session.id, default_timeout)
        if plan is None:
            plan = await self.writer(self.store.settle_acks, runner.session.id, default_timeout)
        await self._finished(runner.session, plan.finished)
        if plan.gated:
            await self.delivery.announce(runner.session)
        if plan.claims or plan.finished:
            runner.worked = True
            self.problems.pop(runner.session.id, None)
        return list(plan.claims)

    async def _finished(self, session: Session, finished: Sequence[Finished]) -> None:
        """Log the occurrences a settlement finished and count their runs' figures."""
        if not finished:
            return
        for done in finished:
            what = done.series_id or done.message_id
            detail = f": {done.error}" if done.error else ""
            level = logging.INFO if done.outcome in _QUIET else logging.WARNING
            fields = session_fields(
                session.name, session.id, task_id=done.series_id,
                message_id=done.message_id, outcome=done.outcome.value,
            )  # fmt: skip
            log.log(
                level, "session %s: %s %s%s", session.name, what, done.outcome.value, detail,
                extra=fields,
            )  # fmt: skip
        runs = await read(self.store.runs_of, session.id, [d.message_id for d in finished])
        self.metrics.finished(runs.values())

    async def _deliver(self, session: Session, counter: int | None = None) -> None:
        """Take in the runner's new outbound rows, then retry failed channels.

        The outbox's change counter (a header read, no database opened; ``counter`` when
        the caller read it just now) says whether anything was written since everything
        was last taken in; only then is it read.
        """
        if counter is None:
            counter = await read(self._outbox_counter, session.id)
        if counter is None or self._outbox_seen.get(session.id) != counter:
            rows = await read(self.delivery.pending, session.id)
            handled = await self.delivery.deliver(session, rows) if rows else []
            await self.delivery.refuse_strays(session)
            if any(h.status is DeliveryStatus.APPLIED for h in handled):
                self.wake()
            if len(rows) < UNDELIVERED_BATCH and not self.delivery.stuck(session.id):
                self._outbox_seen[session.id] = counter  # all of it is taken in
            else:
                self._outbox_seen.pop(session.id, None)  # more to read next pass
        await self.delivery.retry_due(session)

    async def _outbox_read(self, session_id: str) -> bool:
        """Whether everything in the session's outbox was taken in already."""
        try:
            counter = await read(self._outbox_counter, session_id)
        except OSError:
            return False
        return counter is not None and self._outbox_seen.get(session_id) == counter

    def _outbox_counter(self, session_id: str) -> int | None:
        """The outbox's change counter, after the checks every read makes (so a link is
        reported, not followed to another session's file)."""
        self.store.files.check_outbox(session_id)
        return sdb.change_counter(self.store.session_dir(session_id) / sdb.OUTBOUND)

    # --- shutdown --------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Stage one of shutdown: wake no more sessions."""
        self.accepting = False
        self.wake()

    async def drain(self) -> None:
        """Stages two and three: let runners finish within the grace, then stop them.

        Every row a runner leaves claimed goes back to ``pending`` with a retry. The
        whole drain is bounded: past ``stop_grace`` plus a margin the host gives up on
        what is left (the next start re-derives it from the files).
        """
        limit = self.config.stop_grace + DRAIN_MARGIN
        with anyio.move_on_after(limit, shield=True) as scope:
            async with anyio.create_task_group() as tg:
                for runner in list(self.live.values()):
                    tg.start_soon(self.runtime.stop, runner.handle, self.config.stop_grace)
            for session_id in list(self.live):
                try:
                    runner = self.live[session_id]
                    await self._settle_exit(runner, "host shut down")
                except Exception:
                    log.exception("session %s: settling at shutdown failed", session_id)
        if scope.cancelled_caught:
            log.warning(
                "shutdown drain gave up after %.0f s with %d runners unsettled",
                limit, len(self.live),
            )  # fmt: skip


def _runner_fields(runner: LiveRunner) -> dict[str, str]:
    return session_fields(runner.session.name, runner.session.id, runner=runner.handle.ref)


def _mtime(path: Path) -> datetime | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(stamp, UTC)


def _profile_fields(profile: AgentProfile) -> dict[str, Any]:
    """Every profile field of RunnerSettings, so a host variable never fills one in."""
    defaults = {
        name: RunnerSettings.default(name)
        for name in ("model", "base_url", "api_key_env", "system", "command")
    }
    return {**defaults, **profile.runner_fields()}
