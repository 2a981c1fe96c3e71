"""The host's repositories as Protocols: the seams for other backends.

The service layer (:mod:`host.service`) talks to the central state and to the session
files only through these. :mod:`host.store.central` and :mod:`host.store.files`
implement them on SQLite; a later issue implements them on PostgreSQL, where several
hosts share one database and the lease rows say which host runs which session.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from cronbox_shared.models import DeliveryStatus, InboundMessage
from cronbox_shared.sessiondb import DeliveryAttempt, DeliveryRow
from cronbox_shared.timeutil import Instant
from host.settlement import InboxChanges
from host.store.records import (
    AuditEntry,
    ChargedRun,
    JobRecord,
    Lease,
    Run,
    RunRecord,
    Session,
    SessionView,
    TaskQuery,
    TaskView,
    TokenCount,
)


class WouldWrite(Exception):
    """A unit of work tried on a read-only snapshot of an inbox needs a write."""


class ChangeFeed(Protocol):
    """Tells the host that another process changed the central state."""

    def changed(self) -> bool:
        """True once for every batch of outside commits since the last call."""
        ...

    def close(self) -> None:
        """Release what the feed holds open."""
        ...


class CentralRepository(Protocol):
    """The registry of sessions with their due index, the task mirror, runs, audit, leases.

    Implementers must ensure every method is one atomic unit (one read, or one
    transaction), that instants are compared as stored strings (their order is time
    order), and that nothing here ever opens a session's own files: an idle session
    costs a sweep nothing.
    """

    def insert_session(self, session: Session, audit: AuditEntry, version: int | None) -> None:
        """Register a session (its inbox at ``version``) with its audit entry; raise
        SessionExists for a taken name."""
        ...

    def update_session(self, session_id: str, fields: dict[str, Any], audit: AuditEntry) -> None:
        """Set the session's ``agent``, ``timezone``, ``quiet``, ``max_wakes_per_day``,
        webhook columns and/or ``container`` (a dict of its container limits) with its
        audit entry."""
        ...

    def delete_session(self, session_id: str, audit: AuditEntry) -> None:
        """Forget the session, its task mirror and its lease; keep its runs and audit."""
        ...

    def session(self, ref: str) -> Session:
        """The session with this id or name (id first); raise SessionNotFound."""
        ...

    def name_taken(self, name: str) -> bool:
        """Whether a session has this name."""
        ...

    def session_agents(self) -> list[tuple[str, str, str]]:
        """(id, name, agent profile) of every session, oldest first."""
        ...

    def session_count(self) -> int:
        """How many sessions there are."""
        ...

    def inbound_versions(self) -> list[tuple[str, int | None]]:
        """(session id, inbox version its view was derived from) for every session."""
        ...

    def inbound_version(self, session_id: str) -> int | None:
        """The inbox version one session's view was derived from (None: not known)."""
        ...

    def watch(self) -> ChangeFeed:
        """A feed of commits made by other processes."""
        ...

    def sessions(self, *, with_webhook: bool = False) -> list[Session]:
        """Every session (only those with a webhook URL when asked), oldest first."""
        ...

    def due_sessions(self, now: Instant, limit: int = 1000) -> list[tuple[str, Instant]]:
        """Sessions whose ``next_due_at <= now``, earliest first, from the index alone."""
        ...

    def chat_due_sessions(self, now: Instant, limit: int = 1000) -> set[str]:
        """Sessions with a due chat message (``chat_due_at <= now``), from the index alone."""
        ...

    def next_wake(self) -> Instant | None:
        """The earliest ``next_due_at`` of all sessions."""
        ...

    def runs_recorded(self, session_id: str, runs: Sequence[RunRecord]) -> bool:
        """Whether merging these run records into the history would change nothing."""
        ...

    def apply_view(
        self,
        session_id: str,
        view: SessionView,
        version: int | None,
        *,
        now: Instant,
        runs: Sequence[RunRecord] = (),
        audit: Sequence[AuditEntry] = (),
    ) -> None:
        """Replace the session's due index and update its task mirror, merge run records
        and append audit entries, all in one transaction.

        Implementers must merge a run record into an existing run of the same message
        without losing a start time or an outcome already recorded.
        """
        ...

    def apply_views(
        self, views: Sequence[tuple[str, SessionView, int | None]], *, now: Instant
    ) -> None:
        """``apply_view`` without runs or audit for many sessions, in one transaction."""
        ...

    def locate(self, series_id: str, occurrence_id: str) -> tuple[str, str] | None:
        """(session id, series id) of the series with this id or live occurrence id."""
        ...

    def task_views(
        self,
        *,
        series_id: str | None = None,
        session_id: str | None = None,
        live_only: bool = False,
    ) -> list[TaskView]:
        """Task series with their last run, soonest next run first."""
        ...

    def awaiting_count(self) -> int:
        """Occurrences awaiting approval over every session (no inbox is opened)."""
        ...

    def decision_counts(self) -> dict[str, int]:
        """Approval decisions (``approved``, ``rejected``) in the kept run history."""
        ...

    def task_page(self, query: TaskQuery) -> list[TaskView]:
        """Up to ``query.limit`` series matching its filters, after ``query.after``.

        Implementers must list in an order fixed when a series is first seen and never
        changed after (not by a run, a new occurrence or a re-derived view), so that
        paging skips and repeats nothing while series are added or run; an unknown
        ``after`` raises TaskNotFound. One page is read from the index alone.
        """
        ...

    def live_task_count(self) -> int:
        """Live task series over every session."""
        ...

    def counts(self) -> dict[str, int]:
        """``sessions`` and ``tasks.<state>`` for each task state held, kept with every
        write, so reading them costs the same on any size of home."""
        ...

    def due_count(self, now: Instant) -> int:
        """How many sessions have work due by ``now``."""
        ...

    def quiet_sessions(self, limit: int) -> tuple[int, list[tuple[str, str, str]]]:
        """How many sessions have quiet hours, and (name, window, zone) of the first
        ``limit`` by name."""
        ...

    def runs(
        self, session_id: str, series_id: str, limit: int = 50, before: int | None = None
    ) -> list[Run]:
        """Runs of one series, newest first; only those older than run ``before`` if given."""
        ...

    def runs_of(self, session_id: str, message_ids: Sequence[str]) -> dict[str, Run]:
        """The run of each of these occurrences that has one."""
        ...

    def run(self, run_id: int) -> Run | None:
        """One run by its id."""
        ...

    def record_tokens(
        self, session_id: str, day: str, tokens: TokenCount, charged: Sequence[ChargedRun]
    ) -> None:
        """Add one model call's ``tokens`` to the session's total for ``day`` (UTC,
        ``YYYY-MM-DD``) and each run's share to its run (inserted if it has no row yet)."""
        ...

    def series_tokens(self, session_id: str, series_id: str) -> TokenCount:
        """The tokens of every run of a series still recorded, added up."""
        ...

    def tokens_on(self, day: str, session_id: str | None = None) -> dict[str, TokenCount]:
        """The tokens each session (or only ``session_id``) used on ``day``, by id; a
        session that used none is left out."""
        ...

    def token_sessions(self, day: str, agents: Collection[str]) -> list[Session]:
        """Sessions that used tokens on ``day`` or run one of ``agents``, oldest first,
        read through the indexes rather than by loading every session."""
        ...

    def job_states(self) -> list[JobRecord]:
        """What is recorded of every background job that has run."""
        ...

    def job_started(self, name: str, at: Instant) -> bool:
        """Mark a job running; False (nothing written) when it already is."""
        ...

    def job_finished(self, name: str, at: Instant, ok: bool, result: str) -> None:
        """Record how a job's run ended."""
        ...

    def clear_running_jobs(self) -> int:
        """Forget the running marks a dead host left behind."""
        ...

    def prune_runs(self, before: Instant) -> int:
        """Delete runs that finished before ``before`` and the daily token counts of the
        days before its day; how many runs."""
        ...

    def prune_audit(self, before: Instant) -> int:
        """Delete audit entries older than ``before``; how many."""
        ...

    def record_audit(self, entry: AuditEntry) -> None:
        """Append one audit entry."""
        ...

    def audit_entries(self, session_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries (of one session), newest first."""
        ...

    def acquire_lease(self, lease: Lease) -> None:
        """Record which host runs the session's runner (replacing an older lease)."""
        ...

    def release_lease(self, session_id: str, runner_ref: str) -> None:
        """Drop the lease only while it still names ``runner_ref``."""
        ...

    def leases(self) -> list[Lease]:
        """Every lease."""
        ...


class InboxTransaction(Protocol):
    """One open write transaction on a session's inbox.

    Implementers must ensure the transaction is taken before the first read (so a
    plan computed from what it reads cannot race another writer), that new rows get
    increasing even seqs, and that every lookup here costs the same whatever the
    session's history: nothing scans finished rows.
    """

    def carry_runs(self, runs: Sequence[RunRecord]) -> list[RunRecord]:
        """Keep this transaction's run records in the inbox until the next transaction,
        and return the previous transaction's (which the central history may lack, if a
        crash came between the inbox's commit and its own)."""
        ...

    def carried_runs(self) -> list[RunRecord]:
        """The run records the last transaction kept (read only)."""
        ...

    def unread_rejection_note(self) -> InboundMessage | None:
        """The newest note about rejected requests the agent has not been handed yet."""
        ...

    def insert(self, row: InboundMessage) -> int:
        """Insert a new row; return its seq."""
        ...

    def update(self, message_id: str, **fields: Any) -> None:
        """Set columns of one row."""
        ...

    def get(self, message_id: str) -> InboundMessage | None:
        """One row by id."""
        ...

    def current(self, ref: str) -> InboundMessage | None:
        """The newest scheduled row of the series ``ref`` names: its live occurrence if any."""
        ...

    def pending_manual_runs(self, series_id: str) -> list[str]:
        """Ids of the series' manual runs (``task run``) that have not started."""
        ...

    def due_rows(self, now: Instant) -> list[InboundMessage]:
        """Pending rows due at ``now``."""
        ...

    def rows(self, ids: Sequence[str]) -> dict[str, InboundMessage]:
        """Rows by id."""
        ...

    def live_task_count(self) -> int:
        """Pending or paused task occurrences."""
        ...

    def apply(self, changes: InboxChanges) -> None:
        """Apply a settlement plan; an occurrence whose id exists is not inserted again."""
        ...

    def accept_outbound(
        self, seq: int, message_id: str, channels: Sequence[str], status: DeliveryStatus,
        at: Instant, detail: str | None = None,
    ) -> bool:  # fmt: skip
        """Record an outbound row as taken in; False if it already was."""
        ...

    def record_attempt(
        self, seq: int, channel: str, status: DeliveryStatus, at: Instant,
        next_attempt_at: Instant | None, error: str | None,
    ) -> None:  # fmt: skip
        """Record one channel's attempt at a reply."""
        ...

    def info(self, key: str) -> str | None:
        """One fact recorded with :meth:`set_info`, or None."""
        ...

    def live_pending_tasks(self) -> list[InboundMessage]:
        """The pending occurrence of every task series (one per series)."""
        ...

    def defer_delivery(self, seq: int, channel: str, at: Instant, until: Instant, why: str) -> None:
        """Put a pending delivery off until ``until`` without counting an attempt."""
        ...

    def set_info(self, key: str, value: str) -> None:
        """Record one fact about the session (its zone) for its runner and MCP server."""
        ...

    def prune_finished(self, before: Instant, limit: int) -> int:
        """Delete finished rows older than ``before``, keeping each series' newest row."""
        ...

    def view(self, series: Sequence[str] | None) -> SessionView:
        """The due index and the current rows of ``series`` (None: all) as committed so far."""
        ...

    def waiting_children(self, series_ids: Sequence[str]) -> list[InboundMessage]:
        """The chained tasks (status ``waiting``) whose parent is one of ``series_ids``."""
        ...

    def chain_parent(self, series_id: str) -> str | None:
        """The parent series the chained task ``series_id`` waits for (None: not chained)."""
        ...

    def chain_fired(self, series_id: str) -> bool:
        """Whether any parent occurrence has fired a run of the chained task ``series_id``."""
        ...

    def gated_due(self, now: Instant) -> list[InboundMessage]:
        """Pending, due occurrences of approval-gated tasks not approved for themselves."""
        ...

    def awaiting(
        self, series_id: str | None = None, expired_at: Instant | None = None
    ) -> list[InboundMessage]:
        """Occurrences awaiting approval, oldest first: of ``series_id`` when given, and
        only those whose deadline is at or before ``expired_at`` when given."""
        ...


class SessionFiles(Protocol):
    """Every session's inbox (host-written) and outbox (runner-written, read-only here).

    Implementers must treat everything read from an outbox as untrusted raw data and
    never write to it.
    """

    def notices(self, session_id: str, seqs: Sequence[int]) -> list[InboundMessage]:
        """The host's own notes (inbox rows) with these seqs, which a channel delivers."""
        ...

    def waiting_children(self, session_id: str, series_id: str) -> list[str]:
        """Ids of the chained tasks (``waiting``) whose parent is ``series_id``."""
        ...

    def directory(self, session_id: str) -> Path:
        """Where the session's files live (the runtime mounts it)."""
        ...

    def rung(self, limit: int) -> list[str]:
        """Ids (at most ``limit``) of sessions whose outbox a process outside their runner
        announced since the last call, each returned once."""
        ...

    def create(self, timezone: str) -> str:
        """Make a new session's inbox (recording its zone), outbox and workspace; its id."""
        ...

    def set_info(self, session_id: str, key: str, value: str) -> None:
        """Record one fact about the session in its inbox (one transaction)."""
        ...

    def set_zone(self, session_id: str, timezone: str) -> None:
        """Record the session's zone in its inbox, for its runner and MCP server."""
        ...

    def transaction(self, session_id: str) -> AbstractContextManager[InboxTransaction]:
        """A write transaction on the session's inbox, committed when the block ends."""
        ...

    def snapshot(self, session_id: str) -> AbstractContextManager[InboxTransaction]:
        """A read-only transaction on the session's inbox: one consistent view, never
        written; a write in it raises :class:`WouldWrite`."""
        ...

    def version(self, session_id: str) -> int | None:
        """A number that changes with every committed change of the inbox."""
        ...

    def acks(self, session_id: str, message_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Raw acks the runner wrote for these rows."""
        ...

    def undelivered(self, session_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Raw outbound rows not taken in yet, oldest first."""
        ...

    def strays(self, session_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Raw outbound rows at or below the last seq taken in that were never taken in
        (written out of order or sharing a seq): they are rejected, never skipped silently."""
        ...

    def outbound_rows(self, session_id: str, seqs: Sequence[int]) -> list[dict[str, Any]]:
        """Raw outbound rows with these seqs."""
        ...

    def pending_deliveries(self, session_id: str) -> list[DeliveryRow]:
        """Channel deliveries still to be made, due or waiting for their backoff."""
        ...

    def delivery_attempts(self, session_id: str) -> list[DeliveryAttempt]:
        """Every recorded delivery attempt of the session's replies, in order."""
        ...

    def get(self, session_id: str, message_id: str) -> InboundMessage | None:
        """One inbox row by id."""
        ...

    def all_rows(self, session_id: str) -> list[InboundMessage]:
        """Every inbox row, oldest first."""
        ...

    def has_outbox(self, session_id: str) -> bool:
        """Whether the runner has created its outbox yet."""
        ...

    def check_outbox(self, session_id: str) -> bool:
        """Whether the outbox file exists; raises OutboxUnreadable when it may not be read
        (a link, the wrong type, oversize, another owner). Opens nothing."""
        ...

    def probe_outbox(self, session_id: str) -> None:
        """Open the outbox once as every read does; raises OutboxUnreadable with the reason.

        Implementers must make every outbox read bounded in bytes and time, follow no
        link and wait for a writer's lock only briefly."""
        ...

    def reset_outbox(self, session_id: str, aside: Path) -> None:
        """Move the session's outbox to ``aside`` and start a clean one whose seqs continue
        above every seq already taken in."""
        ...

    def roll_back_outbox(self, session_id: str) -> None:
        """Roll back the hot journal a killed runner left; only once its runner is gone."""
        ...

    def due_ids(self, session_id: str, now: Instant) -> tuple[str, ...]:
        """Ids of due pending rows that wake the agent, oldest first."""
        ...

    def recent(
        self, session_id: str, now: Instant, limit: int
    ) -> tuple[list[InboundMessage], list[dict[str, Any]]]:
        """The newest inbox rows that came due, and the newest raw chat replies."""
        ...

    def replies_to(self, session_id: str, message_id: str) -> list[dict[str, Any]]:
        """Raw chat replies to one inbound row."""
        ...
