"""Frozen record models shared by host and MCP server, and the state enums and size limits
of :mod:`cronbox_shared.rows` (re-exported here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# The vocabulary lives in a module free of pydantic (a runner's wake imports only that);
# everything in it is this module's too.
from cronbox_shared.rows import (
    LIVE_STATUSES,
    MAX_CHAT_BYTES,
    MAX_PROMPT_BYTES,
    MAX_SCRIPT_BYTES,
    PREVIEW_CHARS,
    AckStatus,
    DeliveryStatus,
    MessageKind,
    MessageStatus,
    MissedPolicy,
    RowContent,
    RunOutcome,
    preview,
)
from cronbox_shared.timeutil import Instant

__all__ = [
    "LIVE_STATUSES", "MAX_CHAT_BYTES", "MAX_PROMPT_BYTES", "MAX_SCRIPT_BYTES", "PREVIEW_CHARS",
    "Ack", "AckStatus", "DeliveryStatus", "InboundMessage", "MessageKind", "MessageStatus",
    "MissedPolicy", "OutboundMessage", "Record", "RunOutcome", "preview",
]  # fmt: skip


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)


class InboundMessage(Record, RowContent):
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
