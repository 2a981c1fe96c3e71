"""The service layer: cronbox's commands, with their validation and audit.

The CLI, the delivery of agent actions and the HTTP API all call these. A
command validates its input (``cronbox_shared.tasks``), changes a session's inbound.db
in one transaction through the session-file repository, then brings the central view
up to date from what that transaction left (due index, task mirror, run records, audit
entry) in one transaction on cronbox.db. If the host dies between the two, the
change-counter check at the next start re-derives the central view, so the session
files stay the truth. Settlement decisions are pure functions in
:mod:`host.settlement`; this module only reads their inputs and applies their plans.

Every method is synchronous and blocking. In the host they run in the one writer
thread (:mod:`host.writer`); the CLI calls them directly.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import ValidationError

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import ActionKind, TaskChange, transition
from cronbox_shared.agents import AgentProfile, check_agent, resolve_agent
from cronbox_shared.chains import MAX_CHAIN_DEPTH
from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import (
    AlreadyHandled,
    CronboxError,
    HasChildren,
    InvalidInput,
    RunNotFound,
    SessionExists,
    SessionNotFound,
    TaskIdTaken,
    TaskNotFound,
    TaskStateError,
    TooManyTasks,
)
from cronbox_shared.models import (
    MAX_CHAT_BYTES,
    DeliveryStatus,
    InboundMessage,
    MessageKind,
    MessageStatus,
)
from cronbox_shared.policies import QUIET_KEY, parse_quiet
from cronbox_shared.recurrence import stored_recurrence
from cronbox_shared.rows import OCCURRENCE_SEP, is_backfill
from cronbox_shared.tasks import (
    MAX_WAKES_PER_DAY,
    WAKES_KEY,
    ScheduleRequest,
    UpdateRequest,
    ValidTask,
    backfill_slots,
    check_note,
    check_wakes,
    resume_at,
    validate_schedule,
    validate_update,
    wake_limit,
    wakes_per_day,
)
from cronbox_shared.timeutil import Clock, Instant, fmt, parse_utc, zone
from host.approvals import (
    TIMEOUT_ACTOR,
    Decision,
    DecisionKind,
    approve_fields,
    decision_run,
    plan_gate,
    plan_reject,
    timeout_decision,
)
from host.chains import parent_ends, plan_chain
from host.config import Settings
from host.limits import ContainerLimits, check_limits
from host.liveness import Claim
from host.reading import Page, Reader, check_limit
from host.settlement import (
    InboxChanges,
    Policy,
    SettlementPlan,
    backfill_row,
    plan_catch_up,
    plan_requeue,
    preview_runs,
    series_of,
    settle_acks,
)
from host.store.base import ChangeFeed, InboxTransaction, SessionFiles, WouldWrite
from host.store.files import SqliteSessionFiles
from host.store.records import (
    MAX_PAGE,
    PAGE_SIZE,
    AuditEntry,
    ChargedRun,
    Lease,
    LogEntry,
    Run,
    RunRecord,
    Session,
    TaskView,
    TokenCount,
)

T = TypeVar("T")
MAX_DETAIL_CHARS = 2000
# How many outbound rows one delivery pass reads at most.
UNDELIVERED_BATCH = 200
# How many doorbell rings one check takes in at most (the rest wait for the next check).
RING_BATCH = 1000
# How many finished rows one pruning pass deletes at most (a pass never stalls a session).
PRUNE_BATCH = 5000
# An ended one-time task in one of these states may be run again (``task run``).
_RERUNNABLE = (MessageStatus.COMPLETED, MessageStatus.FAILED)
QUIET_OFF = ("off", "none")
_VERB = {DecisionKind.APPROVED: "approve", DecisionKind.REJECTED: "reject"}
NOTICE_CHANNEL = "webhook"
"""The channel the host's approval requests go out on (the session's webhook)."""


@dataclass(frozen=True)
class Limits:
    """Validation limits applied to every task request, whoever sends it."""

    min_interval: timedelta = timedelta(seconds=DEFAULTS.min_interval)
    max_tasks_per_session: int = DEFAULTS.max_tasks_per_session
    failure_backoff: timedelta = timedelta(seconds=DEFAULTS.failure_backoff)
    """Not a validation limit but a rule of every series: the first delay after a failure."""


@dataclass(frozen=True)
class Receipt:
    """An outbound row being handled: recorded in the same inbound transaction as its
    effect, so a crash can neither lose nor repeat it."""

    seq: int
    message_id: str
    channels: tuple[str, ...] = ("action",)
    status: DeliveryStatus = DeliveryStatus.APPLIED
    detail: str | None = None
    asked_at: datetime | None = None
    """When the row was written (the container's word): a request is judged by it."""


@dataclass(frozen=True)
class Rejection:
    """One outbound row rejected, with why and what it asked for."""

    seq: int
    message_id: str
    reason: str
    action: str


@dataclass
class _Work:
    """What one inbound transaction changed, for the central view."""

    series: list[str] | None = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    runs: Sequence[RunRecord] = ()


def task_row(valid: ValidTask, now: Instant, policy: Policy | None = None) -> InboundMessage:
    """The ``messages_in`` row of a new task: the first occurrence of its own series, due
    at its first run plus its jitter, held past the session's quiet hours."""
    first = fmt(valid.first_run)
    row = InboundMessage(
        id=valid.id, seq=0, kind=MessageKind.TASK, created_at=now, updated_at=now,
        status=MessageStatus.PENDING, process_after=first, scheduled_for=first,
        recurrence=valid.recurrence.expr if valid.recurrence else None,
        timezone=valid.timezone, series_id=valid.id, tries=0, trigger=1,
        content=valid.content, misfire_grace=valid.misfire_grace, timeout=valid.timeout,
        missed_policy=valid.missed_policy, catchup_limit=valid.catchup_limit,
        max_failures=valid.max_failures, jitter=valid.jitter, ignore_quiet=valid.ignore_quiet,
        after_task=valid.after_task, after_outcome=valid.after_outcome,
        when_output=valid.when_output, approval=valid.approval,
        approval_timeout=valid.approval_timeout, on_timeout=valid.on_timeout,
        isolated=valid.isolated,
    )  # fmt: skip
    if valid.after_task is not None:
        # A chained task waits for its parent: its runs are inserted as the parent ends.
        return row.model_copy(
            update={"status": MessageStatus.WAITING, "process_after": None, "scheduled_for": None}
        )
    due = (policy or Policy()).admitted(row, valid.first_run)
    return row.model_copy(update={"process_after": fmt(due)})


class Cronbox(Reader):
    """cronbox's commands and queries over one ``CRONBOX_HOME``."""

    def __init__(
        self,
        home: Path,
        *,
        clock: Clock | None = None,
        default_timezone: str = "UTC",
        limits: Limits | None = None,
        create: bool = True,
        outbox_max_bytes: int = DEFAULTS.outbox_max_bytes,
        outbox_read_limit: float = DEFAULTS.outbox_read_limit,
    ) -> None:
        """The service over ``home``; without ``create`` a missing home raises HomeNotFound."""
        super().__init__(home, clock=clock, create=create)
        self.default_timezone = zone(default_timezone, "the host timezone").key
        self.limits = limits or Limits()
        self.files: SessionFiles = SqliteSessionFiles(
            self.home, outbox_max_bytes=outbox_max_bytes, outbox_read_limit=outbox_read_limit
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock | None = None, create: bool = True
    ) -> Cronbox:
        """The service under ``settings.home`` with the configured zone and limits."""
        return cls(
            settings.home,
            clock=clock,
            create=create,
            default_timezone=settings.timezone(),
            limits=Limits(
                min_interval=timedelta(seconds=settings.min_interval),
                max_tasks_per_session=settings.max_tasks_per_session,
                failure_backoff=timedelta(seconds=settings.failure_backoff),
            ),
            outbox_max_bytes=settings.outbox_max_bytes,
            outbox_read_limit=settings.outbox_read_limit,
        )

    # --- plumbing ----------------------------------------------------------------------

    def session_dir(self, session_id: str) -> Path:
        """The directory holding a session's files."""
        return self.files.directory(session_id)

    def watch_changes(self) -> ChangeFeed:
        """A watcher that notices commits to ``cronbox.db`` made by other connections."""
        return self.central.watch()

    def rung_sessions(self) -> list[Session]:
        """Sessions whose outbox was written from outside their runner since the last call
        (see ``sessiondb.ring_doorbell``); a ring naming no session is dropped."""
        sessions = []
        for session_id in self.files.rung(RING_BATCH):
            try:
                sessions.append(self.central.session(session_id))
            except SessionNotFound:
                continue
        return sessions

    def _entry(
        self, actor: str, action: str, session_id: str | None, target: str | None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:  # fmt: skip
        return AuditEntry(
            at=fmt(self.now()), actor=actor, action=action, session_id=session_id,
            target=target, detail=detail,
        )  # fmt: skip

    def _commit(
        self,
        session_id: str,
        work: Callable[[InboxTransaction, _Work], T],
        receipt: Receipt | None = None,
    ) -> T:
        """Run ``work`` in one inbound transaction, then update the central view.

        With a ``receipt`` the outbound row is recorded in that same transaction; one
        already recorded raises AlreadyHandled and nothing is written.
        """
        done = _Work()
        now = fmt(self.now())
        with self.files.transaction(session_id) as tx:
            if receipt is not None and not tx.accept_outbound(
                receipt.seq, receipt.message_id[:200], receipt.channels, receipt.status, now,
                _cap(receipt.detail, MAX_DETAIL_CHARS),
            ):  # fmt: skip
                raise AlreadyHandled(receipt.seq)
            result = work(tx, done)
            view = tx.view(done.series)
            # Merging a run record again is harmless, losing one is not: the last
            # transaction's records are merged again with this one's.
            carried = tx.carry_runs(done.runs)
        version = self.files.version(session_id)
        if self._central_current(session_id, done, version, [*carried, *done.runs]):
            # Nothing was written (a settlement with no news, the common case while a
            # runner works) and the central view is this very inbox's: no commit.
            return result
        self.central.apply_view(
            session_id, view, version, now=now, runs=[*carried, *done.runs], audit=done.audit
        )
        return result

    def _peek(self, session_id: str, work: Callable[[InboxTransaction, _Work], T]) -> T | None:
        """``work``'s result when it needs no write: run on a read-only snapshot of the
        inbox, it wrote nothing there and left nothing for the central view, which is
        this very inbox's already. None when it needs a write: the caller then runs it
        through :meth:`_commit` (under the host's one writer).

        A settlement with no news, the common case while a runner works, then costs no
        write transaction and never waits for the writer. Its result is the one a
        commit at the snapshot's instant would have had.
        """
        done = _Work()
        try:
            with self.files.snapshot(session_id) as tx:
                result = work(tx, done)
                carried = tx.carried_runs()
                # Read under the snapshot's lock: no commit can land in between.
                version = self.files.version(session_id)
        except WouldWrite:
            return None
        # Run records the history holds already (a claim's start, the same at every
        # settlement while it runs) need neither the journal nor a merge.
        current = self._central_current(session_id, done, version, [*carried, *done.runs])
        return result if current else None

    def _central_current(
        self, session_id: str, done: _Work, version: int | None, runs: Sequence[RunRecord]
    ) -> bool:
        """Whether a unit of work that changed ``done`` leaves the central view as it is:
        it changed no series and recorded no audit entry, the view is derived from the
        inbox at ``version``, and the history holds ``runs`` already."""
        return (
            done.series == [] and not done.audit and version is not None
            and self.central.inbound_version(session_id) == version
            and self.central.runs_recorded(session_id, runs)
        )  # fmt: skip

    def record_audit(
        self, actor: str, action: str, session_id: str | None, target: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Append one audit entry."""
        self.central.record_audit(self._entry(actor, action, session_id, target, detail))

    def audit_entries(self, session_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries, newest first."""
        return self.central.audit_entries(session_id, limit)

    # --- agent profiles ----------------------------------------------------------------

    def agent_profile(self, name: str, environ: Mapping[str, str] | None = None) -> AgentProfile:
        """The profile a session named ``name`` runs with, its key variable checked in
        ``environ`` (the host's environment by default)."""
        env = os.environ if environ is None else environ
        return resolve_agent(name.strip(), self.agent_profiles(), env)

    def check_agent(self, name: str) -> str:
        """``name`` stripped, when a runner could serve it with the host's environment."""
        return check_agent(name, self.agent_profiles(), os.environ)

    # --- sessions ----------------------------------------------------------------------

    def create_session(
        self, name: str, *, agent: str = "echo", timezone: str | None = None,
        limits: ContainerLimits | None = None, actor: str = "cli",
    ) -> Session:  # fmt: skip
        """Register a session and create its directory and inbox.

        ``limits`` are its container's own (the docker runtime's defaults otherwise).
        """
        name = _session_name(name)
        agent = self.check_agent(agent)
        tz = zone(timezone, "--timezone").key if timezone else self.default_timezone
        container = check_limits(limits or ContainerLimits()).stored()
        if self.central.name_taken(name):
            raise SessionExists(name)
        session_id = self.files.create(tz)
        session = Session(
            id=session_id, name=name, agent=agent, timezone=tz, container=container,
            created_at=fmt(self.now()), last_active_at=None, next_due_at=None,
        )  # fmt: skip
        detail: dict[str, Any] = {"agent": agent, "tz": tz, **container}
        entry = self._entry(actor, "session.create", session_id, name, detail)
        self.central.insert_session(session, entry, self.files.version(session_id))
        return self.get_session(session_id)

    def update_session(
        self, ref: str, *, agent: str | None = None, timezone: str | None = None,
        quiet: str | None = None, max_wakes_per_day: int | None = None,
        limits: ContainerLimits | None = None, webhook: str | None = None,
        webhook_secret_env: str | None = None, clear_webhook: bool = False, actor: str = "cli",
    ) -> Session:  # fmt: skip
        """Change a session's agent profile, default timezone (its tasks keep theirs),
        quiet hours (``22:00-07:00`` in the session's zone; ``off`` clears them), wake cap,
        container limits (from its next container on) or webhook (the URL its replies are
        also POSTed to, and the host environment variable that holds the secret they are
        signed with).

        New quiet hours (or a new zone they are read in) move every pending task
        occurrence due inside the window to its end, and release those it held before.
        """
        session = self.get_session(ref)
        fields: dict[str, Any] = {}
        detail: dict[str, Any] = {}
        if agent is not None:
            fields["agent"] = self.check_agent(agent)
        if timezone is not None:
            fields["timezone"] = zone(timezone, "--timezone").key
        if quiet is not None:
            cleared = quiet.strip().lower() in QUIET_OFF
            fields["quiet"] = None if cleared else str(parse_quiet(quiet, "--quiet"))
        if max_wakes_per_day is not None:
            if not 0 <= max_wakes_per_day <= MAX_WAKES_PER_DAY:
                raise InvalidInput(
                    f"--max-wakes-per-day {max_wakes_per_day} is out of range; give 1 to "
                    f"{MAX_WAKES_PER_DAY}, or 0 for no limit"
                )
            fields["max_wakes_per_day"] = str(max_wakes_per_day) if max_wakes_per_day else None
        if limits is not None and limits.stored():
            changed = check_limits(limits).stored()
            fields["container"] = {**session.container, **changed}
            detail.update(changed)
        if clear_webhook:
            if webhook is not None or webhook_secret_env is not None:
                raise InvalidInput(
                    "--clear-webhook contradicts --webhook and --webhook-secret-env; give one"
                )
            fields.update(webhook_url=None, webhook_secret_env=None)
        if webhook is not None:
            fields["webhook_url"] = check_webhook_url(webhook)
        if webhook_secret_env is not None:
            if webhook is None and session.webhook_url is None:
                raise InvalidInput(
                    "--webhook-secret-env needs a webhook; give --webhook URL as well"
                )
            fields["webhook_secret_env"] = check_env_name(webhook_secret_env)
        if not fields:
            raise InvalidInput(
                "nothing to change; give --agent, --timezone, --quiet, --max-wakes-per-day, "
                "--network, --memory, --cpus, --pids, --webhook, --webhook-secret-env or "
                "--clear-webhook"
            )
        if "max_wakes_per_day" in fields:
            self.files.set_info(session.id, WAKES_KEY, fields["max_wakes_per_day"] or "")
        detail.update({k: v for k, v in fields.items() if k != "container"})
        entry = self._entry(actor, "session.update", session.id, session.name, detail)
        if "timezone" in fields or "quiet" in fields:

            def readmit(tx: InboxTransaction, done: _Work) -> None:
                if "timezone" in fields:
                    tx.set_info("timezone", str(fields["timezone"]))
                if "quiet" in fields:
                    tx.set_info(QUIET_KEY, fields["quiet"] or "")
                policy = self._policy(tx)
                done.series = []
                for row in tx.live_pending_tasks():
                    if row.tries or row.scheduled_for is None:
                        continue  # a retry keeps its backoff
                    due = fmt(policy.admitted(row, parse_utc(row.scheduled_for)))
                    if due != row.process_after:
                        tx.update(row.id, process_after=due, updated_at=fmt(self.now()))
                        done.series.append(row.series_id or row.id)

            self._commit(session.id, readmit)
        self.central.update_session(session.id, fields, entry)
        return self.get_session(session.id)

    def delete_session(
        self, ref: str, *, actor: str = "cli", stopped_runner: str | None = None
    ) -> Session:
        """Forget a session that has no live runner; its directory moves to ``trash/``.

        Its run history and audit trail stay in cronbox.db; ``stopped_runner`` (the
        runner the caller stopped first, if any) is recorded in the audit entry.
        """
        session = self.get_session(ref)
        if any(lease.session_id == session.id for lease in self.central.leases()):
            raise TaskStateError(
                f"session {session.name} has a runner working right now; "
                "stop the host or wait for the runner to finish, then delete it"
            )
        trash = self.home / "trash"
        trash.mkdir(exist_ok=True)
        self.session_dir(session.id).rename(trash / f"{session.id}-{secrets.token_hex(3)}")
        self.central.delete_session(
            session.id,
            self._entry(
                actor, "session.delete", session.id, session.name,
                {"stopped_runner": stopped_runner} if stopped_runner else None,
            ),
        )  # fmt: skip
        return session

    def reset_session(self, ref: str, *, actor: str = "cli") -> Path:
        """Move a session's outbox aside (under ``quarantine/``, kept for inspection) and
        start it clean; its inbox, tasks and history stay. Returns where the old outbox is.

        The session must have no live runner. Rows its old runner left claimed are taken
        up again by the next runner; a running host lifts its quarantine at its next pass.
        """
        session = self.get_session(ref)
        if any(lease.session_id == session.id for lease in self.central.leases()):
            raise TaskStateError(
                f"session {session.name} has a runner working right now; "
                "stop it (or the host) first, then reset the session"
            )
        stamp = self.now().strftime("%Y%m%dT%H%M%SZ")
        aside = self.home / "quarantine" / f"{session.id}-{stamp}-{secrets.token_hex(3)}"
        self.files.reset_outbox(session.id, aside)
        self.record_audit(actor, "session.reset", session.id, session.name,
                          {"kept": str(aside)})  # fmt: skip
        return aside

    def session_agents(self) -> list[tuple[str, str, str]]:
        """(id, name, agent profile) of every session: what a starting host needs of each."""
        return self.central.session_agents()

    def due_sessions(self, now: datetime, limit: int = 1000) -> list[tuple[str, Instant]]:
        """(session id, next_due_at) of sessions with due work, earliest first (index only)."""
        return self.central.due_sessions(fmt(now), limit)

    def chat_due_sessions(self, now: datetime) -> set[str]:
        """Sessions with a chat message due by ``now`` (the pool serves them first)."""
        return self.central.chat_due_sessions(fmt(now))

    # --- the central view --------------------------------------------------------------

    def sync_session(self, session_id: str) -> None:
        """Re-derive the whole central view of one session from its inbound.db."""

        def full(tx: InboxTransaction, done: _Work) -> None:
            done.series = None

        self._commit(session_id, full)

    def stale_sessions(self) -> list[str]:
        """Sessions whose inbound.db changed after their central view was derived.

        Every write derives the view right after committing to inbound.db, so only a
        crash between the two leaves a session here; a restarted host re-derives just
        those instead of opening every session's database.
        """
        return [
            sid
            for sid, seen in self.central.inbound_versions()
            if seen is None or seen != self.files.version(sid)
        ]

    def reindex(self) -> int:
        """Re-derive every session's central state from its files."""
        sessions = self.list_sessions()
        for session in sessions:
            self.sync_session(session.id)
        return len(sessions)

    # --- inbound messages --------------------------------------------------------------

    def send_message(
        self, session_ref: str, text: str, *, sender: str = "user", trigger: bool = True,
        actor: str = "cli",
    ) -> InboundMessage:  # fmt: skip
        """Append a chat message to a session's inbox, due at once."""
        session = self.get_session(session_ref)
        if not text.strip():
            raise InvalidInput("the message is empty; give the text to send")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(
                "the message is not valid Unicode text (it holds a lone surrogate); "
                "send it as UTF-8"
            ) from None
        if size > MAX_CHAT_BYTES:
            raise InvalidInput(
                f"the message is over {MAX_CHAT_BYTES // 1024} KiB; shorten it "
                "or put the bulk in a workspace file"
            )
        row = self._simple_row(session, MessageKind.CHAT, {"text": text, "sender": sender}, trigger)

        def insert(tx: InboxTransaction, done: _Work) -> None:
            tx.insert(row)
            done.audit.append(self._entry(actor, "chat.send", session.id, row.id))

        self._commit(session.id, insert)
        return self._row(session.id, row.id)

    def post_system_note(
        self, session_id: str, text: str, *, trigger: bool = False, receipt: Receipt | None = None
    ) -> None:
        """Tell the agent something (e.g. why its request was rejected) on its next turn."""
        session = self.get_session(session_id)
        row = self._simple_row(
            session, MessageKind.SYSTEM, {"text": text, "sender": "cronbox"}, trigger
        )
        self._commit(session.id, lambda tx, done: tx.insert(row), receipt)

    def _simple_row(
        self, session: Session, kind: MessageKind, content: dict[str, Any], trigger: bool
    ) -> InboundMessage:
        now = fmt(self.now())
        return InboundMessage(
            id=f"{kind.value}-{secrets.token_hex(6)}", seq=0, kind=kind, created_at=now,
            updated_at=now, status=MessageStatus.PENDING, process_after=now, scheduled_for=now,
            recurrence=None, timezone=session.timezone, series_id=None, tries=0,
            trigger=int(trigger), content=content,
        )  # fmt: skip

    def _row(self, session_id: str, message_id: str) -> InboundMessage:
        row = self.files.get(session_id, message_id)
        assert row is not None
        return row

    def due_ids(self, session_id: str) -> tuple[str, ...]:
        """Ids of the session's due rows that wake the agent (what a runner is woken for)."""
        return self.files.due_ids(session_id, fmt(self.now()))

    def inbound_rows(self, session_id: str) -> list[InboundMessage]:
        """Every row of a session's inbox, oldest first (for status views and tests)."""
        return self.files.all_rows(session_id)

    # --- tasks -------------------------------------------------------------------------

    def schedule_task(
        self, session_ref: str, request: ScheduleRequest | dict[str, Any], *,
        actor: str = "cli", receipt: Receipt | None = None,
    ) -> TaskView:  # fmt: skip
        """Validate and schedule a task.

        Scheduling the id of a live task again returns that task (an agent may retry);
        the id of a task that has ended raises TaskIdTaken and writes nothing.
        """
        session = self.get_session(session_ref)
        req = request if isinstance(request, ScheduleRequest) else ScheduleRequest.parse(request)
        valid = validate_schedule(
            req, default_tz=session.timezone, now=self.now(),
            min_interval=self.limits.min_interval,
            asked_at=receipt.asked_at if receipt else None,
        )  # fmt: skip
        owner = self.central.locate(valid.id, valid.id)
        if owner is not None and owner[0] != session.id:
            raise InvalidInput(
                f'task id "{valid.id}" is already used by another session; choose another id'
            )
        now = fmt(self.now())

        def insert(tx: InboxTransaction, done: _Work) -> None:
            done.series = [valid.id]
            if valid.after_task is not None:
                self._check_parent(tx, valid.id, valid.after_task)
            current = tx.current(valid.id)
            if current is not None and current.status.live:
                return  # the same id again while it is live: idempotent (agent retries)
            if current is not None:
                raise TaskIdTaken(valid.id, current.status.value)
            if owner is not None:
                raise TaskIdTaken(valid.id, None)  # ended, and its rows pruned since
            if tx.live_task_count() >= self.limits.max_tasks_per_session:
                raise TooManyTasks(session.name, self.limits.max_tasks_per_session)
            limit = wake_limit(tx.info(WAKES_KEY))
            if limit is not None:
                expr = valid.recurrence.expr if valid.recurrence else None
                adding = wakes_per_day(expr, bool(valid.script), zone(valid.timezone),
                                       self.now(), limit + 1)  # fmt: skip
                others = [(r.recurrence, bool(r.script), r.timezone)
                          for r in tx.live_pending_tasks()]  # fmt: skip
                new = (expr, bool(valid.script), zone(valid.timezone))
                check_wakes(adding, others, limit, self.now(), new)
            tx.insert(task_row(valid, now, self._policy(tx)))
            detail: dict[str, Any] = {
                "recurrence": valid.recurrence.expr if valid.recurrence else None,
                "first_run": None if valid.after_task else fmt(valid.first_run),
            }
            if valid.after_task:
                detail.update(after=valid.after_task, on=valid.after_outcome,
                              when_output=valid.when_output)  # fmt: skip
            if valid.approval:
                detail.update(approval=True, approval_timeout=valid.approval_timeout,
                              on_timeout=valid.on_timeout)  # fmt: skip
            done.audit.append(self._entry(actor, "task.schedule", session.id, valid.id, detail))

        self._commit(session.id, insert, receipt)
        return self.get_task(valid.id, session_id=session.id)

    @staticmethod
    def _check_parent(tx: InboxTransaction, task_id: str, parent: str) -> None:
        """Refuse a parent that is missing, ended, or would close a cycle (named)."""
        path = [task_id, parent]
        ancestor: str | None = parent
        while ancestor is not None:
            if ancestor == task_id:
                raise InvalidInput(
                    f"afterTask would make a cycle: {' → '.join(path)} (each runs after the "
                    "next); a task cannot run after itself"
                )
            if len(path) > MAX_CHAIN_DEPTH:
                raise InvalidInput(
                    f"the chain above {parent} is longer than {MAX_CHAIN_DEPTH} tasks; "
                    "chain this task to a task nearer the start"
                )
            ancestor = tx.chain_parent(ancestor)
            if ancestor is not None:
                path.append(ancestor)
        current = tx.current(parent)
        if current is None or current.kind is not MessageKind.TASK:
            raise InvalidInput(
                f'afterTask "{parent}" is no task of this session; give the id of a live task'
            )
        if not current.status.live:
            raise InvalidInput(
                f'afterTask "{parent}" has ended ({current.status.value}), so it will not run '
                "again; chain to a live task"
            )

    def _locate(self, ref: str, session_id: str | None) -> tuple[str, str]:
        """(session id, series id) for a task id, occurrence id or series id."""
        found = self.central.locate(series_of(ref), ref)
        if found is None or (session_id is not None and found[0] != session_id):
            raise TaskNotFound(ref)
        return found

    @staticmethod
    def _live(tx: InboxTransaction, ref: str) -> InboundMessage:
        current = tx.current(series_of(ref))
        if current is None:
            raise TaskNotFound(ref)
        if not current.status.live:
            raise TaskStateError(
                f'task "{ref}" has no live occurrence (last one is {current.status.value}); '
                "schedule a new task instead"
            )
        return current

    def get_task(self, ref: str, *, session_id: str | None = None) -> TaskView:
        """One task series by id, occurrence id or series id."""
        _, series = self._locate(ref, session_id)
        views = self.central.task_views(series_id=series)
        if not views:
            raise TaskNotFound(ref)
        return views[0]

    def list_tasks(
        self, session_ref: str | None = None, *, include_all: bool = False
    ) -> list[TaskView]:
        """Task series, live ones by default, soonest next run first."""
        session_id = self.get_session(session_ref).id if session_ref is not None else None
        return self.central.task_views(session_id=session_id, live_only=not include_all)

    def _change_status(
        self, ref: str, kind: TaskChange, actor: str, session_id: str | None,
        receipt: Receipt | None, note: str | None = None, with_children: bool = False,
    ) -> TaskView:  # fmt: skip
        session, series = self._locate(ref, session_id)
        action = kind.value.removesuffix("_task")
        now = self.now()

        def change(tx: InboxTransaction, done: _Work) -> None:
            family = self._descendants(tx, series) if kind is ActionKind.CANCEL else []
            if family and not with_children:
                raise HasChildren(ref, family)
            for child in family:
                self._cancel_rows(tx, child, now)
                done.audit.append(self._entry(actor, "task.cancel", session, child,
                                              {"with_parent": series}))  # fmt: skip
            current = tx.current(series)
            if kind is ActionKind.CANCEL and current is not None and not current.status.live:
                # An ended one-time task run again (``task run``) can still be called off.
                reruns = tx.pending_manual_runs(series)
                if reruns:
                    for run_id in reruns:
                        tx.update(run_id, status=MessageStatus.CANCELLED.value, updated_at=fmt(now))
                    done.series = [series]
                    done.audit.append(
                        self._entry(actor, "task.cancel", session, series, {"reruns": len(reruns)})
                    )
                    return
            live = self._live(tx, series)
            to = transition(kind, live.status, ref)
            fields: dict[str, Any] = {"status": to.value, "updated_at": fmt(now)}
            if to is MessageStatus.PAUSED:
                fields["paused_reason"] = note
            if to is MessageStatus.PENDING:
                # A resume starts the series afresh: no failure streak, no pause reason.
                fields.update(failures=0, paused_reason=None)
                resumed = resume_at(live, now)
                if resumed is not None and live.recurrence:
                    due = self._policy(tx).admitted(live, resumed)
                    fields.update(process_after=fmt(due), scheduled_for=fmt(resumed))
            tx.update(live.id, **fields)
            if to is MessageStatus.CANCELLED:
                # A manual run asked for before the cancel would otherwise still fire.
                self._cancel_rows(tx, series, now, live=False)
            done.series = [series, *family]
            detail = {"note": note} if note and to is MessageStatus.PAUSED else None
            done.audit.append(self._entry(actor, f"task.{action}", session, series, detail))

        self._commit(session, change, receipt)
        return self.get_task(series)

    def cancel_task(
        self, ref: str, *, actor: str = "cli", session_id: str | None = None,
        receipt: Receipt | None = None, with_children: bool = False,
    ) -> TaskView:  # fmt: skip
        """Cancel a task's live occurrence (by id or series id); it ends ``cancelled``.

        For an ended task this cancels the runs ``task run`` queued that have not started.
        A task with chained tasks waiting for it raises HasChildren (nothing written)
        unless ``with_children``, which cancels them, and theirs, too.
        """
        return self._change_status(
            ref, ActionKind.CANCEL, actor, session_id, receipt, with_children=with_children
        )

    @staticmethod
    def _descendants(tx: InboxTransaction, series: str) -> list[str]:
        """The chained tasks waiting for ``series``, and theirs, nearest first."""
        found: list[str] = []
        layer = [series]
        while layer and len(found) < 10 * MAX_CHAIN_DEPTH:
            layer = [c.id for c in tx.waiting_children(layer) if c.id not in found]
            found += layer
        return found

    @staticmethod
    def _cancel_rows(tx: InboxTransaction, series: str, now: datetime, live: bool = True) -> None:
        """Cancel a series' runs that have not started (and, with ``live``, its live row)."""
        at = fmt(now)
        ids = [*tx.pending_manual_runs(series), *(r.id for r in tx.awaiting(series))]
        if live:
            current = tx.current(series)
            if current is not None and current.status.live:
                ids.append(current.id)
        for row_id in dict.fromkeys(ids):
            tx.update(row_id, status=MessageStatus.CANCELLED.value, updated_at=at)

    def pause_task(
        self, ref: str, *, actor: str = "cli", session_id: str | None = None,
        receipt: Receipt | None = None, note: str | None = None,
    ) -> TaskView:  # fmt: skip
        """Pause a pending task; it keeps its place but never fires until resumed.

        ``note`` says why (``task list`` shows it beside the status until the resume).
        """
        return self._change_status(
            ref, ActionKind.PAUSE, actor, session_id, receipt, check_note(note)
        )

    def resume_task(
        self, ref: str, *, actor: str = "cli", session_id: str | None = None,
        receipt: Receipt | None = None,
    ) -> TaskView:  # fmt: skip
        """Resume a paused task; a recurring one continues from its next slot."""
        return self._change_status(ref, ActionKind.RESUME, actor, session_id, receipt)

    def update_task(
        self, request: UpdateRequest | dict[str, Any], *, actor: str = "cli",
        session_id: str | None = None, receipt: Receipt | None = None,
    ) -> TaskView:  # fmt: skip
        """Change a task's prompt, script, time or recurrence; reschedules the live occurrence.

        An OperatorUpdateRequest may also change its timeout, misfire grace and timezone.
        """
        req = request if isinstance(request, UpdateRequest) else UpdateRequest.parse(request)
        session, series = self._locate(req.task_id, session_id)
        now = self.now()

        def change(tx: InboxTransaction, done: _Work) -> None:
            live = self._live(tx, series)
            if live.after_task and {"process_after", "recurrence"} & req.model_fields_set:
                raise InvalidInput(
                    f"task {series} runs each time {live.after_task} finishes, so it takes no "
                    "processAfter or recurrence; cancel it and schedule a new task instead"
                )
            changes = validate_update(
                req, live, now=now, min_interval=self.limits.min_interval,
                asked_at=receipt.asked_at if receipt else None,
            )  # fmt: skip
            fields: dict[str, Any] = {"updated_at": fmt(now), **changes.row_fields()}
            if {"scheduled_for", "process_after", "jitter", "ignore_quiet"} & set(fields):
                # The new due time: the slot plus its jitter, past the quiet hours.
                probe = live.model_copy(
                    update={k: fields[k] for k in ("jitter", "ignore_quiet") if k in fields}
                )
                slot = parse_utc(fields.get("scheduled_for") or live.scheduled_for or fmt(now))
                fields["process_after"] = fmt(self._policy(tx).admitted(probe, slot))
            tx.update(live.id, **fields)
            audited = ("recurrence", "process_after", *changes.settings)
            detail = {k: v for k, v in fields.items() if k in audited}
            done.series = [series]
            done.audit.append(self._entry(actor, "task.update", session, series, detail))

        self._commit(session, change, receipt)
        return self.get_task(series)

    def run_now(self, ref: str, *, actor: str = "cli") -> InboundMessage:
        """Fire a task once now, outside its schedule; the series is left as it is.

        A live task gets an extra manual run. A one-time task that ended completed or
        failed runs again as a new manual occurrence (its history keeps both runs); a
        cancelled task, or a recurring series that ended, is refused.
        """
        session, series = self._locate(ref, None)
        now = fmt(self.now())
        run_id = f"{series}{OCCURRENCE_SEP}run-{secrets.token_hex(4)}"

        def insert(tx: InboxTransaction, done: _Work) -> None:
            current = tx.current(series)
            if current is None:
                raise TaskNotFound(ref)
            if current.status is MessageStatus.CANCELLED:
                raise TaskStateError(
                    f'task "{ref}" was cancelled, so it is not run again; '
                    "schedule a new task instead"
                )
            rerun = current.recurrence is None and current.status in _RERUNNABLE
            if not current.status.live and not rerun:
                raise TaskStateError(
                    f'task "{ref}" has no live occurrence (last one is '
                    f"{current.status.value}); schedule a new task instead"
                )
            tx.insert(
                current.model_copy(
                    update={
                        "id": run_id, "seq": 0, "created_at": now, "updated_at": now,
                        "status": MessageStatus.PENDING, "process_after": now,
                        "scheduled_for": now, "recurrence": None, "series_id": series,
                        "tries": 0, "trigger": 1, "misfire_grace": None, "error": None,
                        "content": {**current.content, "manual": True},
                    }
                )
            )  # fmt: skip
            detail = None if current.status.live else {"rerun_of": current.status.value}
            done.audit.append(self._entry(actor, "task.run", session, series, detail))

        self._commit(session, insert)
        return self._row(session, run_id)

    def backfill(self, ref: str, start: str, end: str, *, actor: str = "cli") -> InboundMessage:
        """Run a recurring task's slots from ``start`` to ``end`` (in the past), one after
        another, as backfill runs (their history keeps the slot each stands for).

        The series' schedule is left as it is. Refused for a task that is not recurring
        or not live, a window outside the rules of ``backfill_slots``, and while an
        earlier backfill of the task is still running. Returns the first run queued.
        """
        session, series = self._locate(ref, None)
        now = self.now()

        def insert(tx: InboxTransaction, done: _Work) -> InboundMessage:
            current = self._live(tx, series)
            if not current.recurrence:
                raise TaskStateError(
                    f'task "{ref}" runs once, so it has no slots to backfill; '
                    "use task run to run it now"
                )
            if any(is_backfill(i) for i in tx.pending_manual_runs(series)):
                raise TaskStateError(
                    f'a backfill of task "{ref}" is still running; wait for it to finish '
                    "or cancel the task"
                )
            rec = stored_recurrence(current.recurrence)
            slots = backfill_slots(rec, zone(current.timezone), start, end, now)
            first = backfill_row(current, slots, now)
            tx.insert(first)
            detail = {"from": fmt(slots[0]), "to": fmt(slots[-1]), "slots": len(slots)}
            done.audit.append(self._entry(actor, "task.backfill", session, series, detail))
            return first

        first = self._commit(session, insert)
        return self._row(session, first.id)

    def approve_task(self, ref: str, *, actor: str = "cli", note: str | None = None
                     ) -> InboundMessage:  # fmt: skip
        """Approve an occurrence awaiting approval (by occurrence id, or the oldest of a
        series): it is due at once and runs. Only people answer: no agent action does."""
        return self._answer(ref, DecisionKind.APPROVED, actor, note)

    def reject_task(self, ref: str, *, actor: str = "cli", note: str | None = None
                    ) -> InboundMessage:  # fmt: skip
        """Reject an occurrence awaiting approval: it ends ``skipped``, its run is recorded
        ``rejected`` (who, when, the note) and a recurring series continues."""
        return self._answer(ref, DecisionKind.REJECTED, actor, note)

    def _answer(self, ref: str, kind: DecisionKind, actor: str, note: str | None
                ) -> InboundMessage:  # fmt: skip
        session, series = self._locate(ref, None)
        now = self.now()
        decision = Decision(kind=kind, by=actor, at=fmt(now), note=check_note(note, "note"))
        audit: list[AuditEntry] = []
        answered: list[str] = []

        def plan_of(tx: InboxTransaction) -> SettlementPlan:
            rows = tx.awaiting(series)
            row = next((r for r in rows if r.id == ref), rows[0] if rows else None)
            if row is None:
                raise TaskStateError(
                    f'task "{ref}" has no occurrence awaiting approval; '
                    "`cronbox task show` says what it is doing"
                )
            answered.append(row.id)
            audit.append(self._entry(actor, f"task.{_VERB[kind]}", session, series,
                                     {"occurrence": row.id, "note": decision.note}))  # fmt: skip
            return self._decide(tx, row, decision, now)

        self._apply_plan(session, plan_of, audit)
        return self._row(session, answered[0])

    def children_of(self, ref: str) -> list[str]:
        """The chained tasks waiting for a task series."""
        session, series = self._locate(ref, None)
        return self.files.waiting_children(session, series)

    def upcoming(self, ref: str, n: int = 10) -> list[tuple[datetime, datetime]]:
        """(slot, when it runs) of a task's next ``n`` runs, as the host will run them
        (:func:`host.settlement.preview_runs`); none for an ended task."""
        live = self.live_row(ref)
        if live is None or not live.status.live:
            return []
        session = self.get_session(self._locate(ref, None)[0])
        policy = Policy(
            quiet=parse_quiet(session.quiet) if session.quiet else None, zone=session.timezone
        )
        return preview_runs(live, policy, n)

    def live_row(self, ref: str) -> InboundMessage | None:
        """A task's live (or newest) occurrence, with its policies."""
        view = self.get_task(ref)
        return self.files.get(view.session_id, view.id)

    def runs_of(self, session_id: str, message_ids: Sequence[str]) -> dict[str, Run]:
        """The run of each of these occurrences of one session that has one."""
        return self.central.runs_of(session_id, message_ids)

    def runs_for(self, ref: str, limit: int = PAGE_SIZE) -> list[Run]:
        """The newest ``limit`` runs of a task series, newest first."""
        return self.run_page(ref, limit=limit).rows

    def run_page(
        self, ref: str, *, after: int | None = None, limit: int = PAGE_SIZE
    ) -> Page[Run, int]:
        """One page of a task series' past runs, newest first: those listed after run
        ``after`` (older ones) when given."""
        check_limit(limit)
        session, series = self._locate(ref, None)
        runs = self.central.runs(session, series, limit + 1, after)
        return Page(runs[:limit], runs[limit - 1].id if len(runs) > limit else None)

    def iter_runs(self, ref: str, after: int | None = None) -> Iterator[Run]:
        """Every past run of a task series (after run ``after``), newest first, page by page."""
        while True:
            page = self.run_page(ref, after=after, limit=MAX_PAGE)
            yield from page.rows
            if page.next_after is None:
                return
            after = page.next_after

    # --- model tokens (the gateway's counts) --------------------------------------------

    def charge_tokens(self, session_id: str, row_ids: Sequence[str], tokens: TokenCount) -> None:
        """Record one model call of a session: its tokens count towards the session's day
        (UTC) and are shared out over the runs of ``row_ids``, the rows the runner said the
        call was for. Only the session's own rows still in work are charged, so a runner
        can move tokens between its own runs at most, never change what its session used.
        """
        rows = [self.files.get(session_id, i) for i in dict.fromkeys(row_ids)]
        working = [r for r in rows if r is not None and r.status is MessageStatus.PENDING]
        charged = [
            ChargedRun(message_id=row.id, series_id=row.series_id,
                       scheduled_for=row.scheduled_for or row.process_after, tokens=share)
            for row, share in zip(working, tokens.shares(len(working)), strict=True)
        ]  # fmt: skip
        self.central.record_tokens(session_id, self.token_day(), tokens, charged)

    def series_tokens(self, ref: str) -> TokenCount:
        """The tokens a task's recorded runs used, added up."""
        session, series = self._locate(ref, None)
        return self.central.series_tokens(session, series)

    def tokens_today(self, session_id: str) -> TokenCount:
        """The tokens the session's model calls used today (UTC)."""
        return self.central.tokens_on(self.token_day(), session_id).get(session_id, TokenCount())

    # --- the conversation --------------------------------------------------------------

    def conversation(self, session_ref: str, limit: int = 50) -> list[LogEntry]:
        """A session's messages in and replies out, in time order (the newest ``limit``).

        Messages in are the rows that have come due: chat, task occurrences (with the
        outcome of their run) and system notes. Replies are the runner's chat rows;
        they are untrusted, so one that is not a valid reply is left out.
        """
        session = self.get_session(session_ref)
        rows, raw_replies = self.files.recent(session.id, fmt(self.now()), limit)
        runs = self.central.runs_of(session.id, [r.id for r in rows if r.kind is MessageKind.TASK])
        entries = [_entry_in(row, runs.get(row.id)) for row in rows]
        entries += [e for e in map(_entry_out, raw_replies) if e is not None]
        entries.sort(key=lambda e: (e.at, e.direction == "out"))
        return entries[-limit:]

    def replies(self, session_id: str, message_id: str) -> list[str]:
        """The texts the runner wrote in reply to one inbound row (valid ones only)."""
        return [e.text for e in map(_entry_out, self.files.replies_to(session_id, message_id)) if e]

    def message(self, session_id: str, message_id: str) -> InboundMessage:
        """One inbound row of a session."""
        return self._row(session_id, message_id)

    def run(self, run_id: int) -> Run:
        """One run by the id ``task history`` shows; RunNotFound otherwise."""
        run = self.central.run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    # --- settlement (the host's sweep) -------------------------------------------------

    def _apply_plan(
        self, session_id: str, plan_of: Callable[[InboxTransaction], SettlementPlan],
        audit: Sequence[AuditEntry] = (),
    ) -> SettlementPlan:  # fmt: skip
        """Apply a plan in one inbound transaction (see :meth:`_plan_work`)."""
        return self._commit(session_id, self._plan_work(session_id, plan_of, audit))

    def _plan_work(
        self, session_id: str, plan_of: Callable[[InboxTransaction], SettlementPlan],
        audit: Sequence[AuditEntry] = (),
    ) -> Callable[[InboxTransaction, _Work], SettlementPlan]:  # fmt: skip
        """The unit of work that applies a plan, with the missed-run policy of the
        occurrences it inserted that are due already (a series finishing late), so a
        live runner never claims one before its policy was applied.

        In the same transaction: approvals whose deadline passed are decided, the
        chained tasks of the occurrences that ended are fired (so a crash can neither
        lose nor double a child), and due approval-gated occurrences start waiting.
        """

        def apply(tx: InboxTransaction, done: _Work) -> SettlementPlan:
            plan = plan_of(tx)
            tx.apply(plan.changes)
            now = self.now()
            inserted = [
                r for r in plan.changes.inserts
                if r.kind is MessageKind.TASK and r.status is MessageStatus.PENDING
            ]  # fmt: skip
            due = [r for r in inserted if r.process_after and parse_utc(r.process_after) <= now]
            if due:
                current = tx.rows([r.id for r in due])
                caught_up = plan_catch_up(list(current.values()), now, self._policy(tx))
                tx.apply(caught_up.changes)
                plan = _merged(plan, caught_up)
            plan = _merged(plan, self._expire_approvals(tx, done, now, session_id))
            chained = self._fire_children(tx, plan, now)
            gated = self._gate_due(tx, now, session_id)
            if gated:
                plan = plan.model_copy(update={"gated": tuple(gated)})
            done.series = [*plan.series, *chained, *map(series_of, gated)]
            done.runs = plan.runs
            done.audit += [
                self._entry("cronbox", "task.pause", session_id, p.series_id,
                            {"reason": p.reason[:500]})
                for p in plan.paused
            ]  # fmt: skip
            done.audit += audit
            return plan

        return apply

    def _expire_approvals(
        self, tx: InboxTransaction, done: _Work, now: datetime, session_id: str
    ) -> SettlementPlan:
        """Decide the occurrences whose approval deadline passed, by their ``--on-timeout``."""
        plan = SettlementPlan()
        for row in tx.awaiting(expired_at=fmt(now)):
            decision = timeout_decision(row, now)
            decided = self._decide(tx, row, decision, now)
            tx.apply(decided.changes)
            plan = _merged(plan, decided)
            done.audit.append(
                self._entry("cronbox", f"task.{_VERB[decision.kind]}", session_id,
                            row.series_id, {"by": TIMEOUT_ACTOR, "occurrence": row.id})
            )  # fmt: skip
        return plan

    def _decide(
        self, tx: InboxTransaction, row: InboundMessage, decision: Decision, now: datetime
    ) -> SettlementPlan:
        """One approval decision on an awaiting occurrence: an approval is written at once,
        a rejection returned as the plan that ends the occurrence (the caller applies it)."""
        if decision.kind is DecisionKind.APPROVED:
            tx.update(row.id, **approve_fields(row, decision))
            return SettlementPlan(runs=(decision_run(row, decision),),
                                  series=(row.series_id or row.id,))  # fmt: skip
        return plan_reject(row, decision, now, self._policy(tx))

    def _fire_children(
        self, tx: InboxTransaction, plan: SettlementPlan, now: datetime
    ) -> list[str]:
        """Insert the runs of the chained tasks the plan's ended occurrences fire, and end
        the children of parent series that are over; returns the series it changed."""
        ended = [(f.message_id, f.series_id, f.outcome) for f in plan.finished]
        if not ended:
            return []
        outputs = {r.message_id: r.output_preview for r in plan.runs if r.outcome is not None}
        ends = parent_ends(ended, outputs)
        parents = list(dict.fromkeys(e.series_id for e in ends))
        changed: list[str] = []
        first = True
        while parents:
            children = tx.waiting_children(parents)
            if not children:
                break
            over = [p for p in parents if self._series_over(tx, p)]
            fired_before = [c.id for c in children if tx.chain_fired(c.id)]
            changes = plan_chain(ends if first else [], children, over, fired_before, now)
            for row in changes.inserts:
                if tx.get(row.id) is None:  # the chain key is unique: never fired twice
                    tx.insert(row)
            tx.apply(InboxChanges(updates=changes.updates))
            changed += [c.id for c in children]
            # A child that ended with nothing of it left to run ends its own children too.
            parents = [u.message_id for u in changes.updates if self._series_over(tx, u.message_id)]
            first = False
        return changed

    @staticmethod
    def _series_over(tx: InboxTransaction, series: str) -> bool:
        """Whether nothing of a series can run again (its children then end)."""
        current = tx.current(series)
        if current is not None and current.status.live:
            return False
        return not tx.pending_manual_runs(series) and not tx.awaiting(series)

    def _gate_due(self, tx: InboxTransaction, now: datetime, session_id: str) -> list[str]:
        """Turn due approval-gated occurrences into ``awaiting_approval``, with a note to
        the session and, when it has a webhook, the same note queued for it (recorded
        under the note's seq negated; the delivery sends and retries it like a reply).
        Returns the gated occurrences."""
        gates, notes = plan_gate(tx.gated_due(fmt(now)), now)
        if not gates:
            return []
        webhook = bool(self.central.session(session_id).webhook_url)
        at = fmt(now)
        for gate in gates:
            tx.update(gate.message_id, status=MessageStatus.AWAITING_APPROVAL.value,
                      process_after=gate.deadline, approval_state=gate.state,
                      updated_at=at)  # fmt: skip
        for note in notes:
            if tx.get(note.id) is None:
                seq = tx.insert(note)
                if webhook:
                    tx.accept_outbound(-seq, note.id, (NOTICE_CHANNEL,),
                                       DeliveryStatus.PENDING, at)  # fmt: skip
        return [g.message_id for g in gates]

    def _policy(self, tx: InboxTransaction, **overrides: Any) -> Policy:
        """The rules settlement applies to the session whose inbox ``tx`` holds open."""
        quiet = tx.info(QUIET_KEY)
        return Policy(
            failure_backoff=self.limits.failure_backoff,
            quiet=parse_quiet(quiet) if quiet else None,
            zone=tx.info("timezone") or self.default_timezone,
            **overrides,
        )

    def settle_acks(self, session_id: str, default_timeout: timedelta) -> SettlementPlan:
        """Apply the runner's acks to the inbox and the run history (sweep steps 1 and 5).

        Only due rows can have been claimed, so future ones are never read. Returns the
        plan: rows still claimed, and the occurrences it finished.
        """
        if not self.files.has_outbox(session_id):
            return SettlementPlan()
        return self._commit(session_id, self._settlement(session_id, default_timeout))

    def settle_acks_unwritten(
        self, session_id: str, default_timeout: timedelta
    ) -> SettlementPlan | None:
        """:meth:`settle_acks` when it would write nothing (no news from the runner, no
        time-driven change due), read without a write transaction; None when it would
        write (then call :meth:`settle_acks`, under the writer)."""
        if not self.files.has_outbox(session_id):
            return SettlementPlan()
        return self._peek(session_id, self._settlement(session_id, default_timeout))

    def _settlement(
        self, session_id: str, default_timeout: timedelta
    ) -> Callable[[InboxTransaction, _Work], SettlementPlan]:
        """The unit of work of :meth:`settle_acks`."""

        def plan(tx: InboxTransaction) -> SettlementPlan:
            now = self.now()
            policy = self._policy(tx, default_timeout=default_timeout)
            due = {r.id: r for r in tx.due_rows(fmt(now))}
            return settle_acks(due, self.files.acks(session_id, list(due)), now, policy)

        return self._plan_work(session_id, plan)

    def requeue(
        self, session_id: str, claims: Sequence[Claim], reason: str, *,
        timed_out: Sequence[str] = (), retry_base: timedelta = timedelta(seconds=5),
    ) -> SettlementPlan:  # fmt: skip
        """Settle the rows a runner that is gone left claimed (sweep step 4).

        Reads only those rows, whatever the size of the inbox.
        """
        if not claims:
            return SettlementPlan()

        def plan(tx: InboxTransaction) -> SettlementPlan:
            rows = tx.rows([c.message_id for c in claims])
            policy = self._policy(tx, retry_base=retry_base)
            return plan_requeue(rows, claims, reason, self.now(), policy, timed_out)

        return self._apply_plan(session_id, plan)

    def prepare_due(self, session_id: str) -> SettlementPlan:
        """Apply the catch-up rule to a session's due rows before its runner is woken.

        Returns the plan (the occurrences it recorded ``missed`` are in ``finished``).
        """
        return self._apply_plan(session_id, self._catch_up)

    def prepare_due_unwritten(self, session_id: str) -> SettlementPlan | None:
        """:meth:`prepare_due` when it would write nothing (nothing to catch up, the common
        case), read without a write transaction; None when it would write (then call
        :meth:`prepare_due`, under the writer)."""
        return self._peek(session_id, self._plan_work(session_id, self._catch_up))

    def _catch_up(self, tx: InboxTransaction) -> SettlementPlan:
        """The plan of :meth:`prepare_due`: the catch-up rule over the inbox's due rows."""
        now = self.now()
        return plan_catch_up(tx.due_rows(fmt(now)), now, self._policy(tx))

    def prune_finished(self, session_id: str, keep: timedelta) -> int:
        """Delete a session's finished inbox rows older than ``keep`` (run history stays)."""
        before = fmt(self.now() - keep)

        def prune(tx: InboxTransaction, done: _Work) -> int:
            return tx.prune_finished(before, PRUNE_BATCH)

        return self._commit(session_id, prune)

    # --- outbound: replies and agent actions -------------------------------------------

    def undelivered(self, session_id: str, limit: int = UNDELIVERED_BATCH) -> list[dict[str, Any]]:
        """Raw ``messages_out`` rows the host has not taken in yet, oldest first (untrusted)."""
        return self.files.undelivered(session_id, limit)

    def accept_replies(
        self, session_id: str, receipts: Sequence[Receipt], delivered: Sequence[str] = ()
    ) -> list[int]:
        """Take several replies in with one inbound transaction (one delivery row per
        channel each), the channels in ``delivered`` recorded delivered already (those
        that record before they send). Returns the seqs taken in; one taken in before is
        left out and nothing is written for it."""
        now = fmt(self.now())

        def take(tx: InboxTransaction, done: _Work) -> list[int]:
            taken = []
            for receipt in receipts:
                if not tx.accept_outbound(
                    receipt.seq, receipt.message_id[:200], receipt.channels, receipt.status,
                    now, _cap(receipt.detail, MAX_DETAIL_CHARS),
                ):  # fmt: skip
                    continue
                taken.append(receipt.seq)
                for channel in delivered:
                    tx.record_attempt(receipt.seq, channel, DeliveryStatus.DELIVERED, now,
                                      None, None)  # fmt: skip
            return taken

        return self._commit(session_id, take)

    def record_attempt(
        self, session_id: str, seq: int, channel: str, status: DeliveryStatus,
        next_attempt: datetime | None, error: str | None,
    ) -> None:  # fmt: skip
        """Record one channel's attempt at a reply."""
        with self.files.transaction(session_id) as tx:
            tx.record_attempt(
                seq, channel, status, fmt(self.now()),
                fmt(next_attempt) if next_attempt else None, _cap(error, MAX_DETAIL_CHARS),
            )  # fmt: skip

    def defer_delivery(
        self, session_id: str, seq: int, channel: str, until: datetime, why: str
    ) -> None:
        """Put one channel's delivery of a reply off until ``until`` (no attempt made)."""
        with self.files.transaction(session_id) as tx:
            tx.defer_delivery(seq, channel, fmt(self.now()), fmt(until), _cap(why, 500) or why)

    def delivery_attempts(self, session_id: str) -> list[sdb.DeliveryAttempt]:
        """Every recorded delivery attempt of a session's replies, in the order made."""
        return self.files.delivery_attempts(session_id)

    def webhook_sessions(self) -> list[Session]:
        """Sessions with a webhook (whose deliveries may wait for a receiver)."""
        return self.central.sessions(with_webhook=True)

    def reject_outbound(
        self, session: Session, seq: int, message_id: str, reason: str, action: str,
        *, record: bool = True,
    ) -> bool:  # fmt: skip
        """Record a rejected outbound row, audit it and tell the agent why (exactly once).

        Without ``record`` the row's seq cannot be recorded as taken in (it is no
        integer, or another row holds it): it is audited and explained only.
        """
        rejection = Rejection(seq, message_id, reason, action)
        return bool(self.reject_outbound_many(session, [rejection], record=record))

    def reject_outbound_many(
        self, session: Session, rejections: Sequence[Rejection], *, record: bool = True
    ) -> int:
        """Record rejected outbound rows in one inbox transaction: each taken in once and
        audited, and all told to the agent in the one note it has not been handed yet
        (rejections between two agent turns share a note; a flood of bad rows must not
        become a flood of notes, each fed to the model). Returns how many were new."""
        now = fmt(self.now())

        def reject(tx: InboxTransaction, done: _Work) -> int:
            fresh = [
                r for r in rejections
                if not record or tx.accept_outbound(
                    r.seq, r.message_id[:200], ("action",), DeliveryStatus.REJECTED, now,
                    _cap(r.reason, MAX_DETAIL_CHARS),
                )
            ]  # fmt: skip
            if not fresh:
                return 0
            last = fresh[-1]
            latest = f"Your {last.action} request (seq {last.seq}) was rejected: {last.reason}"
            unread = tx.unread_rejection_note()
            if unread is None and len(fresh) == 1:
                tx.insert(self._simple_row(
                    session, MessageKind.SYSTEM,
                    {"text": latest, "sender": "cronbox", "rejections": 1}, False,
                ))  # fmt: skip
            else:
                count = len(fresh) + (int(unread.content.get("rejections", 1)) if unread else 0)
                content = {
                    "text": f"{count} of your requests were rejected; the latest: {latest}",
                    "sender": "cronbox", "rejections": count,
                }  # fmt: skip
                if unread is None:
                    tx.insert(self._simple_row(session, MessageKind.SYSTEM, content, False))
                else:
                    tx.update(unread.id, updated_at=now, content=content)
            done.audit += [
                self._entry(
                    f"agent:{session.id}", "outbound.reject", session.id, r.message_id[:200],
                    {"seq": r.seq, "action": r.action, "reason": r.reason[:500]},
                )
                for r in fresh
            ]  # fmt: skip
            return len(fresh)

        return self._commit(session.id, reject)

    # --- leases ------------------------------------------------------------------------

    def acquire_lease(self, session_id: str, host: str, runner_ref: str) -> None:
        """Record that ``host`` runs the session's runner ``runner_ref``."""
        self.central.acquire_lease(
            Lease(session_id=session_id, host=host, runner_ref=runner_ref,
                  acquired_at=fmt(self.now()))
        )  # fmt: skip

    def release_lease(self, session_id: str, runner_ref: str) -> None:
        """Forget the lease of a runner that is gone."""
        self.central.release_lease(session_id, runner_ref)

    def leases(self) -> list[Lease]:
        """Every recorded lease."""
        return self.central.leases()


def _entry_in(row: InboundMessage, run: Run | None) -> LogEntry:
    return LogEntry(
        at=row.process_after or row.created_at, direction="in", kind=row.kind, id=row.id,
        text=row.prompt, sender=str(row.content.get("sender") or "") or None, status=row.status,
        outcome=run.outcome if run else None, error=(run.error if run else None) or row.error,
    )  # fmt: skip


def _entry_out(raw: dict[str, Any]) -> LogEntry | None:
    try:
        message = sdb.outbound_from_row(raw)
        text = sdb.chat_text(message)
        at = fmt(parse_utc(message.created_at))
    except (ValueError, ValidationError, CronboxError):
        return None
    return LogEntry(
        at=at, direction="out", kind=message.kind, id=message.id, text=text,
        in_reply_to=message.in_reply_to,
    )  # fmt: skip


def _merged(first: SettlementPlan, then: SettlementPlan) -> SettlementPlan:
    """Two plans applied one after the other, as one."""
    return SettlementPlan(
        changes=InboxChanges(
            updates=first.changes.updates + then.changes.updates,
            inserts=first.changes.inserts + then.changes.inserts,
        ),
        runs=first.runs + then.runs, claims=first.claims + then.claims,
        finished=first.finished + then.finished, series=first.series + then.series,
        paused=first.paused + then.paused,
    )  # fmt: skip


def check_webhook_url(url: str) -> str:
    """A webhook URL as given, or InvalidInput: http(s), with a host, at most 2000 chars."""
    url = url.strip()
    parts = urlsplit(url) if len(url) <= 2000 else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f'webhook "{url[:80]}" is not an http(s) URL; give one such as '
            "https://example.com/cronbox-hook"
        )
    return url


def check_env_name(name: str) -> str:
    """An environment variable name, or InvalidInput."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise InvalidInput(
            f'"{name[:80]}" is not an environment variable name; use letters, digits and _, '
            "such as CRONBOX_WEBHOOK_SECRET"
        )
    return name


def _session_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise InvalidInput(
            f'session name "{name[:80]}" is not valid; use 1-64 characters without spaces'
        )
    return name


def _cap(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"
