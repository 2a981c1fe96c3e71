"""The pool decides who gets a runner slot: a pure function, tested by table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host.pool import Live, PoolPlan, Waiting, plan_pool

T0 = datetime(2026, 3, 9, 13, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=1000)
IDLE_TIMEOUT = timedelta(seconds=300)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def wait(session_id: str, due: float) -> Waiting:
    return Waiting(session_id, at(due))


def chat(session_id: str, due: float) -> Waiting:
    return Waiting(session_id, at(due), chat=True)


def busy(session_id: str) -> Live:
    return Live(session_id, busy=True, idle_since=None)


def idle(session_id: str, since: float | None) -> Live:
    return Live(session_id, busy=False, idle_since=None if since is None else at(since))


CASES = [
    pytest.param(
        [wait("c", 30), wait("a", 10), wait("b", 20)],
        [],
        2,
        PoolPlan(start=("a", "b"), evict=()),
        id="waiting_sessions_are_served_earliest_due_first",
    ),
    pytest.param(
        [wait("b", 10), wait("a", 10)],
        [],
        1,
        PoolPlan(start=("a",), evict=()),
        id="equal_due_times_are_served_in_session_id_order",
    ),
    pytest.param(
        [wait(f"s{i}", 80 - i) for i in range(8)],
        [],
        2,
        PoolPlan(start=("s7", "s6"), evict=()),
        id="eight_waiting_with_a_pool_of_two_start_only_the_two_earliest",
    ),
    pytest.param(
        [wait("x", 10)],
        [busy("a"), busy("b")],
        2,
        PoolPlan(start=(), evict=()),
        id="no_start_when_every_slot_is_taken",
    ),
    pytest.param(
        [wait("x", 10), wait("y", 20)],
        [busy("a")],
        2,
        PoolPlan(start=("x",), evict=()),
        id="starts_only_fill_the_free_slots",
    ),
    pytest.param(
        [],
        [idle("a", 600), idle("b", 800)],
        5,
        PoolPlan(start=(), evict=("a",)),
        id="idle_runner_is_evicted_once_past_idle_timeout",
    ),
    pytest.param(
        [],
        [idle("a", 700)],
        5,
        PoolPlan(start=(), evict=("a",)),
        id="idle_runner_is_evicted_exactly_at_idle_timeout",
    ),
    pytest.param(
        [wait("x", 10)],
        [idle("a", 990)],
        2,
        PoolPlan(start=("x",), evict=()),
        id="idle_runner_keeps_its_slot_while_a_slot_is_free_for_the_waiter",
    ),
    pytest.param(
        [wait("x", 10)],
        [idle("a", 990)],
        1,
        PoolPlan(start=(), evict=("a",)),
        id="idle_runner_yields_at_once_when_a_session_waits_and_no_slot_is_free",
    ),
    pytest.param(
        [wait("x", 10)],
        [idle("recent", 950), idle("longest", 900), busy("b")],
        3,
        PoolPlan(start=(), evict=("longest",)),
        id="only_as_many_idle_runners_yield_as_waiters_need_longest_idle_first",
    ),
    pytest.param(
        [wait("x", 10), wait("y", 20)],
        [idle("a", 950), idle("b", 900), idle("c", 990)],
        3,
        PoolPlan(start=(), evict=("b", "a")),
        id="two_waiters_take_the_two_longest_idle_slots",
    ),
    pytest.param(
        [wait("x", 10)],
        [idle("timed_out", 100), idle("recent", 990)],
        2,
        PoolPlan(start=(), evict=("timed_out",)),
        id="a_timed_out_eviction_already_makes_room_for_a_waiter",
    ),
    pytest.param(
        [wait("x", 10)],
        [idle("unknown", None), idle("known", 990)],
        2,
        PoolPlan(start=(), evict=("known",)),
        id="runner_idle_for_an_unknown_time_yields_after_known_idle_ones",
    ),
    pytest.param(
        [],
        [idle("unknown", None)],
        2,
        PoolPlan(start=(), evict=()),
        id="runner_idle_for_an_unknown_time_is_not_timed_out",
    ),
    pytest.param(
        [wait("x", 10), wait("y", 20)],
        [busy("a")],
        1,
        PoolPlan(start=(), evict=()),
        id="busy_runner_is_never_evicted_even_when_sessions_wait",
    ),
    pytest.param(
        [],
        [Live("a", busy=True, idle_since=at(0))],
        2,
        PoolPlan(start=(), evict=()),
        id="busy_runner_is_never_evicted_for_an_old_idle_since",
    ),
    pytest.param(
        [wait("a", 10), wait("b", 20)],
        [idle("a", 990)],
        3,
        PoolPlan(start=("b",), evict=()),
        id="a_session_already_live_is_never_started_again",
    ),
    pytest.param(
        [wait("x", 10)],
        [],
        0,
        PoolPlan(start=(), evict=()),
        id="a_pool_of_zero_starts_nothing",
    ),
    pytest.param(
        [wait("task1", 10), wait("task2", 20), chat("talk", 30)],
        [busy("b1"), busy("b2")],
        3,
        PoolPlan(start=("talk",), evict=()),
        id="a_waiting_chat_gets_the_next_slot_before_earlier_task_work",
    ),
    pytest.param(
        [
            chat("late", 30),
            wait("task", 5),
            chat("early", 20),
            chat("tie-b", 25),
            chat("tie-a", 25),
        ],
        [],
        4,
        PoolPlan(start=("early", "tie-a", "tie-b", "late"), evict=()),
        id="chats_among_themselves_are_served_earliest_due_first_then_by_id",
    ),
    pytest.param(
        [wait("task", 10), chat("talk", 30)],
        [],
        2,
        PoolPlan(start=("talk", "task"), evict=()),
        id="with_slots_for_everyone_task_work_is_not_held_back_by_chat",
    ),
    pytest.param(
        [wait("task", 10), chat("talk", 30)],
        [busy("b"), idle("i", 100)],
        2,
        PoolPlan(start=(), evict=("i",)),
        id="an_idle_runner_yields_for_chat_and_task_waiters_alike",
    ),
]


@pytest.mark.parametrize(("waiting", "live", "max_slots", "expected"), CASES)
def test_plan_pool(
    waiting: list[Waiting], live: list[Live], max_slots: int, expected: PoolPlan
) -> None:
    assert plan_pool(waiting, live, max_slots, IDLE_TIMEOUT, NOW) == expected


SESSION_IDS = [f"s{i:02d}" for i in range(16)]


@st.composite
def pool_inputs(draw: st.DrawFn) -> tuple[list[Waiting], list[Live], int]:
    ids = draw(st.permutations(SESSION_IDS))
    n_live = draw(st.integers(0, 8))
    n_waiting = draw(st.integers(0, 8))
    live = [
        Live(
            sid,
            busy=draw(st.booleans()),
            idle_since=draw(st.none() | st.integers(0, 1000).map(at)),
        )
        for sid in ids[:n_live]
    ]
    # Mostly distinct from the live ones, but a live session may show up as waiting too.
    waiting_ids = ids[n_live : n_live + n_waiting] + draw(
        st.lists(st.sampled_from(ids[:n_live] or ["s00"]), max_size=2, unique=True)
    )
    waiting = [
        Waiting(sid, at(draw(st.integers(0, 50))), chat=draw(st.booleans()))
        for sid in dict.fromkeys(waiting_ids)
    ]
    max_slots = draw(st.integers(0, 8))
    return waiting, live, max_slots


@given(pool_inputs())
def test_plan_pool_never_overfills_and_serves_chat_then_earliest_due_first(
    inputs: tuple[list[Waiting], list[Live], int],
) -> None:
    waiting, live, max_slots = inputs
    plan = plan_pool(waiting, live, max_slots, IDLE_TIMEOUT, NOW)

    free = max(0, max_slots - len(live))
    assert len(plan.start) <= free
    if len(live) <= max_slots:
        assert len(live) + len(plan.start) <= max_slots

    live_ids = {r.session_id for r in live}
    queue = sorted(
        (w for w in waiting if w.session_id not in live_ids),
        key=lambda w: (not w.chat, w.due_at, w.session_id),
    )
    assert plan.start == tuple(w.session_id for w in queue[:free])

    busy_ids = {r.session_id for r in live if r.busy}
    assert set(plan.evict) <= live_ids - busy_ids
    assert len(set(plan.evict)) == len(plan.evict)
