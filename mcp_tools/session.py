"""The agent's schedule as the tools see it: the host's inbox plus the agent's own requests.

The host applies a request written to ``outbound.db`` about a second later. Until then
``inbound.db`` does not show it, so every answer here projects the requests the host has
not handled yet onto the inbox: a task scheduled a moment ago can be listed, paused or
cancelled at once, and a task with a cancellation on its way is no longer live.
All SQL is in ``cronbox_shared.sessiondb``; this module only reads, decides and writes
one row.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import AgentAction, ScheduleTask, UpdateTask, parse_action, transition
from cronbox_shared.errors import CronboxError, InvalidAction
from cronbox_shared.models import LIVE_STATUSES, InboundMessage, MessageKind, MessageStatus
from cronbox_shared.policies import QUIET_KEY, QuietHours, admitted, parse_quiet
from cronbox_shared.tasks import WAKES_KEY, validate_update, wake_limit
from cronbox_shared.timeutil import fmt, parse_utc, zone

LIVE = LIVE_STATUSES
# How many unapplied rows are looked at; the host applies them within a second or so.
_UNAPPLIED_LIMIT = 10_000


@dataclass(frozen=True)
class TaskState:
    """One series as the agent should see it.

    ``row`` is its live occurrence (or, for an ended series, its newest one) with the
    agent's unapplied requests projected on it; ``applied`` is False while the
    ``schedule_task`` request that created it still waits for the host.
    """

    series_id: str
    row: InboundMessage
    applied: bool = True


def unapplied_actions(session_dir: Path) -> list[AgentAction]:
    """This session's actions the host has not handled yet, oldest first.

    One the host would reject as malformed is left out: it will change nothing.
    """
    actions: list[AgentAction] = []
    for raw in sdb.undelivered(session_dir, _UNAPPLIED_LIMIT):
        if raw["kind"] != MessageKind.SYSTEM.value:
            continue
        try:
            action = parse_action(json.loads(raw["content"]))
        except (ValueError, RecursionError, InvalidAction):
            continue
        if not isinstance(action, ScheduleTask) or action.id:
            actions.append(action)
    return actions


def write_action(session_dir: Path, action: AgentAction, now: datetime) -> int:
    """Append one request for the host to ``outbound.db`` and ring the home's doorbell
    (so the host applies it within a second even when no runner is live); its (odd) seq."""
    with sdb.outbound(session_dir) as db:
        seq = sdb.insert_outbound(
            db, f"action-{secrets.token_hex(8)}", MessageKind.SYSTEM, action.to_content(),
            fmt(now),
        )  # fmt: skip
    sdb.ring_doorbell(session_dir)
    return seq


def scheduled_row(action: ScheduleTask, now: datetime, due: str | None = None) -> InboundMessage:
    """The row a (validated) ``schedule_task`` request will become once applied; ``due``
    is when it runs (its first run plus its jitter, past the quiet hours), if known."""
    task_id = action.id or ""
    when = action.process_after
    return InboundMessage(
        id=task_id, seq=0, kind=MessageKind.TASK, created_at=fmt(now),
        status=MessageStatus.WAITING if action.after_task else MessageStatus.PENDING,
        process_after=due or when, scheduled_for=when,
        recurrence=action.recurrence, timezone=action.timezone or "UTC",
        series_id=task_id, tries=0, trigger=1,
        content={"prompt": action.prompt, "script": action.script},
        missed_policy=action.missed_policy, catchup_limit=action.catchup_limit,
        max_failures=action.max_failures, jitter=action.jitter,
        ignore_quiet=bool(action.ignore_quiet), after_task=action.after_task,
        after_outcome=action.after_outcome, when_output=action.when_output,
        approval=bool(action.approval), isolated=bool(action.isolated),
    )  # fmt: skip


def due_of(session_dir: Path, action: ScheduleTask) -> str | None:
    """When an unapplied ``schedule_task`` request runs once the host applies it: its
    first run plus its jitter, past the session's quiet hours (the host's rule)."""
    if action.process_after is None:
        return None
    due = admitted(
        action.id or "", parse_utc(action.process_after), action.jitter,
        quiet_hours(session_dir), zone(session_zone(session_dir) or "UTC"),
        hold=not action.ignore_quiet,
    )  # fmt: skip
    return fmt(due)


def quiet_hours(session_dir: Path) -> QuietHours | None:
    """The session's quiet hours as the host recorded them, or None."""
    with sdb.inbound(session_dir, readonly=True) as db:
        text = sdb.session_info(db, QUIET_KEY)
    try:
        return parse_quiet(text) if text else None
    except CronboxError:
        return None


