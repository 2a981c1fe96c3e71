"""Whether a running runner must be killed, and what becomes of its rows: tested by table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cronbox_shared.models import MessageStatus
from host.liveness import (
    Claim,
    LivenessAction,
    LivenessVerdict,
    RetryPlan,
    decide_liveness,
    plan_retry,
)

NOW = datetime(2026, 3, 9, 13, 0, tzinfo=UTC)
CEILING = timedelta(seconds=60)
GRACE = timedelta(seconds=30)
TEN_MIN = timedelta(minutes=10)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


OK = LivenessVerdict(LivenessAction.OK, None, ())


@pytest.mark.parametrize(
    ("started", "heartbeat", "claims", "expected"),
    [
        pytest.param(ago(300), ago(10), [], OK, id="recent_heartbeat_is_ok"),
        pytest.param(ago(300), ago(60), [], OK, id="heartbeat_exactly_at_the_ceiling_is_still_ok"),
        pytest.param(
            ago(300),
            ago(95),
            [],
            LivenessVerdict(LivenessAction.KILL_HUNG, "no heartbeat for 95 s", ()),
            id="heartbeat_older_than_the_ceiling_is_hung",
        ),
        pytest.param(
            ago(10), None, [], OK, id="new_runner_without_heartbeat_is_ok_within_startup_grace"
        ),
        pytest.param(
            ago(95),
            None,
            [],
            LivenessVerdict(LivenessAction.KILL_HUNG, "no heartbeat 95 s after start", ()),
            id="runner_that_never_beat_past_startup_grace_is_hung",
        ),
        pytest.param(
            ago(10),
            ago(500),
            [],
            OK,
            id="heartbeat_left_by_an_earlier_runner_counts_as_none_within_grace",
        ),
        pytest.param(
            ago(95),
            ago(500),
            [],
            LivenessVerdict(LivenessAction.KILL_HUNG, "no heartbeat 95 s after start", ()),
            id="heartbeat_left_by_an_earlier_runner_counts_as_none_past_grace",
        ),
        pytest.param(
            ago(900),
            ago(5),
            [Claim("m1", ago(300), TEN_MIN)],
            OK,
            id="claim_within_its_timeout_is_ok",
        ),
        pytest.param(
            ago(900),
            ago(5),
            [Claim("m1", ago(601), TEN_MIN)],
            LivenessVerdict(
                LivenessAction.KILL_TIMEOUT, "ran longer than its timeout of 10 min", ("m1",)
            ),
            id="claim_older_than_its_timeout_is_killed_for_timeout",
        ),
        pytest.param(
            ago(900),
            ago(5),
            [Claim("m1", ago(600), TEN_MIN)],
            OK,
            id="claim_exactly_at_its_timeout_is_still_ok",
        ),
        pytest.param(
            ago(900),
            ago(5),
            [Claim("m1", ago(91), timedelta(seconds=90))],
            LivenessVerdict(
                LivenessAction.KILL_TIMEOUT, "ran longer than its timeout of 90 s", ("m1",)
            ),
            id="timeout_reason_names_seconds_when_not_whole_minutes",
        ),
        pytest.param(
            ago(900),
            ago(5),
            [Claim("m1", ago(60), TEN_MIN), Claim("m2", ago(120), timedelta(seconds=90))],
            LivenessVerdict(
                LivenessAction.KILL_TIMEOUT, "ran longer than its timeout of 90 s", ("m2",)
            ),
            id="each_claim_is_judged_by_its_own_timeout",
        ),
        pytest.param(
            ago(900),
            ago(5),
            [Claim("m2", ago(700), TEN_MIN), Claim("m1", ago(800), TEN_MIN)],
            LivenessVerdict(
                LivenessAction.KILL_TIMEOUT,
                "2 messages ran longer than their timeouts",
                ("m1", "m2"),
            ),
            id="every_timed_out_message_is_named",
        ),
        pytest.param(
            ago(900),
            ago(800),
            [Claim("m1", ago(700), TEN_MIN)],
            LivenessVerdict(
                LivenessAction.KILL_TIMEOUT, "ran longer than its timeout of 10 min", ("m1",)
            ),
            id="timeout_wins_over_a_missing_heartbeat",
        ),
    ],
)
def test_decide_liveness(
    started: datetime,
    heartbeat: datetime | None,
    claims: list[Claim],
    expected: LivenessVerdict,
) -> None:
    verdict = decide_liveness(NOW, started, heartbeat, claims, CEILING, GRACE)
    assert verdict == expected


PENDING, FAILED = MessageStatus.PENDING, MessageStatus.FAILED


@pytest.mark.parametrize(
    ("tries", "expected"),
    [
        pytest.param(0, RetryPlan(PENDING, 1, NOW + timedelta(seconds=5)), id="first_5s"),
        pytest.param(1, RetryPlan(PENDING, 2, NOW + timedelta(seconds=10)), id="second_10s"),
        pytest.param(2, RetryPlan(PENDING, 3, NOW + timedelta(seconds=20)), id="third_20s"),
        pytest.param(3, RetryPlan(PENDING, 4, NOW + timedelta(seconds=40)), id="fourth_40s"),
        pytest.param(4, RetryPlan(FAILED, 5, None), id="fifth_failure_is_final"),
        pytest.param(7, RetryPlan(FAILED, 8, None), id="past_the_limit_stays_failed"),
    ],
)
def test_plan_retry_backs_off_then_fails(tries: int, expected: RetryPlan) -> None:
    assert plan_retry(tries, NOW) == expected


def test_a_row_that_keeps_crashing_is_retried_after_5_10_20_40_s_then_failed() -> None:
    waits: list[float] = []
    tries = 0
    plan = plan_retry(tries, NOW)
    while plan.status is MessageStatus.PENDING:
        assert plan.process_after is not None
        waits.append((plan.process_after - NOW).total_seconds())
        tries = plan.tries
        plan = plan_retry(tries, NOW)
    assert waits == [5, 10, 20, 40]
    assert plan == RetryPlan(FAILED, 5, None)


def test_plan_retry_honours_a_custom_limit_and_base() -> None:
    assert plan_retry(0, NOW, max_tries=1) == RetryPlan(FAILED, 1, None)
    assert plan_retry(2, NOW, max_tries=10, base=timedelta(seconds=1)) == RetryPlan(
        PENDING, 3, NOW + timedelta(seconds=4)
    )
