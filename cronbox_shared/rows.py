"""The rows' vocabulary without pydantic: states, size limits, and an inbox row as a
runner reads it.

A runner's wake imports this, not :mod:`cronbox_shared.models` (which re-exports all of
it beside the validated records the host builds): a runner reads only the inbox the host
wrote, and the host validates everything a runner writes back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

MAX_PROMPT_BYTES = 64 * 1024
MAX_SCRIPT_BYTES = 64 * 1024
MAX_CHAT_BYTES = 64 * 1024
PREVIEW_CHARS = 500
# An occurrence of a series is ``<series>~<n>``; a backfill run ``<series>~backfill-<slot>``.
OCCURRENCE_SEP = "~"
BACKFILL = "backfill"


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


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str | None:
    """Shorten ``text`` for run history and tables."""
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_backfill(message_id: str) -> bool:
    """Whether an occurrence id names a backfill run."""
    return f"{OCCURRENCE_SEP}{BACKFILL}-" in message_id


class RowContent:
    """What an inbox row asks, read from its ``content``: shared by the runner's
    :class:`InboxRow` and the host's ``InboundMessage``."""

    __slots__ = ()
    if TYPE_CHECKING:
        content: dict[str, Any]

    @property
    def prompt(self) -> str:
        """A task's prompt, or a message's text."""
        return str(self.content.get("prompt") or self.content.get("text") or "")

    @property
    def script(self) -> str | None:
        """The row's gate script, None when it has none."""
        script = self.content.get("script")
        return str(script) if script else None


@dataclass(frozen=True, kw_only=True, slots=True)
class InboxRow(RowContent):
    """One ``messages_in`` row as a runner claims it: what the agent is asked to do.

    The host's own view of the row is :class:`cronbox_shared.models.InboundMessage`
    (validated, with every scheduling field); a runner needs only these, read from the
    inbox the host wrote (see :func:`cronbox_shared.outbox.claimable`).
    """

    id: str
    seq: int
    kind: MessageKind
    created_at: str
    tries: int
    trigger: int
    content: dict[str, Any]
    process_after: str | None = None
    scheduled_for: str | None = None
    recurrence: str | None = None
    timezone: str = "UTC"
    series_id: str | None = None
    isolated: bool = False
    """Runs in a fresh conversation (as ``InboundMessage.isolated`` says)."""

    @classmethod
    def from_columns(cls, values: dict[str, Any]) -> InboxRow:
        """The row from its stored columns (``content`` as its JSON text)."""
        content = json.loads(values["content"])
        if not isinstance(content, dict):
            raise ValueError(f"inbox row {values['id']} has content that is not a JSON object")
        return cls(
            id=str(values["id"]), seq=int(values["seq"]), kind=MessageKind(values["kind"]),
            created_at=str(values["created_at"]), tries=int(values["tries"]),
            trigger=int(values["trigger"]), content=content,
            process_after=values["process_after"], scheduled_for=values["scheduled_for"],
            recurrence=values["recurrence"], timezone=str(values["timezone"]),
            series_id=values["series_id"], isolated=bool(values["isolated"]),
        )  # fmt: skip
