"""The mailbox: the one way an agent runner reaches its session.

The runner takes due rows from the session's inbox, records what became of each (its
ack, and the agent's reply), tells the host it is alive, and keeps a little state of its
own, all through a :class:`Mailbox`. It never opens a session file itself. Implementations
live beside this module, named after their backend (``sqlite.py``: the session
directory's ``inbound.db``, ``outbound.db`` and ``.heartbeat``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent_runner.history import ConversationStore, Remember
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.rows import AckStatus, InboxRow

__all__ = ["Mailbox", "SessionState", "Settlement", "wakes_agent"]


@dataclass(frozen=True)
class Settlement:
    """The final ack of one row, and the chat reply to write with it (if any)."""

    message: InboxRow
    status: AckStatus
    error: str | None = None
    preview: str | None = None
    reply: str | None = None


def wakes_agent(rows: Sequence[InboxRow]) -> bool:
    """A claimed batch is worth waking the agent for when it holds a ``trigger=1`` row."""
    return any(row.trigger for row in rows)


class SessionState(Protocol):
    """The runner's own key/value store (e.g. a provider's conversation id).

    Implementers must keep values across runner restarts (a runner exits whenever it is
    idle) and never present them to the host as work.
    """

    async def get_state(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        ...

    async def set_state(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing what was there."""
        ...


class Mailbox(SessionState, ConversationStore, Protocol):
    """A session's inbox and outbox as one runner sees them.

    Implementers must ensure that no method blocks the event loop (blocking work runs in
    a worker thread: the runner's heartbeat shares the loop), that the runner is the
    only writer of what it writes (acks, replies, state, heartbeat), and that the inbox,
    which belongs to the host, is only ever read.
    """

    async def open(self) -> int:
        """Get the session ready for this runner; returns how many stale claims it cleared.

        Implementers must raise RunnerConfigError, before writing anything, when the
        session cannot be reached (e.g. it has no inbox), and must drop every claim an
        earlier runner of this session left unsettled, so those rows can be claimed again.
        """
        ...

    async def beat(self) -> None:
        """Tell the host this runner is alive.

        Implementers must make this cheap enough to call at every poll, and visible to
        the host's liveness checks without the runner's help.
        """
        ...

    async def claim(self, now: datetime, limit: int) -> list[InboxRow]:
        """Claim the next batch due at ``now``: at most ``limit`` rows, oldest first.

        Implementers must consider only rows that are pending, due (no ``process_after``
        or one at or before ``now``) and not claimed or settled for their current try,
        and apply that filter before ``limit``, so claimed rows never hide new work.
        Oldest first means by ``process_after`` (or ``created_at``), then ``seq``. They
        must claim nothing and return ``[]`` unless the batch :func:`wakes_agent`, or is
        full while a due ``trigger=1`` row waits behind it; and must mark every returned
        row claimed (``processing``, for its current try) at once, in one transaction.
        """
        ...

    async def settle(
        self, at: datetime, settled: Sequence[Settlement], remember: Remember | None = None
    ) -> None:
        """Record the final ack of each row at ``at``, and its reply.

        Implementers must write every settlement's ack (status, error, output preview,
        for the row's current try) and its reply, a chat message in reply to the row, in
        one transaction, so the host never sees a settled row without its reply; and in
        that same transaction store ``remember``'s exchange and forget what it says to
        forget, so the history holds an exchange exactly when its answer was delivered.
        """
        ...

    async def next_due(self, now: datetime) -> datetime | None:
        """When the first pending row that is not due at ``now`` comes due; None if none.

        An idle runner sleeps until then (or until the inbox changes) instead of polling.
        """
        ...

    def inbox_changes(self) -> ChangeWatch | None:
        """A change signal on the inbox, or None when it cannot be watched.

        Implementers must make it fire on every commit the host makes to the inbox and
        never on the runner's own reads; the caller closes it.
        """
        ...

    async def release(self, rows: Sequence[InboxRow]) -> None:
        """Give claimed rows back unprocessed (context rows waiting for a trigger row).

        Implementers must forget the claim of each row's current try, in one
        transaction, so a later :meth:`claim` may return the row again.
        """
        ...
