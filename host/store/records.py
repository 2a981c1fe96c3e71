"""The host's records: frozen models of what ``cronbox.db`` holds, read or written."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from cronbox_shared.models import (
    LIVE_STATUSES,
    InboundMessage,
    MessageKind,
    MessageStatus,
    Record,
    RunOutcome,
)
from cronbox_shared.timeutil import Instant


class Session(Record):
    """A row of the central ``sessions`` table."""

    id: str
    name: str
    agent: str
    timezone: str
    container: dict[str, Any]
    created_at: Instant
    last_active_at: Instant | None
    next_due_at: Instant | None
    quiet: str | None = None
    """Quiet hours such as ``22:00-07:00`` in the session's zone (None: none)."""
    max_wakes_per_day: int | None = None
    """How often a day its tasks may wake the agent, counted when scheduling (None: no limit)."""
    webhook_url: str | None = None
    """Where the webhook channel POSTs this session's replies (none: console only)."""
    webhook_secret_env: str | None = None
    """The host environment variable holding the webhook's HMAC-SHA256 signing secret."""


class TaskView(Record):
    """One task series as shown by ``task list``: its live (or newest) occurrence."""

    id: str
    series_id: str
    session_id: str
    session: str
    status: MessageStatus
    next_run: Instant | None
    recurrence: str | None
    timezone: str
    prompt: str
    has_script: bool
    last_run_at: Instant | None = None
    last_outcome: RunOutcome | None = None
    paused_reason: str | None = None
    after_task: str | None = None
    """A chained task: the parent series it runs after."""
    after_outcome: str | None = None
    when_output: str | None = None
    approval: bool = False
    """Each occurrence waits for a person's approval."""
    """Why a paused series is paused (the failure rule, or the operator's note)."""


# Rows on one page of a listing by default, and at most (more: page on, or stream all).
PAGE_SIZE = 50
MAX_PAGE = 1000
LIVE_STATES = LIVE_STATUSES
"""The states of a live series: it may still run."""


class TaskFilter(StrEnum):
    """Which task series a listing holds: live ones (the default), all, or one state
    (``task list --status``, ``GET /api/tasks?status=``)."""

    LIVE = "live"
    ALL = "all"
    PENDING = "pending"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    WAITING = "waiting"
    AWAITING_APPROVAL = "awaiting_approval"

    @property
    def states(self) -> tuple[MessageStatus, ...] | None:
        """The states listed; None for every state."""
        if self is TaskFilter.LIVE:
            return LIVE_STATES
        return None if self is TaskFilter.ALL else (MessageStatus(self.value),)


class TaskQuery(Record):
    """Which page of task series to list: the filters, and where the page starts."""

    session_id: str | None = None
    states: tuple[MessageStatus, ...] | None = LIVE_STATES
    """The states listed (live ones by default); None lists every state."""
    after: str | None = None
    """The page starts after this series (a series or occurrence id); None: the first."""
    limit: int = 50


class Run(Record):
    """One occurrence that started, from the central ``runs`` table."""

    id: int
    session_id: str
    message_id: str
    series_id: str | None
    scheduled_for: Instant | None
    started_at: Instant | None
    finished_at: Instant | None
    outcome: RunOutcome | None
    tries: int
    error: str | None
    output_preview: str | None
    decision: str | None = None
    """An approval-gated run: ``approved`` or ``rejected``."""
    decided_by: str | None = None
    """Who decided: the CLI or HTTP user, or ``timeout``."""
    decided_at: Instant | None = None
    decision_note: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    """Model tokens the gateway counted for this run (its share of a shared call)."""


class TokenCount(Record):
    """Model tokens, as the vendor reported them to the gateway."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenCount) -> TokenCount:
        return TokenCount(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )

    def shares(self, n: int) -> list[TokenCount]:
        """``n`` shares that add up to these tokens exactly (the first ones take what
        does not divide evenly): one model call answered ``n`` rows at once."""
        if n <= 0:
            return []
        (qi, ri), (qo, ro) = divmod(self.input_tokens, n), divmod(self.output_tokens, n)
        return [
            TokenCount(input_tokens=qi + (i < ri), output_tokens=qo + (i < ro)) for i in range(n)
        ]


class ChargedRun(Record):
    """A run's share of one model call's tokens."""

    message_id: str
    series_id: str | None
    scheduled_for: Instant | None
    tokens: TokenCount


class RunRecord(Record):
    """What settlement learned of one occurrence; merged into its ``runs`` row.

    Fields left ``None`` keep what the row already holds, so a run first seen
    ``processing`` and later finished ends up with both its start and its end.
    """

    message_id: str
    series_id: str | None
    scheduled_for: Instant | None
    tries: int
    started_at: Instant | None = None
    finished_at: Instant | None = None
    outcome: RunOutcome | None = None
    error: str | None = None
    output_preview: str | None = None
    decision: str | None = None
    decided_by: str | None = None
    decided_at: Instant | None = None
    decision_note: str | None = None


class AuditEntry(Record):
    """One line of the audit log: who changed what."""

    id: int = 0
    at: Instant
    actor: str
    action: str
    session_id: str | None
    target: str | None
    detail: dict[str, Any] | None = None


class LogEntry(Record):
    """One line of a session's conversation: a message in, or a reply out."""

    at: Instant
    direction: Literal["in", "out"]
    kind: MessageKind
    id: str
    text: str
    sender: str | None = None
    status: MessageStatus | None = None
    """For a message in: what became of it."""
    outcome: RunOutcome | None = None
    """For a task occurrence: the outcome of its run."""
    error: str | None = None
    in_reply_to: str | None = None


class Lease(Record):
    """Which host runs a session's runner right now (one row per live runner)."""

    session_id: str
    host: str
    runner_ref: str
    acquired_at: Instant


class SessionView(Record):
    """What the central view of one session is derived from, read from its inbound.db.

    ``tasks`` holds the current row of each series that changed; with ``full`` it holds
    every series, and the central mirror is replaced rather than updated.
    """

    next_due_at: Instant | None
    chat_due_at: Instant | None = None
    """The earliest ``process_after`` of pending chat rows that wake the agent."""
    tasks: tuple[InboundMessage, ...] = ()
    full: bool = False
    awaiting: int = 0
    """How many occurrences await approval."""


class JobRecord(Record):
    """What ``cronbox.db`` records of one background job's runs."""

    name: str
    running_since: Instant | None
    last_run_at: Instant | None
    last_finished_at: Instant | None
    last_ok: bool | None
    last_result: str | None
