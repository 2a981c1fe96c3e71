"""Chains: which runs of chained tasks a settlement fires, as a pure plan.

A chained task's own row waits (``waiting``) for its parent series. When an occurrence
of the parent finishes, :func:`plan_chain` decides, for each waiting child, whether it
fires (the outcome is one its ``--on`` names, the output matches ``--when-output``),
and returns the child runs to insert in the same inbound transaction as the parent's
settlement. A run's ``chain_key`` is the parent occurrence's id, unique per child
series, so a settlement repeated after a crash cannot fire a child twice. Once the
parent series is over (nothing of it can run again), its children end too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from cronbox_shared.chains import AfterOutcome, output_matches, render_prompt
from cronbox_shared.models import InboundMessage, MessageStatus, Record, RunOutcome
from cronbox_shared.rows import OCCURRENCE_SEP
from cronbox_shared.timeutil import fmt
from host.settlement import InboxChanges, RowChange


class ParentEnd(Record):
    """A parent occurrence that finished: what its children are decided by."""

    message_id: str
    series_id: str
    outcome: RunOutcome
    output: str | None = None


def chain_run_id(child_id: str, parent_occurrence: str) -> str:
    """The id of the run of ``child_id`` that ``parent_occurrence`` fires (one per pair)."""
    digest = hashlib.sha256(parent_occurrence.encode()).hexdigest()[:12]
    return f"{child_id}{OCCURRENCE_SEP}after-{digest}"


def chain_run(child: InboundMessage, parent: ParentEnd, now: datetime) -> InboundMessage:
    """The run of a waiting ``child`` fired by ``parent``: due now, with the parent's output
    in its prompt where it asks for ``{{parent.output}}``."""
    at = fmt(now)
    content = {
        **child.content,
        "prompt": render_prompt(child.prompt, parent.output),
        "manual": True,  # it runs when its parent fired it, never on a schedule
        "chain": {"parent": parent.message_id, "outcome": parent.outcome.value},
    }
    return child.model_copy(
        update={
            "id": chain_run_id(child.id, parent.message_id), "seq": 0, "created_at": at,
            "updated_at": at, "status": MessageStatus.PENDING, "process_after": at,
            "scheduled_for": at, "recurrence": None, "series_id": child.id, "tries": 0,
            "trigger": 1, "error": None, "content": content, "chain_key": parent.message_id,
            "approval_state": None,
        }
    )  # fmt: skip


def fires(child: InboundMessage, parent: ParentEnd) -> bool:
    """Whether ``parent``'s end fires ``child``: its outcome and its output match."""
    wanted = AfterOutcome(child.after_outcome or AfterOutcome.OK)
    return wanted.fires_on(parent.outcome) and output_matches(child.when_output, parent.output)


def plan_chain(
    ended: Sequence[ParentEnd],
    children: Sequence[InboundMessage],
    over: Collection[str],
    fired_before: Collection[str],
    now: datetime,
) -> InboxChanges:
    """The child runs ``ended`` fires, and the children whose parent series is ``over``.

    ``children`` are the waiting chained tasks of the ended occurrences' series; ``over``
    the parent series of which nothing can run again; ``fired_before`` the children that
    ran for an earlier parent occurrence. An ended child is ``completed`` when it fired
    at least once, else ``skipped`` with the reason.
    """
    by_parent: dict[str, list[InboundMessage]] = {}
    for child in children:
        by_parent.setdefault(child.after_task or "", []).append(child)
    inserts: list[InboundMessage] = []
    fired = set(fired_before)
    for parent in ended:
        for child in by_parent.get(parent.series_id, []):
            if fires(child, parent):
                inserts.append(chain_run(child, parent, now))
                fired.add(child.id)
    updates = [
        _end(child, child.id in fired, now)
        for series in dict.fromkeys(over)
        for child in by_parent.get(series, [])
    ]
    return InboxChanges(updates=tuple(updates), inserts=tuple(inserts))


def _end(child: InboundMessage, fired: bool, now: datetime) -> RowChange:
    if fired:
        return RowChange(message_id=child.id, at=fmt(now), status=MessageStatus.COMPLETED)
    why = f"its parent {child.after_task} ended without a run that fires it"
    return RowChange(message_id=child.id, at=fmt(now), status=MessageStatus.SKIPPED, error=why)


def parent_ends(
    finished: Sequence[tuple[str, str | None, RunOutcome]], outputs: Mapping[str, str | None]
) -> list[ParentEnd]:
    """The parent ends of a settlement's finished occurrences (id, series, outcome)."""
    return [
        ParentEnd(
            message_id=mid,
            series_id=series or mid.split(OCCURRENCE_SEP, 1)[0],
            outcome=outcome,
            output=outputs.get(mid),
        )
        for mid, series, outcome in finished
    ]
