"""Approval gates: what a due gated occurrence, a person's answer or a timeout does.

Pure functions of rows and the time. An occurrence of an ``--approval`` task that comes
due is gated (:func:`plan_gate`): it becomes ``awaiting_approval`` — it wakes no runner
and holds no pool slot — and the session gets a note. A person's answer, or its
deadline passing, is a :class:`Decision`: approved, the occurrence is due at once and
runs (the runner takes only an occurrence whose approval names it); rejected, it ends
``skipped`` with a run recorded ``rejected``, and a recurring series continues
(:func:`plan_reject`, through the settlement's series rule).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cronbox_shared.chains import OnTimeout
from cronbox_shared.models import (
    InboundMessage,
    MessageStatus,
    Record,
    RunOutcome,
    preview,
)
from cronbox_shared.timeutil import Instant, fmt
from host.settlement import (
    Finished,
    InboxChanges,
    Policy,
    SettlementPlan,
    finish,
    system_note,
)
from host.store.records import RunRecord

TIMEOUT_ACTOR = "timeout"


class DecisionKind(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class Decision(Record):
    """A person's (or a timeout's) answer for one awaiting occurrence."""

    kind: DecisionKind
    by: str
    at: Instant
    note: str | None = None

    def state(self, occurrence: str) -> dict[str, Any]:
        """The ``approval_state`` that records this decision on ``occurrence``."""
        return {"occurrence": occurrence, "decision": self.kind.value, "by": self.by,
                "at": self.at, "note": self.note}  # fmt: skip


class Gate(Record):
    """A due occurrence turned ``awaiting_approval``, and its deadline (None: none)."""

    message_id: str
    deadline: Instant | None
    state: dict[str, Any]


def plan_gate(rows: list[InboundMessage], now: datetime) -> tuple[list[Gate], list[InboundMessage]]:
    """Gate due occurrences of approval-gated tasks: each waits, with a note to the session.

    The note is context (``trigger=0``): it never wakes the agent by itself, it is there
    when the agent next runs.
    """
    gates, notes = [], []
    for row in rows:
        deadline = (
            fmt(now + timedelta(seconds=row.approval_timeout)) if row.approval_timeout else None
        )
        state = {"occurrence": row.id, "since": fmt(now), "deadline": deadline}
        gates.append(Gate(message_id=row.id, deadline=deadline, state=state))
        text = awaiting_text(row, deadline)
        notes.append(system_note(f"system-{row.id}-approval", text, row.timezone, now, False))
    return gates, notes


def awaiting_text(row: InboundMessage, deadline: Instant | None) -> str:
    """What a person is told about an occurrence that waits for them."""
    series = row.series_id or row.id
    text = (
        f"Task {series} is due and waits for approval before it runs: "
        f"{preview(row.prompt, 200)!r}. Answer with `cronbox task approve {row.id}` or "
        f"`cronbox task reject {row.id} [--note TEXT]` (or POST /api/tasks/{row.id}/approve "
        "or /reject)."
    )
    if deadline is not None:
        fate = "approved" if row.on_timeout == OnTimeout.APPROVE else "rejected"
        text += f" Without an answer by {deadline} it is {fate}."
    return text


def timeout_decision(row: InboundMessage, now: datetime) -> Decision:
    """The decision an occurrence's deadline makes: its ``--on-timeout`` choice."""
    kind = DecisionKind.APPROVED if row.on_timeout == OnTimeout.APPROVE else DecisionKind.REJECTED
    waited = f"{row.approval_timeout} s" if row.approval_timeout else "its timeout"
    note = f"no answer within {waited}; --on-timeout {row.on_timeout or 'reject'}"
    return Decision(kind=kind, by=TIMEOUT_ACTOR, at=fmt(now), note=note)


def decision_run(row: InboundMessage, decision: Decision) -> RunRecord:
    """The run record of a decided occurrence (a rejected one also ends it)."""
    run = RunRecord(
        message_id=row.id, series_id=row.series_id, tries=row.tries,
        scheduled_for=row.scheduled_for or row.process_after, decision=decision.kind.value,
        decided_by=decision.by, decided_at=decision.at, decision_note=decision.note,
    )  # fmt: skip
    if decision.kind is DecisionKind.APPROVED:
        return run
    error = f"rejected by {decision.by}" + (f": {decision.note}" if decision.note else "")
    return run.model_copy(
        update={"finished_at": decision.at, "outcome": RunOutcome.REJECTED, "error": error}
    )


def approve_fields(row: InboundMessage, decision: Decision) -> dict[str, Any]:
    """The columns an approval sets: the occurrence is due now, approved for itself."""
    return {"status": MessageStatus.PENDING.value, "process_after": decision.at,
            "updated_at": decision.at, "approval_state": decision.state(row.id)}  # fmt: skip


def plan_reject(
    row: InboundMessage, decision: Decision, now: datetime, policy: Policy
) -> SettlementPlan:
    """End a rejected occurrence ``skipped``; a recurring series gets its next one."""
    run = decision_run(row, decision)
    assert run.error is not None
    changes, inserts = finish(row, MessageStatus.SKIPPED, run.error, now, RunOutcome.REJECTED,
                              policy)  # fmt: skip
    return SettlementPlan(
        changes=InboxChanges(updates=tuple(changes), inserts=tuple(inserts)),
        runs=(run,), series=(row.series_id or row.id,),
        finished=(Finished(message_id=row.id, series_id=row.series_id,
                           outcome=RunOutcome.REJECTED, error=run.error),),
    )  # fmt: skip
