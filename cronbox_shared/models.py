"""State enums, size limits and frozen record models shared by host, runner and MCP server."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from cronbox_shared.timeutil import Instant

MAX_PROMPT_BYTES = 64 * 1024
MAX_SCRIPT_BYTES = 64 * 1024
MAX_CHAT_BYTES = 64 * 1024
PREVIEW_CHARS = 500


class MessageKind(StrEnum):
    CHAT = "chat"
    TASK = "task"
    SYSTEM = "system"


class MessageStatus(StrEnum):
    PENDING = "pending"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    WAITING = "waiting"
    """A chained task waiting for its parent (its runs are inserted as the parent ends)."""
    AWAITING_APPROVAL = "awaiting_approval"
    """An occurrence of an approval-gated task that came due and waits for a person."""

    @property
    def live(self) -> bool:
        """Pending, paused, waiting and awaiting rows are live: they may still run."""
        return self in LIVE_STATUSES


LIVE_STATUSES = (
    MessageStatus.PENDING, MessageStatus.PAUSED, MessageStatus.WAITING,
    MessageStatus.AWAITING_APPROVAL,
)  # fmt: skip


class AckStatus(StrEnum):
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class MissedPolicy(StrEnum):
    """What a recurring series does with slots that passed while nothing ran them."""

    LATEST = "latest"
    """Run once for the latest missed slot (coalesce)."""
    ALL = "all"
    """Run each missed slot in order, at most ``catchup_limit``; older ones are missed."""
    SKIP = "skip"
    """Record every missed slot ``missed`` and continue at the next slot."""


class RunOutcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    MISSED = "missed"
    REJECTED = "rejected"
    """An approval-gated occurrence a person (or its timeout) rejected: it never ran."""


class DeliveryStatus(StrEnum):
    """The host's state of one outbound row on one channel."""

    PENDING = "pending"
    """Not delivered yet: the channel failed and its next attempt is due later."""
    DELIVERED = "delivered"
    APPLIED = "applied"
    """An agent action the host applied to the inbox."""
    REJECTED = "rejected"
    """An invalid row; the agent was told why."""
    FAILED = "failed"
    """The channel gave up after its last attempt."""

    @property
    def final(self) -> bool:
        return self is not DeliveryStatus.PENDING


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InboundMessage(Record):
    """One row of a session's ``messages_in``."""

    id: str
    seq: int
    kind: MessageKind
    created_at: Instant
    status: MessageStatus
    process_after: Instant | None
    scheduled_for: Instant | None
    recurrence: str | None
    timezone: str
    series_id: str | None
    tries: int
    trigger: int
    content: dict[str, Any]
    misfire_grace: int | None = None
    timeout: int | None = None
    error: str | None = None
    updated_at: Instant | None = None
    missed_policy: MissedPolicy | None = None
    catchup_limit: int | None = None
    max_failures: int | None = None
    failures: int = 0
    """Failed occurrences of the series in a row before this one."""
    paused_reason: str | None = None
    jitter: int | None = None
    ignore_quiet: bool = False
    """Runs in the session's quiet hours too."""
    after_task: str | None = None
    """A chained task: the series whose finished occurrences insert its runs."""
    after_outcome: str | None = None
    """Which outcomes of the parent fire it: ``ok``, ``error`` or ``any``."""
    when_output: str | None = None
    """``contains:TEXT`` or ``regex:PATTERN`` the parent's output must match."""
    chain_key: str | None = None
    """A chained run: the parent occurrence that fired it (unique per child series)."""
    approval: bool = False
    """Each occurrence waits for a person's approval before it runs."""
    approval_timeout: int | None = None
    """Seconds an occurrence waits for an answer (None: until answered)."""
    on_timeout: str | None = None
    """``approve`` or ``reject`` (the default) when the answer does not come in time."""
    approval_state: dict[str, Any] | None = None
    """The approval of one occurrence: ``occurrence`` (its id), ``decision``, ``by``,
    ``at``, ``note``, ``deadline`` — it counts only for the occurrence it names."""
    isolated: bool = False
    """Runs in a fresh conversation: the model sees none of the session's history, and
    the run adds none to it (its reply still goes to the session)."""

    @property
    def prompt(self) -> str:
        return str(self.content.get("prompt") or self.content.get("text") or "")

    @property
    def script(self) -> str | None:
        script = self.content.get("script")
        return str(script) if script else None


class OutboundMessage(Record):
    """One row of a session's ``messages_out``."""

    id: str
    seq: int
    kind: MessageKind
    created_at: str
    in_reply_to: str | None
    content: dict[str, Any]


class Ack(Record):
    """The container's record of one attempt at an inbound row."""

    message_id: str
    attempt: int
    status: AckStatus
    updated_at: str
    error: str | None
    output_preview: str | None
    started_at: str | None = None


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str | None:
    """Shorten ``text`` for run history and tables."""
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"
