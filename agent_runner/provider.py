"""The agent provider interface: what turns a batch of due rows into agent work.

The runner hands a provider one :class:`Batch` at a time and records, per row, the
:class:`RowOutcome` it gets back. Implementations live in ``agent_runner/providers/``,
one backend-named module each, and are looked up by name with
:func:`agent_runner.providers.get_provider`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent_runner.history import ConversationStore, Remember
from agent_runner.mailbox import SessionState
from cronbox_shared.outbox import WORKSPACE
from cronbox_shared.rows import InboxRow


@dataclass(frozen=True)
class SessionContext:
    """Where and when the agent runs.

    ``session_dir`` holds ``workspace/``, the agent's working directory; a provider that
    bridges the MCP tools starts ``python -m mcp_tools`` for it
    (:mod:`agent_runner.mcp_client`). ``local_time`` is the batch's "now" in
    ``timezone``. ``state`` is the runner's own key/value store (None only for a context
    built outside a runner).
    """

    session_dir: Path
    timezone: str
    local_time: datetime
    state: SessionState | None = field(default=None, compare=False)
    conversation: ConversationStore | None = field(default=None, compare=False)
    """The session's earlier exchanges with the model (None outside a runner)."""

    @property
    def workspace(self) -> Path:
        return self.session_dir / WORKSPACE


@dataclass(frozen=True)
class BatchItem:
    """One due row and its text as the agent should read it.

    ``gated`` says whether a gate script ran (and decided to wake the agent); then
    ``gate_data`` is the script's ``data`` (possibly ``None``). ``text`` already
    contains that data.
    """

    message: InboxRow
    text: str
    gated: bool = False
    gate_data: Any = None


@dataclass(frozen=True)
class Batch:
    """Rows handed to the agent together, oldest first.

    ``prompt`` is the whole batch rendered for a model: the context line (timezone and
    local time) followed by every item's ``text``. Rows with ``trigger=0`` are context
    the agent should know about; at least one row is a ``trigger=1`` row, or the batch
    was full of context rows while a ``trigger=1`` row waited behind them.
    """

    items: tuple[BatchItem, ...]
    context: SessionContext
    prompt: str

    @property
    def ids(self) -> list[str]:
        return [item.message.id for item in self.items]

    @property
    def isolated(self) -> bool:
        """An isolated task's batch (it always runs alone): no history in, none out."""
        return bool(self.items) and all(item.message.isolated for item in self.items)


@dataclass(frozen=True)
class RowOutcome:
    """How one row went: ``ok`` with an optional ``reply``, or not ``ok`` with ``error``."""

    ok: bool
    reply: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.ok and self.error is not None:
            raise ValueError("a successful RowOutcome carries no error")
        if not self.ok and not self.error:
            raise ValueError("a failed RowOutcome needs the error text")

    @classmethod
    def success(cls, reply: str | None) -> RowOutcome:
        """The row was handled; ``reply`` (if any) goes to the user as a chat message."""
        return cls(ok=True, reply=reply)

    @classmethod
    def failure(cls, error: str) -> RowOutcome:
        """The row was not handled; ``error`` is recorded in the run history."""
        return cls(ok=False, error=error)


MISSING_OUTCOME = "the provider returned no result for this row"


@dataclass(frozen=True)
class ProviderResult:
    """Per-row outcomes of one batch, keyed by ``messages_in`` id."""

    outcomes: Mapping[str, RowOutcome] = field(default_factory=dict)
    remember: Remember | None = None
    """The exchange to add to the session's history, stored with the settlement."""

    def outcome_for(self, message_id: str) -> RowOutcome:
        """The row's outcome; a row the provider left out counts as failed, never as done."""
        return self.outcomes.get(message_id) or RowOutcome.failure(MISSING_OUTCOME)


class Provider(Protocol):
    """An agent backend: answers a batch of rows, one outcome per row.

    Implementers must ensure:

    * ``run`` returns an outcome for every row of the batch. A row left out is recorded
      as failed. A reply of ``None`` or ``""`` means the row was handled without a chat
      reply (e.g. a task whose work was a tool call).
    * Errors are never swallowed as success. A row the agent could not handle is a
      ``RowOutcome.failure`` with the error text; if the whole call fails, ``run``
      raises and the runner records every row of the batch as failed with
      ``str(exception)`` (so make that message one clear sentence).
    * Cancellation (``anyio.get_cancelled_exc_class()``) is re-raised, not turned into
      an outcome; resources started for a call are released under a shielded scope.
    * Blocking work (HTTP clients without async support, file I/O) runs in a worker
      thread; the runner's heartbeat shares the event loop.
    * Only ``batch.context.workspace`` is used for files, and a provider that needs to
      keep state across runs (e.g. a conversation id) stores it in
      ``batch.context.state`` (``get_state``/``set_state``) or, for a conversation,
      returns it as ``ProviderResult.remember`` (read back from
      ``batch.context.conversation``), not in memory: the runner exits when idle.
    * A batch that is ``isolated`` is answered without the session's history and
      leaves nothing in it.
    """

    async def run(self, batch: Batch) -> ProviderResult:
        """Let the agent handle ``batch`` and report how each row went."""
        ...


def one_reply(batch: Batch, reply: str | None) -> ProviderResult:
    """A batch the agent answered as a whole: one reply, however many rows it held.

    The reply goes with the last row that woke the agent (the last row when none did),
    so it is delivered once, in reply to what asked for it; the other rows are handled
    without a reply of their own.
    """
    items = batch.items
    woke = [item for item in items if item.message.trigger] or list(items)
    answered = woke[-1].message.id if woke else None
    return ProviderResult(
        {
            item.message.id: RowOutcome.success(reply if item.message.id == answered else None)
            for item in items
        }
    )
