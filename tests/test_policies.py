"""Scheduling policies as pure decisions: missed runs, failure backoff, jitter (tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronbox_shared.models import MissedPolicy, RunOutcome
from cronbox_shared.policies import (
    MISSED_RECORDS,
    CatchUp,
    due_at,
    failure_delay,
    failure_streak,
    jitter_offset,
    pause_reason,
    plan_missed,
)
from cronbox_shared.recurrence import parse_recurrence, slots_through

UTC_ZONE = ZoneInfo("UTC")
HOURLY = parse_recurrence("@hourly")
T0 = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def slots(*hours: float) -> tuple[datetime, ...]:
    return tuple(h(x) for x in hours)


MISSED_CASES = [
    # policy, now (hours after the 08:00 slot), grace (s), limit, expected
    pytest.param(None, 0.001, None, None, CatchUp(h(0), (), 0), id="on_time_runs_its_slot"),
    pytest.param(
        MissedPolicy.LATEST,
        4.5,
        None,
        None,
        CatchUp(h(4), (), 0),
        id="latest_coalesces_onto_the_latest_slot",
    ),
    pytest.param(
        MissedPolicy.LATEST,
        4.5,
        600,
        None,
        CatchUp(None, slots(4), 1),
        id="latest_past_its_grace_is_missed",
    ),
    pytest.param(
        MissedPolicy.ALL,
        4.5,
        None,
        None,
        CatchUp(h(0), (), 0),
        id="all_runs_the_oldest_missed_slot_first",
    ),
    pytest.param(
        MissedPolicy.ALL,
        4.5,
        None,
        2,
        CatchUp(h(3), slots(0, 1, 2), 3),
        id="all_keeps_only_the_newest_limit_slots",
    ),
    pytest.param(
        MissedPolicy.ALL,
        4.5,
        2 * 3600,
        None,
        CatchUp(h(3), slots(0, 1, 2), 3),
        id="all_misses_slots_past_the_grace",
    ),
    pytest.param(
        MissedPolicy.ALL,
        4.5,
        600,
        None,
        CatchUp(None, slots(0, 1, 2, 3, 4), 5),
        id="all_with_every_slot_past_the_grace_runs_none",
    ),
    pytest.param(
        MissedPolicy.SKIP,
        4.5,
        None,
        None,
        CatchUp(None, slots(0, 1, 2, 3, 4), 5),
        id="skip_misses_every_slot_that_passed",
    ),
    pytest.param(
        MissedPolicy.SKIP,
        4.01,
        None,
        None,
        CatchUp(h(4), slots(0, 1, 2, 3), 4),
        id="skip_runs_the_latest_slot_within_its_default_grace",
    ),
    pytest.param(
        MissedPolicy.SKIP,
        4.5,
        3600,
        None,
        CatchUp(h(4), slots(0, 1, 2, 3), 4),
        id="skip_grace_is_the_misfire_grace",
    ),
    pytest.param(MissedPolicy.SKIP, 0.001, None, None, CatchUp(h(0), (), 0), id="skip_on_time"),
]


@pytest.mark.parametrize(("policy", "now", "grace", "limit", "expected"), MISSED_CASES)
def test_plan_missed(
    policy: MissedPolicy | None, now: float, grace: int | None, limit: int | None,
    expected: CatchUp,
) -> None:  # fmt: skip
    grace_span = timedelta(seconds=grace) if grace is not None else None
    assert plan_missed(policy, HOURLY, UTC_ZONE, T0, h(now), grace_span, limit) == expected


def test_a_one_time_task_runs_or_is_missed_past_its_grace_under_any_policy() -> None:
    late = T0 + timedelta(minutes=30)
    for policy in (None, *MissedPolicy):
        assert plan_missed(policy, None, UTC_ZONE, T0, late, None) == CatchUp(T0, (), 0)
        missed = plan_missed(policy, None, UTC_ZONE, T0, late, timedelta(minutes=5))
        assert missed == CatchUp(None, (T0,), 1)


def test_lateness_is_measured_from_the_jittered_due_time() -> None:
    def delay(slot: datetime) -> timedelta:
        return timedelta(seconds=50)

    on_time = T0 + timedelta(seconds=70)  # 70 s after the slot, 20 s after its due time
    decision = plan_missed(MissedPolicy.SKIP, HOURLY, UTC_ZONE, T0, on_time, None, delay=delay)
    assert decision == CatchUp(T0, (), 0)


def test_a_long_outage_records_only_the_newest_missed_slots_and_counts_the_rest() -> None:
    minutely = parse_recurrence("* * * * *")
    now = T0 + timedelta(days=3, seconds=30)
    grace = timedelta(seconds=10)
    decision = plan_missed(MissedPolicy.SKIP, minutely, UTC_ZONE, T0, now, grace)
    assert decision.run_slot is None
    assert len(decision.missed) == MISSED_RECORDS
    assert decision.missed[-1] == T0 + timedelta(days=3)
    assert decision.missed_total >= 1000


def test_slots_through_lists_the_newest_and_counts_all() -> None:
    assert slots_through(HOURLY, UTC_ZONE, T0, h(4.5), 2) == ([h(3), h(4)], 5)
    assert slots_through(HOURLY, UTC_ZONE, T0, h(0), 3) == ([T0], 1)
    assert slots_through(HOURLY, UTC_ZONE, T0, h(-1), 3) == ([], 0)


@pytest.mark.parametrize(
    ("failures", "outcome", "expected"),
    [
        (0, RunOutcome.ERROR, 1),
        (3, RunOutcome.TIMEOUT, 4),
        (5, RunOutcome.OK, 0),
        (2, RunOutcome.SKIPPED, 2),
        (2, RunOutcome.MISSED, 2),
    ],
)
def test_failure_streak_counts_errors_and_timeouts_and_resets_on_success(
    failures: int, outcome: RunOutcome, expected: int
) -> None:
    assert failure_streak(failures, outcome) == expected


def test_failure_backoff_is_2_4_8_16_32_then_60_minutes() -> None:
    base = timedelta(minutes=2)
    delays = [failure_delay(n, base) // timedelta(minutes=1) for n in range(0, 10)]
    assert delays == [0, 2, 4, 8, 16, 32, 60, 60, 60, 60]


@pytest.mark.parametrize(
    ("streak", "max_failures", "expected"),
    [
        (7, None, None),
        (8, None, "failed 8 times in a row: boom"),
        (3, 3, "failed 3 times in a row: boom"),
        (2, 3, None),
        (50, 0, None),
    ],
)
def test_a_series_pauses_after_max_failures_in_a_row(
    streak: int, max_failures: int | None, expected: str | None
) -> None:
    assert pause_reason(streak, max_failures, "boom") == expected


@given(
    st.text(min_size=1, max_size=20),
    st.integers(0, 10**6).map(lambda m: T0 + timedelta(minutes=m)),
    st.integers(1, 86400),
)
def test_jitter_stays_within_bounds_and_is_the_same_every_time(
    series: str, slot: datetime, jitter: int
) -> None:
    offset = jitter_offset(series, slot, jitter)
    assert timedelta(0) <= offset < timedelta(seconds=jitter)
    assert jitter_offset(series, slot, jitter) == offset
    assert due_at(series, slot, jitter) == slot + offset


def test_jitter_differs_between_slots_and_series_and_is_off_by_default() -> None:
    offsets = {jitter_offset(s, h(i), 3600) for s in ("a", "b") for i in range(10)}
    assert len(offsets) > 15
    assert jitter_offset("a", T0, None) == timedelta(0)
    assert jitter_offset("a", T0, 0) == timedelta(0)
