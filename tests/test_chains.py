"""Chains and approval gates through the service layer: real SQLite files, a manual clock,
the runner's acks written to a real outbox (the runner itself is in test_e2e_chains)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import parse_action
from cronbox_shared.chains import check_when_output, output_matches, render_prompt
from cronbox_shared.errors import HasChildren, InvalidAction, InvalidInput, TaskStateError
from cronbox_shared.models import AckStatus, InboundMessage, MessageKind, MessageStatus, RunOutcome
from cronbox_shared.timeutil import ManualClock, fmt
from host.chains import ParentEnd, chain_run_id, plan_chain
from host.service import Cronbox

START = "2026-01-15T08:00:00Z"
TIMEOUT = timedelta(minutes=10)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Cronbox:
    return Cronbox(tmp_path / "home", clock=clock, limits=None)


@pytest.fixture
def session(store: Cronbox) -> str:
    return store.create_session("work").id


def schedule(store: Cronbox, session: str, task_id: str, **fields: Any) -> str:
    request = {"taskId": task_id, "prompt": f"do {task_id}", **fields}
    if "afterTask" not in request and "recurrence" not in request:
        request.setdefault("processAfter", "now")
    return store.schedule_task(session, request).id


def finish(
    store: Cronbox, session: str, message_id: str, status: AckStatus = AckStatus.COMPLETED,
    output: str | None = "done",
) -> None:  # fmt: skip
    """The runner's ack of one row, then the host's settlement of it."""
    row = store.message(session, message_id)
    error = "it broke" if status is AckStatus.FAILED else None
    with sdb.outbound(store.session_dir(session)) as out:
        sdb.set_ack(out, message_id, row.tries, status, fmt(store.now()), error, output)
    store.settle_acks(session, TIMEOUT)


def rows_of(store: Cronbox, session: str, series: str) -> list[InboundMessage]:
    return [r for r in store.inbound_rows(session) if (r.series_id or r.id) == series]


def chain_runs(store: Cronbox, session: str, child: str) -> list[InboundMessage]:
    return [r for r in rows_of(store, session, child) if r.chain_key is not None]


# --- chains ------------------------------------------------------------------------------


def test_a_child_fires_once_in_the_parents_settlement_with_its_output(
    store: Cronbox, session: str
) -> None:
    schedule(store, session, "parent")
    schedule(store, session, "child", afterTask="parent", prompt="summarise {{parent.output}}")
    assert store.get_task("child").status is MessageStatus.WAITING
    assert store.due_ids(session) == ("parent",)
    finish(store, session, "parent", output="three open PRs")
    [run] = chain_runs(store, session, "child")
    assert run.id == chain_run_id("child", "parent")
    assert run.chain_key == "parent"
    assert run.status is MessageStatus.PENDING
    assert run.prompt == "summarise three open PRs"
    assert store.due_ids(session) == (run.id,)
    # The parent ended for good, so the child's own row ends: its run is in the history.
    assert store.get_task("child").status is MessageStatus.COMPLETED
    # The same settlement again (a crash repeats it) neither doubles nor loses it.
    store.settle_acks(session, TIMEOUT)
    assert len(chain_runs(store, session, "child")) == 1


def test_a_child_on_error_does_not_fire_after_a_parent_that_succeeded(
    store: Cronbox, session: str
) -> None:
    schedule(store, session, "parent")
    schedule(store, session, "on-error", afterTask="parent", afterOutcome="error")
    schedule(store, session, "on-any", afterTask="parent", afterOutcome="any")
    finish(store, session, "parent")
    assert chain_runs(store, session, "on-error") == []
    assert len(chain_runs(store, session, "on-any")) == 1
    ended = store.get_task("on-error")
    assert ended.status is MessageStatus.SKIPPED
    assert "ended without a run that fires it" in (store.message(session, "on-error").error or "")


def test_a_child_on_error_fires_after_a_failed_parent(store: Cronbox, session: str) -> None:
    schedule(store, session, "parent")
    schedule(store, session, "alarm", afterTask="parent", afterOutcome="error")
    finish(store, session, "parent", AckStatus.FAILED)
    [run] = chain_runs(store, session, "alarm")
    assert run.content["chain"] == {"parent": "parent", "outcome": "error"}


def test_when_output_contains_fires_only_on_output_that_holds_it(
    store: Cronbox, session: str
) -> None:
    schedule(store, session, "quiet-check")
    schedule(store, session, "loud-check")
    schedule(store, session, "after-quiet", afterTask="quiet-check", whenOutput="contains:ALERT")
    schedule(store, session, "after-loud", afterTask="loud-check", whenOutput="contains:ALERT")
    finish(store, session, "quiet-check", output="all fine")
    finish(store, session, "loud-check", output="ALERT: disk full")
    assert chain_runs(store, session, "after-quiet") == []
    assert len(chain_runs(store, session, "after-loud")) == 1


def test_a_child_of_a_recurring_parent_fires_once_per_parent_occurrence(
    store: Cronbox, session: str, clock: ManualClock
) -> None:
    schedule(store, session, "hourly", recurrence="0 * * * *", processAfter=START)
    schedule(store, session, "follow-up", afterTask="hourly")
    finish(store, session, "hourly")
    clock.advance(hours=1)
    finish(store, session, store.get_task("hourly").id)
    runs = chain_runs(store, session, "follow-up")
    assert [r.chain_key for r in runs] == ["hourly", "hourly~1"]
    # The parent goes on, so the child keeps waiting for its next occurrence.
    assert store.get_task("follow-up").status is MessageStatus.WAITING


def test_a_grandchild_waits_for_the_run_of_its_parent(store: Cronbox, session: str) -> None:
    schedule(store, session, "a")
    schedule(store, session, "b", afterTask="a")
    schedule(store, session, "c", afterTask="b")
    finish(store, session, "a")
    [b_run] = chain_runs(store, session, "b")
    assert chain_runs(store, session, "c") == []
    assert store.get_task("c").status is MessageStatus.WAITING
    finish(store, session, b_run.id)
    assert len(chain_runs(store, session, "c")) == 1
    assert store.get_task("c").status is MessageStatus.COMPLETED


def test_the_chain_key_is_unique_per_child_series(store: Cronbox, session: str) -> None:
    schedule(store, session, "parent")
    schedule(store, session, "child", afterTask="parent")
    finish(store, session, "parent")
    [run] = chain_runs(store, session, "child")
    with sdb.inbound(store.session_dir(session)) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO messages_in (id, seq, kind, created_at, status, timezone, series_id, "
            "content, chain_key) VALUES ('dup', 100000, 'task', ?, 'pending', 'UTC', 'child', "
            "'{}', 'parent')",
            [run.created_at],
        )


def test_a_cycle_is_refused_naming_it(store: Cronbox, session: str) -> None:
    schedule(store, session, "a")
    schedule(store, session, "b", afterTask="a")
    schedule(store, session, "c", afterTask="b")
    with pytest.raises(InvalidInput, match="cycle: a → c → b → a"):
        schedule(store, session, "a", afterTask="c")
    with pytest.raises(InvalidInput, match="cycle: self → self"):
        schedule(store, session, "self", afterTask="self")
    assert store.get_task("a").after_task is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"afterTask": "missing"}, 'afterTask "missing" is no task of this session'),
        ({"afterTask": "parent", "processAfter": "now"}, "takes no processAfter or recurrence"),
        ({"afterOutcome": "ok"}, "apply only to a chained task"),
        ({"afterTask": "parent", "afterOutcome": "maybe"}, "not one of ok, error, any"),
        ({"afterTask": "parent", "whenOutput": "has:x"}, '"contains:TEXT" or "regex:PATTERN"'),
        ({"afterTask": "parent", "whenOutput": "regex:(a+)+$"}, "repeats a group"),
        ({"afterTask": "parent", "whenOutput": "regex:(a)\\1"}, "refers back"),
        ({"afterTask": "parent", "whenOutput": "regex:[a-"}, "does not compile"),
        ({"afterTask": "parent", "whenOutput": "regex:" + "a" * 300}, "over the limit of 200"),
        ({"approvalTimeout": "1h"}, "apply only to a task that needs approval"),
        ({"approval": True, "approvalTimeout": "soon"}, "not a duration"),
        ({"approval": True, "onTimeout": "approve"}, "onTimeout needs approvalTimeout"),
    ],
)
def test_bad_chain_and_approval_fields_are_refused_and_write_nothing(
    store: Cronbox, session: str, fields: dict[str, Any], says: str
) -> None:
    schedule(store, session, "parent")
    before = store.inbound_rows(session)
    with pytest.raises(InvalidInput, match=says):
        schedule(store, session, "child", **fields)
    assert store.inbound_rows(session) == before


def test_cancelling_a_parent_with_children_needs_with_children(
    store: Cronbox, session: str
) -> None:
    schedule(store, session, "parent")
    schedule(store, session, "child", afterTask="parent")
    schedule(store, session, "grandchild", afterTask="child")
    with pytest.raises(HasChildren, match=r"\(child, grandchild\); cancel with --with-children"):
        store.cancel_task("parent")
    assert store.get_task("parent").status is MessageStatus.PENDING
    store.cancel_task("parent", with_children=True)
    statuses = [store.get_task(t).status for t in ("parent", "child", "grandchild")]
    assert statuses == [MessageStatus.CANCELLED] * 3
    actions = [(e.action, e.target) for e in store.audit_entries(session)][:3]
    assert ("task.cancel", "grandchild") in actions


def test_the_output_rules() -> None:
    assert check_when_output("regex:^ALERT [0-9]+") == "regex:^ALERT [0-9]+"
    assert output_matches("regex:^ALERT [0-9]+", "ALERT 42")
    assert not output_matches("contains:ALERT", None)
    assert output_matches(None, None)
    assert not output_matches("contains:late", "x" * 3000 + "late")  # past what is matched
    assert render_prompt("got: {{parent.output}}", "y" * 5000) == "got: " + "y" * 2000


def test_plan_chain_is_a_pure_decision() -> None:
    child = InboundMessage(
        id="c", seq=2, kind=MessageKind.TASK, created_at="2026-01-15T08:00:00.000Z",
        status=MessageStatus.WAITING,
        process_after=None, scheduled_for=None, recurrence=None, timezone="UTC", series_id="c",
        tries=0, trigger=1, content={"prompt": "p"}, after_task="p", after_outcome="ok",
    )  # fmt: skip
    end = ParentEnd(message_id="p~3", series_id="p", outcome=RunOutcome.SKIPPED)
    now = ManualClock(START).now()
    assert plan_chain([end], [child], [], [], now).inserts == ()
    ok = end.model_copy(update={"outcome": RunOutcome.OK})
    [run] = plan_chain([ok], [child], [], [], now).inserts
    assert (run.series_id, run.chain_key, run.status) == ("c", "p~3", MessageStatus.PENDING)


# --- approvals ---------------------------------------------------------------------------


def gated(store: Cronbox, session: str, task_id: str = "deploy", **fields: Any) -> str:
    return schedule(store, session, task_id, approval=True, **fields)


def test_a_due_gated_occurrence_awaits_approval_and_wakes_nothing(
    store: Cronbox, session: str
) -> None:
    gated(store, session)
    assert store.due_ids(session) == ("deploy",)  # due: the host looks at it …
    store.prepare_due(session)
    row = store.message(session, "deploy")  # … and it waits instead of waking the agent
    assert row.status is MessageStatus.AWAITING_APPROVAL
    assert store.due_ids(session) == ()
    assert store.get_session(session).next_due_at is None
    assert store.awaiting_count() == 1
    [note] = [r for r in store.inbound_rows(session) if r.kind is MessageKind.SYSTEM]
    assert note.trigger == 0
    assert "cronbox task approve deploy" in note.prompt
    with sdb.outbound(store.session_dir(session)) as out:
        assert (
            sdb.claimable(out, store.session_dir(session) / sdb.INBOUND, fmt(store.now()), 10)[0].id
            == note.id
        )  # the note rides along as context; the gated row is not claimable


def test_approve_runs_it_and_the_history_says_who_when_and_why(
    store: Cronbox, session: str, clock: ManualClock
) -> None:
    gated(store, session)
    store.prepare_due(session)
    clock.advance(minutes=5)
    store.approve_task("deploy", actor="cli:ana", note="go ahead")
    assert store.due_ids(session) == ("deploy",)
    with sdb.outbound(store.session_dir(session)) as out:
        claim = sdb.claimable(out, store.session_dir(session) / sdb.INBOUND, fmt(clock.now()), 10)
    assert "deploy" in [r.id for r in claim]
    finish(store, session, "deploy")
    [run] = store.runs_for("deploy")
    assert run.outcome is RunOutcome.OK
    assert (run.decision, run.decided_by, run.decided_at, run.decision_note) == (
        "approved", "cli:ana", fmt(clock.now()), "go ahead",
    )  # fmt: skip
    assert store.audit_entries(session)[0].action == "task.approve"
    with pytest.raises(TaskStateError, match="no occurrence awaiting approval"):
        store.approve_task("deploy")


def test_reject_records_rejected_and_a_recurring_series_continues(
    store: Cronbox, session: str
) -> None:
    gated(store, session, recurrence="0 9 * * *", processAfter=START)
    store.prepare_due(session)
    store.reject_task("deploy", actor="cli:ana", note="not today")
    [run] = store.runs_for("deploy")
    assert run.outcome is RunOutcome.REJECTED
    assert (run.decided_by, run.decision_note) == ("cli:ana", "not today")
    view = store.get_task("deploy")
    assert view.status is MessageStatus.PENDING
    assert view.next_run == "2026-01-15T09:00:00.000Z"
    assert store.message(session, "deploy").status is MessageStatus.SKIPPED


@pytest.mark.parametrize(
    ("on_timeout", "decision"), [("reject", "rejected"), ("approve", "approved")]
)
def test_the_timeout_applies_on_timeout_by_the_injected_clock(
    store: Cronbox, session: str, clock: ManualClock, on_timeout: str, decision: str
) -> None:
    gated(store, session, approvalTimeout="1h", onTimeout=on_timeout)
    store.prepare_due(session)
    deadline = "2026-01-15T09:00:00.000Z"
    assert store.get_session(session).next_due_at == deadline  # the sweep looks again then
    clock.advance(minutes=59)
    store.prepare_due(session)
    assert store.message(session, "deploy").status is MessageStatus.AWAITING_APPROVAL
    clock.advance(minutes=1)
    store.prepare_due(session)
    [run] = store.runs_for("deploy")
    assert (run.decision, run.decided_by) == (decision, "timeout")
    assert "--on-timeout" in (run.decision_note or "")
    expected = MessageStatus.PENDING if decision == "approved" else MessageStatus.SKIPPED
    assert store.message(session, "deploy").status is expected


def test_an_operator_run_of_a_gated_task_needs_no_approval(store: Cronbox, session: str) -> None:
    gated(store, session, processAfter="+1d")
    run = store.run_now("deploy")
    store.prepare_due(session)
    assert store.message(session, run.id).status is MessageStatus.PENDING
    assert store.due_ids(session) == (run.id,)


def test_a_gated_child_waits_for_approval_after_its_parent(store: Cronbox, session: str) -> None:
    schedule(store, session, "build")
    schedule(store, session, "ship", afterTask="build", approval=True)
    finish(store, session, "build")
    [run] = chain_runs(store, session, "ship")
    assert run.status is MessageStatus.AWAITING_APPROVAL
    store.approve_task("ship")
    assert store.message(session, run.id).status is MessageStatus.PENDING


@pytest.mark.parametrize("name", ["approve_task", "reject_task", "approve", "REJECT"])
def test_an_agent_action_that_tries_to_approve_is_refused(name: str) -> None:
    with pytest.raises(InvalidAction, match="an agent cannot approve or reject a task"):
        parse_action({"action": name, "taskId": "deploy"})


def test_a_waiting_or_awaiting_task_says_why_it_cannot_be_paused(
    store: Cronbox, session: str
) -> None:
    schedule(store, session, "parent")
    schedule(store, session, "child", afterTask="parent")
    gated(store, session)
    store.prepare_due(session)
    with pytest.raises(TaskStateError, match="waits for its parent task, so it cannot be paused"):
        store.pause_task("child")
    with pytest.raises(TaskStateError, match="is awaiting approval, so it cannot be paused"):
        store.pause_task("deploy")
    with pytest.raises(InvalidInput, match="runs each time parent finishes"):
        store.update_task({"taskId": "child", "processAfter": "+1h"})
    store.update_task({"taskId": "child", "prompt": "new words"})
    assert store.message(session, "child").prompt == "new words"
    store.cancel_task("deploy")
    assert store.message(session, "deploy").status is MessageStatus.CANCELLED
    assert store.awaiting_count() == 0
