"""The concurrency pool: which sessions get a runner slot and which idle runners give one up.

A pure decision (SPEC §4 "Concurrency pool"). The sweep reads the waiting sessions and
the live runners, calls :func:`plan_pool`, then starts and stops runners as planned.

A slot is free only once its runner is gone. Runners this plan evicts still hold their
slots while they shut down, so their slots are handed out by a *later* tick (the sweep
wakes itself again as soon as a runner exits); ``start`` only ever uses slots that are
free now. That keeps "at most ``max_slots`` runners at once" true at every instant, not
just between ticks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Live", "PoolPlan", "Waiting", "plan_pool"]


@dataclass(frozen=True)
class Waiting:
    """A session with due work and no live runner; ``chat`` when a chat message is due."""

    session_id: str
    due_at: datetime
    chat: bool = False


@dataclass(frozen=True)
class Live:
    """A session whose runner is alive.

    ``busy`` means the session has claimed or due work; a busy runner is never evicted.
    ``idle_since`` is when an idle runner last had work; ``None`` means not known yet, so
    the runner is not timed out, and yields to a waiter only after runners idle for a
    known time.
    """

    session_id: str
    busy: bool
    idle_since: datetime | None


@dataclass(frozen=True)
class PoolPlan:
    """Sessions to wake now, and idle runners to stop now (their slots free next tick)."""

    start: tuple[str, ...]
    evict: tuple[str, ...]


def plan_pool(
    waiting: Sequence[Waiting],
    live: Sequence[Live],
    max_slots: int,
    idle_timeout: timedelta,
    now: datetime,
) -> PoolPlan:
    """Decide which waiting sessions start now and which idle runners are stopped.

    * At most ``max_slots`` runners are live: ``start`` uses only the slots free now.
    * Waiting sessions with a due chat message are served before those with only task
      work (a person is waiting); among equals, earliest-due first, ties broken by
      session id. A session that is already live is never started again.
    * An idle runner is evicted once it has been idle for ``idle_timeout``.
    * When sessions are still waiting after the free slots are used up, idle runners give
      up their slots at once, longest-idle first, only as many as the waiters need
      (runners already evicted for their idle timeout count towards that).
    * A busy runner is never evicted.

    Evicted runners keep their slots until they are gone, so the waiters they make room
    for start on a later tick.
    """
    live_ids = {runner.session_id for runner in live}
    queue = sorted(
        (w for w in waiting if w.session_id not in live_ids),
        key=lambda w: (not w.chat, w.due_at, w.session_id),
    )
    free = max(0, max_slots - len(live))
    start = tuple(w.session_id for w in queue[:free])
    still_waiting = len(queue) - len(start)

    # Known idle time first (longest idle first), unknown last; id breaks ties.
    idle = sorted(
        (runner for runner in live if not runner.busy),
        key=lambda r: (r.idle_since is None, r.idle_since or now, r.session_id),
    )
    timed_out = [r for r in idle if r.idle_since is not None and now - r.idle_since >= idle_timeout]
    yield_needed = max(0, still_waiting - len(timed_out))
    timed_out_ids = {r.session_id for r in timed_out}
    yielding = [r.session_id for r in idle if r.session_id not in timed_out_ids][:yield_needed]

    evict_ids = timed_out_ids.union(yielding)
    evict = tuple(r.session_id for r in idle if r.session_id in evict_ids)
    return PoolPlan(start=start, evict=evict)
