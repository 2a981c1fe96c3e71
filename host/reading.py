"""The service's read side over the central index: what ``cronbox status`` and
``cronbox task list`` read, and everything else that needs only ``cronbox.db`` and the
home's ``agents.toml``.

:class:`Reader` is the base of :class:`host.service.Cronbox`, which adds every command
that writes and every read of a session's own files. A command that only reads opens a
Reader, so it imports none of the write side: neither sqlite-utils nor the session
files' modules, nor the validation of schedules and actions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from cronbox_shared.agents import AgentProfile, load_profiles
from cronbox_shared.errors import InvalidInput
from cronbox_shared.models import MessageStatus
from cronbox_shared.recurrence import stored_recurrence
from cronbox_shared.timeutil import Clock, SystemClock, fmt, parse_utc
from host.store.central import SqliteCentral
from host.store.records import (
    LIVE_STATES,
    MAX_PAGE,
    PAGE_SIZE,
    Session,
    TaskQuery,
    TaskView,
    TokenCount,
)

if TYPE_CHECKING:
    from host.store.base import CentralRepository

T = TypeVar("T")
K = TypeVar("K", str, int)


@dataclass(frozen=True)
class Page(Generic[T, K]):
    """One page of a listing (``task list``, ``task history``): its rows, and the key of
    the row the next page starts after."""

    rows: list[T]
    next_after: K | None
    """What to pass as ``after`` for the next page; None on the last page."""


@lru_cache(maxsize=4096)
def describe_recurrence(expr: str | None) -> str:
    """The recurrence in words, or "once".

    Kept per expression: parsing it again and cron-descriptor loading its message
    catalogue for every row were most of what listing many tasks cost.
    """
    return stored_recurrence(expr).describe() if expr else "once"


class Reader:
    """The queries of one ``CRONBOX_HOME`` that read only its central index."""

    def __init__(self, home: Path, *, clock: Clock | None = None, create: bool = True) -> None:
        """The reader of ``home``; without ``create`` a missing home raises HomeNotFound."""
        self.home = Path(home)
        self.clock: Clock = clock or SystemClock()
        self.central: CentralRepository = SqliteCentral(self.home, create=create)

    def now(self) -> datetime:
        """The current instant from the injected clock."""
        return self.clock.now()

    def get_session(self, ref: str) -> Session:
        """A session by id or name."""
        return self.central.session(ref)

    def list_sessions(self) -> list[Session]:
        """Every session, oldest first."""
        return self.central.sessions()

    def next_wake(self) -> datetime | None:
        """The earliest ``next_due_at`` over all sessions."""
        value = self.central.next_wake()
        return parse_utc(value) if value else None

    def task_page(
        self,
        session_ref: str | None = None,
        *,
        states: tuple[MessageStatus, ...] | None = LIVE_STATES,
        after: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> Page[TaskView, str]:
        """One page of task series (live ones by default) in listing order: the order
        they were first scheduled in, which nothing changes later, so following
        ``next_after`` from page to page skips and repeats nothing."""
        check_limit(limit)
        session_id = self.get_session(session_ref).id if session_ref is not None else None
        query = TaskQuery(session_id=session_id, states=states, after=after, limit=limit + 1)
        views = self.central.task_page(query)
        more = len(views) > limit
        return Page(views[:limit], views[limit - 1].series_id if more else None)

    def iter_tasks(
        self,
        session_ref: str | None = None,
        *,
        states: tuple[MessageStatus, ...] | None = LIVE_STATES,
        after: str | None = None,
    ) -> Iterator[TaskView]:
        """Every task series from ``after`` on, page after page as they are read."""
        while True:
            page = self.task_page(session_ref, states=states, after=after, limit=MAX_PAGE)
            yield from page.rows
            if page.next_after is None:
                return
            after = page.next_after

    def live_task_count(self) -> int:
        """Live task series over every session."""
        return self.central.live_task_count()

    def counts(self) -> dict[str, int]:
        """The counts the central index keeps (sessions, task series per state)."""
        return self.central.counts()

    def due_count(self, now: datetime) -> int:
        """How many sessions have work due by ``now``."""
        return self.central.due_count(fmt(now))

    def quiet_sessions(self, limit: int) -> tuple[int, list[tuple[str, str, str]]]:
        """How many sessions keep quiet hours, and (name, window, zone) of ``limit``."""
        return self.central.quiet_sessions(limit)

    def awaiting_count(self) -> int:
        """Occurrences awaiting approval over every session."""
        return self.central.awaiting_count()

    def decision_counts(self) -> dict[str, int]:
        """Approval decisions in the kept run history, by decision."""
        return self.central.decision_counts()

    def token_use_today(
        self, agents: Collection[str] | None = None
    ) -> list[tuple[Session, TokenCount]]:
        """Every session, oldest first, with the tokens it used today (UTC); given
        ``agents``, only the sessions that used tokens today or run one of those."""
        day = self.token_day()
        used = self.central.tokens_on(day)
        sessions = (
            self.list_sessions() if agents is None else self.central.token_sessions(day, agents)
        )
        return [(s, used.get(s.id, TokenCount())) for s in sessions]

    def token_day(self) -> str:
        """Today as token budgets count days: the UTC date, ``YYYY-MM-DD``."""
        return self.now().astimezone(UTC).date().isoformat()

    def agent_profiles(self) -> dict[str, AgentProfile]:
        """The profiles of ``$CRONBOX_HOME/agents.toml`` (AgentConfigError for a bad file)."""
        return load_profiles(self.home)


def check_limit(limit: int) -> None:
    """A page size the listings accept; InvalidInput otherwise."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(
            f"limit {limit} is out of range; give 1 to {MAX_PAGE} rows a page and page on "
            "with after"
        )
