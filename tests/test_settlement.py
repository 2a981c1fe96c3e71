"""Settlement as a pure decision: rows, acks and now in, row changes and run records out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cronbox_shared.models import InboundMessage, MessageKind, MessageStatus, RunOutcome
from cronbox_shared.policies import due_at
from cronbox_shared.timeutil import fmt, parse_utc
from host.liveness import Claim
from host.settlement import (
    Policy,
    RowChange,
    SettlementPlan,
    backfill_row,
    next_backfill,
    next_occurrence,
    plan_catch_up,
    plan_requeue,
    settle_acks,
)

NOW = parse_utc("2026-01-16T08:00:05.000Z")
DUE = "2026-01-16T08:00:00.000Z"
POLICY = Policy(default_timeout=timedelta(minutes=10))


def row(message_id: str = "t1", **fields: Any) -> InboundMessage:
    values: dict[str, Any] = {
        "id": message_id, "seq": 2, "kind": MessageKind.TASK,
        "created_at": "2026-01-15T08:00:00.000Z", "status": MessageStatus.PENDING,
        "process_after": DUE, "scheduled_for": DUE,
        "recurrence": None, "timezone": "Europe/Berlin", "series_id": message_id.split("~")[0],
        "tries": 0, "trigger": 1, "content": {"prompt": "p", "script": None},
    }  # fmt: skip
    values.update(fields)
    return InboundMessage.model_validate(values)


def ack(message_id: str = "t1", status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {
        "message_id": message_id, "attempt": 0, "status": status,
        "updated_at": "2026-01-16T08:00:04.000Z", "started_at": "2026-01-16T08:00:01.000Z",
        "error": None, "output_preview": "said hi", **fields,
    }  # fmt: skip


def only_change(plan: SettlementPlan) -> RowChange:
    (change,) = plan.changes.updates
    return change


# --- acks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "row_status", "outcome"),
    [
        ("completed", None, MessageStatus.COMPLETED, RunOutcome.OK),
        ("failed", "model said no", MessageStatus.FAILED, RunOutcome.ERROR),
        ("skipped", None, MessageStatus.SKIPPED, RunOutcome.SKIPPED),
    ],
    ids=["ok", "error", "skipped"],
)
def test_a_finished_ack_ends_its_one_time_row_and_records_the_run(
    status: str, error: str | None, row_status: MessageStatus, outcome: RunOutcome
) -> None:
    plan = settle_acks({"t1": row()}, [ack(status=status, error=error)], NOW, POLICY)
    change = only_change(plan)
    assert (change.message_id, change.status, change.error) == ("t1", row_status, error)
    assert not change.clear_recurrence
    assert plan.changes.inserts == ()
    (run,) = plan.runs
    assert (run.outcome, run.error, run.tries) == (outcome, error, 1)
    assert (run.started_at, run.finished_at) == (
        "2026-01-16T08:00:01.000Z",
        "2026-01-16T08:00:04.000Z",
    )
    assert run.scheduled_for == DUE
    assert plan.claims == ()
    assert plan.series == ("t1",)


def test_a_processing_ack_is_a_claim_with_the_row_timeout_and_a_started_run() -> None:
    plan = settle_acks(
        {"t1": row(timeout=30)}, [ack(status="processing", output_preview=None)], NOW, POLICY
    )
    assert plan.changes.updates == ()
    assert plan.claims == (
        Claim("t1", parse_utc("2026-01-16T08:00:01.000Z"), timedelta(seconds=30)),
    )
    (run,) = plan.runs
    assert (run.started_at, run.finished_at, run.outcome) == (
        "2026-01-16T08:00:01.000Z",
        None,
        None,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"attempt": 1},  # an ack for another try
        {"message_id": "nobody"},  # a row that is not due
        {"status": "exploded"},  # not a status
        {"attempt": "zero"},  # not a number
        {"updated_at": None},  # missing time
    ],
    ids=["other-try", "unknown-row", "bad-status", "bad-attempt", "no-time"],
)
def test_an_untrusted_ack_that_does_not_fit_is_ignored(bad: dict[str, Any]) -> None:
    plan = settle_acks({"t1": row()}, [ack(**bad)], NOW, POLICY)
    assert plan.empty and plan.claims == ()


def test_ack_times_are_clamped_between_the_due_time_and_now() -> None:
    early = ack(started_at="2020-01-01T00:00:00.000Z", updated_at="2030-01-01T00:00:00.000Z")
    (run,) = settle_acks({"t1": row()}, [early], NOW, POLICY).runs
    assert (run.started_at, run.finished_at) == (DUE, fmt(NOW))


def test_fan_out_a_finished_recurring_occurrence_hands_on_to_the_next_from_its_slot() -> None:
    daily = row("daily~3", recurrence="0 9 * * *", series_id="daily")
    plan = settle_acks(
        {"daily~3": daily}, [ack("daily~3", status="failed", error="x")], NOW, POLICY
    )
    change = only_change(plan)
    assert (change.status, change.clear_recurrence) == (MessageStatus.FAILED, True)
    (nxt,) = plan.changes.inserts
    assert (nxt.id, nxt.series_id, nxt.status, nxt.tries) == (
        "daily~4",
        "daily",
        MessageStatus.PENDING,
        0,
    )
    # From the scheduled 09:00 Berlin, not from when it finished.
    assert nxt.scheduled_for == nxt.process_after == "2026-01-17T08:00:00.000Z"
    assert nxt.recurrence == "0 9 * * *"
    assert plan.series == ("daily",)


def test_next_occurrence_of_a_one_time_row_is_none() -> None:
    assert next_occurrence(row(), NOW) is None


# --- a runner that is gone --------------------------------------------------------------


def claim(message_id: str = "t1", timeout: float = 600) -> Claim:
    return Claim(message_id, NOW - timedelta(seconds=5), timedelta(seconds=timeout))


@pytest.mark.parametrize(
    ("tries", "status", "process_after"),
    [
        (0, None, "2026-01-16T08:00:10.000Z"),  # 5 s
        (1, None, "2026-01-16T08:00:15.000Z"),  # 10 s
        (3, None, "2026-01-16T08:00:45.000Z"),  # 40 s
        (4, MessageStatus.FAILED, None),  # the 5th failure ends it
    ],
    ids=["first", "second", "fourth", "fifth"],
)
def test_crash_retry_backs_off_then_fails(
    tries: int, status: MessageStatus | None, process_after: str | None
) -> None:
    plan = plan_requeue({"t1": row(tries=tries)}, [claim()], "runner exited", NOW, POLICY)
    change = only_change(plan)
    assert (change.status, change.process_after, change.tries) == (
        status,
        process_after,
        tries + 1,
    )
    assert change.error == f"runner exited (try {tries + 1})"
    (run,) = plan.runs
    assert run.tries == tries + 1
    assert run.outcome == (RunOutcome.ERROR if status else None)


def test_crash_retry_of_a_recurring_row_that_fails_for_good_continues_the_series() -> None:
    hourly = row("h", recurrence="@hourly", tries=4)
    plan = plan_requeue({"h": hourly}, [claim("h")], "runner killed", NOW, POLICY)
    assert only_change(plan).status is MessageStatus.FAILED
    (nxt,) = plan.changes.inserts
    assert nxt.scheduled_for == "2026-01-16T09:00:00.000Z"


def test_timeout_ends_the_row_failed_with_outcome_timeout() -> None:
    plan = plan_requeue(
        {"t1": row(timeout=1)}, [claim(timeout=1)], "runner killed", NOW, POLICY, timed_out=["t1"]
    )
    change = only_change(plan)
    assert (change.status, change.error, change.tries) == (
        MessageStatus.FAILED,
        "timed out after 1 s",
        1,
    )
    (run,) = plan.runs
    assert (run.outcome, run.finished_at) == (RunOutcome.TIMEOUT, fmt(NOW))


def test_requeue_leaves_rows_that_are_no_longer_pending_alone() -> None:
    done = row(status=MessageStatus.COMPLETED)
    assert plan_requeue({"t1": done}, [claim()], "gone", NOW, POLICY).empty
    assert plan_requeue({}, [claim()], "gone", NOW, POLICY).empty


# --- catch-up and missed runs -----------------------------------------------------------


def test_catch_up_coalesces_missed_slots_onto_the_latest() -> None:
    hourly = row("h", recurrence="@hourly", scheduled_for="2026-01-16T03:00:00.000Z",
                 process_after="2026-01-16T03:00:00.000Z")  # fmt: skip
    plan = plan_catch_up([hourly], NOW)
    change = only_change(plan)
    assert (change.status, change.scheduled_for, change.process_after) == (
        None,
        "2026-01-16T08:00:00.000Z",
        "2026-01-16T08:00:00.000Z",
    )
    assert plan.runs == ()


def test_missed_past_its_grace_is_recorded_and_the_series_moves_on() -> None:
    hourly = row("h", recurrence="@hourly", misfire_grace=60,
                 scheduled_for="2026-01-16T06:00:00.000Z",
                 process_after="2026-01-16T06:00:00.000Z")  # fmt: skip
    late = NOW + timedelta(minutes=30)  # 08:30: the latest slot, 08:00, is 30 min late
    plan = plan_catch_up([hourly], late)
    change = only_change(plan)
    assert (change.status, change.scheduled_for) == (
        MessageStatus.SKIPPED,
        "2026-01-16T08:00:00.000Z",
    )
    assert change.error == "missed: 30 min late"
    (run,) = plan.runs
    assert (run.outcome, run.tries, run.scheduled_for) == (
        RunOutcome.MISSED,
        0,
        "2026-01-16T08:00:00.000Z",
    )
    (nxt,) = plan.changes.inserts
    assert nxt.scheduled_for == "2026-01-16T09:00:00.000Z"


def test_catch_up_leaves_on_time_retried_and_chat_rows_alone() -> None:
    on_time = row("a")
    retried = row("b", recurrence="@hourly", tries=1, scheduled_for="2026-01-16T01:00:00.000Z")
    chat = row("c", kind=MessageKind.CHAT, series_id=None, scheduled_for="2026-01-16T01:00:00.000Z")
    assert plan_catch_up([on_time, retried, chat], NOW).empty


# --- missed-run policies -----------------------------------------------------------------

BEHIND = parse_utc("2026-01-16T08:30:00.000Z")  # the 04:00 slot's row, five slots behind


def behind(policy: str, **fields: Any) -> InboundMessage:
    return row("h", recurrence="@hourly", missed_policy=policy, timezone="UTC",
               scheduled_for="2026-01-16T04:00:00.000Z",
               process_after="2026-01-16T04:00:00.000Z", **fields)  # fmt: skip


def test_missed_policy_all_runs_the_oldest_missed_slot_and_records_nothing_missed() -> None:
    plan = plan_catch_up([behind("all")], BEHIND)
    assert plan.changes.updates == ()
    assert plan.runs == ()


def test_missed_policy_all_past_its_catchup_limit_records_the_oldest_slots_missed() -> None:
    plan = plan_catch_up([behind("all", catchup_limit=2)], BEHIND)
    change = only_change(plan)
    assert (change.status, change.scheduled_for) == (None, "2026-01-16T07:00:00.000Z")
    assert [(r.outcome, r.scheduled_for) for r in plan.runs] == [
        (RunOutcome.MISSED, f"2026-01-16T0{h}:00:00.000Z") for h in (4, 5, 6)
    ]
    assert len({r.message_id for r in plan.runs}) == 3


def test_missed_policy_skip_records_every_missed_slot_and_the_series_moves_on() -> None:
    plan = plan_catch_up([behind("skip")], BEHIND)
    [ended] = plan.changes.updates
    assert (ended.status, ended.scheduled_for) == (MessageStatus.SKIPPED, DUE)
    [nxt] = plan.changes.inserts
    assert (nxt.status, nxt.scheduled_for) == (MessageStatus.PENDING, "2026-01-16T09:00:00.000Z")
    assert nxt.missed_policy == "skip"
    missed = sorted(r.scheduled_for or "" for r in plan.runs)
    assert missed == [f"2026-01-16T0{h}:00:00.000Z" for h in (4, 5, 6, 7, 8)]
    assert {r.outcome for r in plan.runs} == {RunOutcome.MISSED}


def test_catch_up_moves_a_jittered_row_to_its_slot_plus_that_slots_jitter() -> None:
    plan = plan_catch_up([behind("latest", jitter=600)], BEHIND)
    change = only_change(plan)
    assert change.scheduled_for == DUE
    assert change.process_after == fmt(due_at("h", parse_utc(DUE), 600))


# --- failure backoff and auto-pause ---------------------------------------------------------

FAIL_AT = parse_utc("2026-01-16T08:00:30.000Z")
EVERY_MINUTE = {"recurrence": "* * * * *", "timezone": "UTC"}


@pytest.mark.parametrize(
    ("failures", "expected_slot"),
    [
        (0, "2026-01-16T08:03:00.000Z"),  # 1st failure: at or after 08:02:30
        (1, "2026-01-16T08:05:00.000Z"),  # 2nd: 4 min
        (4, "2026-01-16T08:33:00.000Z"),  # 5th: 32 min
        (6, "2026-01-16T09:01:00.000Z"),  # 7th: 60 min
    ],
)
def test_a_failed_occurrence_pushes_the_next_to_the_first_slot_after_its_backoff(
    failures: int, expected_slot: str
) -> None:
    failed = row("m", failures=failures, **EVERY_MINUTE)
    policy = Policy(failure_backoff=timedelta(minutes=2))
    nxt = next_occurrence(failed, FAIL_AT, RunOutcome.ERROR, "boom", policy)
    assert nxt is not None
    assert (nxt.scheduled_for, nxt.process_after) == (expected_slot, expected_slot)
    assert (nxt.failures, nxt.status) == (failures + 1, MessageStatus.PENDING)


@pytest.mark.parametrize("outcome", [RunOutcome.OK, RunOutcome.SKIPPED])
def test_a_success_or_a_gate_skip_never_backs_off(outcome: RunOutcome) -> None:
    nxt = next_occurrence(row("m", failures=3, **EVERY_MINUTE), FAIL_AT, outcome)
    assert nxt is not None
    assert nxt.scheduled_for == "2026-01-16T08:01:00.000Z"
    assert nxt.failures == (0 if outcome is RunOutcome.OK else 3)


def test_max_failures_in_a_row_pause_the_series_with_the_reason_and_a_note() -> None:
    failing = row("m", failures=2, max_failures=3, **EVERY_MINUTE)
    plan = settle_acks({"m": failing}, [ack("m", "failed", error="gate exited 3")], NOW, POLICY)
    nxt, note = plan.changes.inserts
    assert nxt.status is MessageStatus.PAUSED
    assert nxt.paused_reason == "failed 3 times in a row: gate exited 3"
    assert (note.kind, note.trigger) == (MessageKind.SYSTEM, 1)
    assert "failed 3 times in a row: gate exited 3" in note.content["text"]
    assert [(p.series_id, p.reason) for p in plan.paused] == [("m", nxt.paused_reason)]


def test_a_timed_out_occurrence_counts_as_a_failure() -> None:
    claimed = row("m", **EVERY_MINUTE)
    claim = Claim("m", parse_utc(DUE), timedelta(seconds=1))
    plan = plan_requeue({"m": claimed}, [claim], "killed", NOW, POLICY, timed_out=("m",))
    [nxt] = plan.changes.inserts
    assert nxt.failures == 1
    assert nxt.scheduled_for == "2026-01-16T08:03:00.000Z"  # 08:00:05 + 2 min, next slot


def test_each_next_occurrence_is_due_at_its_slot_plus_its_jitter() -> None:
    jittered = row("j", jitter=30, **EVERY_MINUTE)
    nxt = next_occurrence(jittered, NOW, RunOutcome.OK)
    assert nxt is not None
    slot = parse_utc("2026-01-16T08:01:00.000Z")
    assert nxt.scheduled_for == fmt(slot)
    assert nxt.process_after == fmt(due_at("j", slot, 30))
    assert slot <= parse_utc(nxt.process_after) < slot + timedelta(seconds=30)


# --- backfill ------------------------------------------------------------------------------


def test_a_finished_backfill_run_queues_the_next_slot_and_the_last_queues_nothing() -> None:
    current = row("h", recurrence="@hourly", timezone="UTC", jitter=60)
    slots = [parse_utc(f"2026-01-16T0{h}:00:00.000Z") for h in (3, 4, 5)]
    first = backfill_row(current, slots, NOW)
    assert (first.id, first.scheduled_for, first.process_after) == (
        "h~backfill-20260116T030000000Z", "2026-01-16T03:00:00.000Z", fmt(NOW),
    )  # fmt: skip
    assert (first.recurrence, first.jitter, first.content["manual"]) == (None, None, True)
    plan = settle_acks({first.id: first}, [ack(first.id)], NOW, POLICY)
    [second] = plan.changes.inserts
    assert second.scheduled_for == "2026-01-16T04:00:00.000Z"
    third = next_backfill(second, NOW)
    assert third is not None and third.scheduled_for == "2026-01-16T05:00:00.000Z"
    assert next_backfill(third, NOW) is None
    assert plan_catch_up([first], NOW + timedelta(days=1)).empty, "a backfill run is never missed"