def project(
    row: InboundMessage, series_id: str, actions: Sequence[AgentAction], now: datetime
) -> InboundMessage:
    """``row`` after the unapplied requests aimed at its series, taken in order.

    A request the host would refuse (resuming a pending task, say) changes nothing.
    ``now`` stands for the moment the host applies them, a second or so from now.
    """
    names = {series_id, row.id}
    for action in actions:
        if isinstance(action, ScheduleTask) or action.task_id not in names:
            continue
        try:
            status = transition(action.action, row.status, series_id)
            if isinstance(action, UpdateTask):
                row = _updated(row, action, now)
        except CronboxError:
            continue
        row = row.model_copy(update={"status": status})
    return row


def _updated(row: InboundMessage, action: UpdateTask, now: datetime) -> InboundMessage:
    """``row`` as the host's store leaves it after ``action`` (its rule, ``validate_update``).

    The limits were checked when the request was made, so none is applied again here.
    """
    changes = validate_update(action, row, now=now, min_interval=timedelta(0))
    return row.model_copy(update=changes.row_fields())


def find_task(session_dir: Path, ref: str, now: datetime) -> TaskState | None:
    """The series ``ref`` (a task id, occurrence id or series id) names, or None."""
    with sdb.inbound(session_dir, readonly=True) as db:
        current = sdb.series_current(db, sdb.series_of_ref(db, ref))
    actions = unapplied_actions(session_dir)
    if current is not None:
        series = current.series_id or current.id
        return TaskState(series, project(current, series, actions, now))
    for i, action in enumerate(actions):
        if isinstance(action, ScheduleTask) and action.id == ref:
            row = project(
                scheduled_row(action, now, due_of(session_dir, action)), ref, actions[i + 1 :], now
            )
            return TaskState(ref, row, applied=False)
    return None


def live_tasks(session_dir: Path, now: datetime) -> list[TaskState]:
    """Every live series, the agent's unapplied requests included, soonest run first."""
    with sdb.inbound(session_dir, readonly=True) as db:
        rows = sdb.live_tasks(db, LIVE)
    actions = unapplied_actions(session_dir)
    states: dict[str, TaskState] = {}
    for row in rows:
        series = row.series_id or row.id
        if series not in states:
            states[series] = TaskState(series, project(row, series, actions, now))
    for i, action in enumerate(actions):
        if isinstance(action, ScheduleTask) and action.id and action.id not in states:
            row = project(
                scheduled_row(action, now, due_of(session_dir, action)),
                action.id,
                actions[i + 1 :],
                now,
            )
            states[action.id] = TaskState(action.id, row, applied=False)
    live = [s for s in states.values() if s.row.status.live]
    return sorted(live, key=lambda s: (s.row.process_after or s.row.created_at, s.series_id))


def session_zone(session_dir: Path) -> str | None:
    """The session's zone as the host recorded it in the inbox, or None if it never did."""
    with sdb.inbound(session_dir, readonly=True) as db:
        name = sdb.session_zone(db)
    if name is None:
        return None
    try:
        return zone(name).key
    except CronboxError:
        return None


def wake_budget(session_dir: Path) -> int | None:
    """The session's limit on wakes a day, as the host recorded it (None: no limit)."""
    with sdb.inbound(session_dir, readonly=True) as db:
        return wake_limit(sdb.session_info(db, WAKES_KEY))


def live_task_count(session_dir: Path) -> int:
    """Live tasks the host will hold once it has applied every unapplied schedule request."""
    with sdb.inbound(session_dir, readonly=True) as db:
        count = sdb.count_live_tasks(db)
        fresh = [
            a.id
            for a in unapplied_actions(session_dir)
            if isinstance(a, ScheduleTask)
            and a.id
            and sdb.series_current(db, sdb.series_of_ref(db, a.id)) is None
        ]
    return count + len(set(fresh))
