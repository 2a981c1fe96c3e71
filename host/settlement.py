"""Settlement: what the runner's acks, a dead runner or a late start mean for the inbox.

Pure functions of their inputs (rows, acks, now, policy) that return a
:class:`SettlementPlan`: the row changes, the next occurrences of recurring series and
the run records. The service layer reads the inputs and applies a plan in one inbound
transaction; nothing here touches a file.

* :func:`settle_acks` — sweep steps 1 and 5: finished acks end their rows (a recurring
  one gets its next occurrence in the same plan), ``processing`` acks are claims.
* :func:`plan_requeue` — step 4: rows a crashed or killed runner left claimed go back
  with backoff (:func:`host.liveness.plan_retry`), or end ``failed``/``timeout``.
* :func:`plan_catch_up` — before a wake: a recurring occurrence that missed several
  slots is coalesced onto the latest, or recorded ``missed`` past its grace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field, ValidationError

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.models import (
    Ack,
    AckStatus,
    InboundMessage,
    MessageKind,
    MessageStatus,
    Record,
    RunOutcome,
)
from cronbox_shared.policies import (
    FAILED_OUTCOMES,
    QuietHours,
    admitted,
    failure_delay,
    failure_streak,
    pause_reason,
    plan_missed,
)
from cronbox_shared.recurrence import next_fire, stored_recurrence
from cronbox_shared.rows import BACKFILL, OCCURRENCE_SEP, is_backfill
from cronbox_shared.timeutil import Instant, fmt, parse_utc, zone
from host.liveness import Claim, plan_retry
from host.store.records import RunRecord

MAX_ERROR_CHARS = 2000
MAX_PREVIEW_CHARS = 500
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Policy:
    """The rules settlement applies; see the configuration table in README.md."""

    default_timeout: timedelta = timedelta(seconds=600)
    max_tries: int = 5
    retry_base: timedelta = timedelta(seconds=5)
    failure_backoff: timedelta = timedelta(seconds=DEFAULTS.failure_backoff)
    """The first delay after a failed occurrence of a series (it doubles, see policies)."""
    quiet: QuietHours | None = None
    """The session's quiet hours: task occurrences due inside wait for the window's end."""
    zone: str = "UTC"
    """The session's zone, which its quiet hours are read in."""

    def admitted(self, row: InboundMessage, slot: datetime) -> datetime:
        """When the occurrence of ``row``'s series for ``slot`` is due: the slot plus its
        jitter, held to the end of the quiet window it falls in (a manual run, and a
        task that ignores quiet hours, is never held)."""
        hold = not (
            row.ignore_quiet or row.content.get("manual") or row.kind is not MessageKind.TASK
        )
        return admitted(row.series_id or row.id, slot, row.jitter, self.quiet, zone(self.zone),
                        hold)  # fmt: skip


class RowChange(Record):
    """New values for some columns of one ``messages_in`` row (None: unchanged)."""

    message_id: str
    at: Instant
    status: MessageStatus | None = None
    error: str | None = None
    tries: int | None = None
    process_after: Instant | None = None
    scheduled_for: Instant | None = None
    clear_recurrence: bool = False


class InboxChanges(Record):
    """What one plan writes to a session's inbound.db."""

    updates: tuple[RowChange, ...] = ()
    inserts: tuple[InboundMessage, ...] = ()


class Finished(Record):
    """An occurrence a plan ends, for the host's log."""

    message_id: str
    series_id: str | None
    outcome: RunOutcome
    error: str | None


class Paused(Record):
    """A series the failure rule paused, with the reason (for the audit log)."""

    series_id: str
    reason: str


class SettlementPlan(Record):
    """Everything one settlement decided."""

    changes: InboxChanges = Field(default_factory=InboxChanges)
    runs: tuple[RunRecord, ...] = ()
    claims: tuple[Claim, ...] = ()
    finished: tuple[Finished, ...] = ()
    series: tuple[str, ...] = ()
    """Series whose current row changed (their central mirror must follow)."""
    paused: tuple[Paused, ...] = ()
    gated: tuple[str, ...] = ()
    """Occurrences that started awaiting approval (their notice goes to the webhook)."""

    @property
    def empty(self) -> bool:
        return not (self.changes.updates or self.changes.inserts or self.runs)


_ACK_FATE = {
    AckStatus.COMPLETED: (MessageStatus.COMPLETED, RunOutcome.OK),
    AckStatus.FAILED: (MessageStatus.FAILED, RunOutcome.ERROR),
    AckStatus.SKIPPED: (MessageStatus.SKIPPED, RunOutcome.SKIPPED),
}


# --- the series rule --------------------------------------------------------------------


def series_of(ref: str) -> str:
    """The series id an occurrence id belongs to (occurrence ids are ``<series>~<n>``)."""
    return ref.split(OCCURRENCE_SEP, 1)[0]


def next_occurrence_id(row: InboundMessage) -> str:
    """The id of the occurrence after ``row`` in its series (``<series>~<n+1>``)."""
    series = row.series_id or row.id
    n = int(row.id.rsplit(OCCURRENCE_SEP, 1)[1]) + 1 if OCCURRENCE_SEP in row.id else 1
    return f"{series}{OCCURRENCE_SEP}{n}"


def next_occurrence(
    row: InboundMessage,
    now: datetime,
    outcome: RunOutcome | None = None,
    error: str | None = None,
    policy: Policy | None = None,
) -> InboundMessage | None:
    """The occurrence that follows ``row`` once it finished with ``outcome``: for a backfill
    run the next backfill slot; None for any other one-time row.

    Computed from the row's scheduled time, not from now, so a slow run never shifts
    the series. After a failure (error or timeout) the next occurrence is the first
    slot at or after ``now`` plus the failure backoff of the streak, and a streak of
    the task's ``max_failures`` pauses it, with the reason (see
    :mod:`cronbox_shared.policies`). Each occurrence is due at its slot plus its jitter.
    """
    if not row.recurrence:
        return next_backfill(row, now)
    policy = policy or Policy()
    rec = stored_recurrence(row.recurrence)
    tz = zone(row.timezone)
    base = parse_utc(row.scheduled_for or row.process_after or row.created_at)
    slot = next_fire(rec, tz, base)
    streak = failure_streak(row.failures, outcome) if outcome is not None else row.failures
    status, reason = MessageStatus.PENDING, None
    if outcome in FAILED_OUTCOMES:
        earliest = now + failure_delay(streak, policy.failure_backoff)
        if slot < earliest:
            slot = next_fire(rec, tz, earliest - _TICK)
        reason = pause_reason(streak, row.max_failures, error)
        if reason is not None:
            status = MessageStatus.PAUSED
    series = row.series_id or row.id
    return row.model_copy(
        update={
            "id": next_occurrence_id(row), "seq": 0, "created_at": fmt(now),
            "updated_at": fmt(now), "status": status,
            "process_after": fmt(policy.admitted(row, slot)), "scheduled_for": fmt(slot),
            "series_id": series, "tries": 0, "error": None, "failures": streak,
            "paused_reason": reason,
        }
    )  # fmt: skip


BACKFILL_REST = "backfill_rest"


def backfill_id(series_id: str, slot: datetime) -> str:
    """The id of a series' backfill run for ``slot`` (one per slot, so a repeat is a no-op)."""
    return f"{series_id}{OCCURRENCE_SEP}{BACKFILL}-{_compact(slot)}"


def backfill_row(
    current: InboundMessage, slots: Sequence[datetime], now: datetime
) -> InboundMessage:
    """The first backfill run of ``slots`` (past slots of ``current``'s series, in order):
    a manual run for ``slots[0]``, due now, that carries the rest, so each one's end
    queues the next (:func:`next_backfill`) and they run one after another."""
    series = current.series_id or current.id
    rest = [fmt(s) for s in slots[1:]]
    return current.model_copy(
        update={
            "id": backfill_id(series, slots[0]), "seq": 0, "created_at": fmt(now),
            "updated_at": fmt(now), "status": MessageStatus.PENDING, "process_after": fmt(now),
            "scheduled_for": fmt(slots[0]), "recurrence": None, "series_id": series,
            "tries": 0, "trigger": 1, "misfire_grace": None, "error": None, "jitter": None,
            "failures": 0, "paused_reason": None,
            "content": {**current.content, "manual": True, BACKFILL_REST: rest},
        }
    )  # fmt: skip


def next_backfill(row: InboundMessage, now: datetime) -> InboundMessage | None:
    """The backfill run after ``row`` once it finished; None when it was the last (or
    ``row`` is no backfill run)."""
    rest = row.content.get(BACKFILL_REST)
    if not is_backfill(row.id) or not isinstance(rest, list) or not rest:
        return None
    slots = [parse_utc(str(s)) for s in rest]
    return backfill_row(row, slots, now)


def paused_note(row: InboundMessage, nxt: InboundMessage, now: datetime) -> InboundMessage:
    """The system note that wakes the agent when its series was paused by failures."""
    series = row.series_id or row.id
    text = (
        f"Task {series} was paused: it {nxt.paused_reason}. Tell the user what went wrong; "
        "it runs again once resumed (resume_task, or `cronbox task resume` by the operator)."
    )
    return system_note(f"system-{nxt.id}-paused", text, row.timezone, now)


def system_note(
    note_id: str, text: str, timezone: str, now: datetime, trigger: bool = True
) -> InboundMessage:
    """A note from cronbox to the agent, due now; without ``trigger`` it is context only
    (it rides along when the agent next runs, and wakes no one)."""
    return InboundMessage(
        id=note_id, seq=0, kind=MessageKind.SYSTEM, created_at=fmt(now), updated_at=fmt(now),
        status=MessageStatus.PENDING, process_after=fmt(now), scheduled_for=fmt(now),
        recurrence=None, timezone=timezone, series_id=None, tries=0, trigger=int(trigger),
        content={"text": text, "sender": "cronbox"},
    )  # fmt: skip


def finish(
    row: InboundMessage, status: MessageStatus, error: str | None, now: datetime,
    outcome: RunOutcome | None = None, policy: Policy | None = None, **extra: Any,
) -> tuple[list[RowChange], list[InboundMessage]]:  # fmt: skip
    """End an occurrence; a recurring one hands its recurrence to the next occurrence.

    Clearing the old row's recurrence in the same transaction that inserts the next
    row is what keeps a crash from leaving two live occurrences. A series the failure
    rule pauses gets a system note for the agent in the same plan.
    """
    nxt = next_occurrence(row, now, outcome, error, policy)
    change = RowChange(
        message_id=row.id, at=fmt(now), status=status, error=error,
        clear_recurrence=nxt is not None, **extra,
    )  # fmt: skip
    if nxt is None:
        return [change], []
    if nxt.paused_reason is not None:
        return [change], [nxt, paused_note(row, nxt, now)]
    return [change], [nxt]


# --- the plans ------------------------------------------------------------------------


@dataclass
class _Draft:
    """A plan being put together, one row at a time."""

    updates: list[RowChange] = field(default_factory=list)
    inserts: list[InboundMessage] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    paused: list[Paused] = field(default_factory=list)

    def change(self, change: RowChange, row: InboundMessage, run: RunRecord | None) -> None:
        """Change a row without ending it (a retry, a coalesced slot)."""
        self.updates.append(change)
        if run is not None:
            self.runs.append(run)
        self.series.append(row.series_id or row.id)

    def end(
        self, row: InboundMessage, status: MessageStatus, error: str | None, now: datetime,
        run: RunRecord, policy: Policy | None = None, **extra: Any,
    ) -> None:  # fmt: skip
        """End a row (handing a recurrence on) and record its finished run."""
        changed, new = finish(row, status, error, now, run.outcome, policy, **extra)
        self.updates += changed
        self.inserts += new
        self.runs.append(run)
        self.series.append(row.series_id or row.id)
        assert run.outcome is not None
        self.finished.append(Finished(message_id=row.id, series_id=row.series_id,
                                      outcome=run.outcome, error=run.error))  # fmt: skip
        self.paused += [
            Paused(series_id=r.series_id or r.id, reason=r.paused_reason)
            for r in new
            if r.paused_reason is not None
        ]

    def plan(self) -> SettlementPlan:
        return SettlementPlan(
            changes=InboxChanges(updates=tuple(self.updates), inserts=tuple(self.inserts)),
            runs=tuple(self.runs), claims=tuple(self.claims), finished=tuple(self.finished),
            series=tuple(self.series), paused=tuple(self.paused),
        )  # fmt: skip


def settle_acks(
    rows: Mapping[str, InboundMessage],
    raw_acks: Sequence[Mapping[str, Any]],
    now: datetime,
    policy: Policy,
) -> SettlementPlan:
    """Apply the runner's acks to the due rows they name.

    Acks are untrusted: a malformed one, one for a row that is not pending, or one for
    another try than the row's current one is ignored. Times are clamped between the
    row's due time and now.
    """
    draft = _Draft()
    for raw in raw_acks:
        try:
            ack = Ack.model_validate(dict(raw))
        except (ValidationError, ValueError):
            continue
        row = rows.get(ack.message_id)
        if row is None or row.status is not MessageStatus.PENDING or ack.attempt != row.tries:
            continue
        started = _clamp(ack.started_at or ack.updated_at, row, now)
        run = RunRecord(
            message_id=row.id, series_id=row.series_id, tries=row.tries + 1,
            scheduled_for=row.scheduled_for or row.process_after, started_at=fmt(started),
        )  # fmt: skip
        if ack.status is AckStatus.PROCESSING:
            timeout = timedelta(seconds=row.timeout) if row.timeout else policy.default_timeout
            draft.claims.append(Claim(row.id, started, timeout))
            draft.runs.append(run)
            continue
        status, outcome = _ACK_FATE[ack.status]
        error = _cap(ack.error, MAX_ERROR_CHARS)
        ended = _clamp(ack.updated_at, row, now)
        run = run.model_copy(
            update={"finished_at": fmt(ended), "outcome": outcome, "error": error,
                    "output_preview": _cap(ack.output_preview, MAX_PREVIEW_CHARS)}
        )  # fmt: skip
        draft.end(row, status, error, now, run, policy)
    return draft.plan()


def plan_requeue(
    rows: Mapping[str, InboundMessage],
    claims: Sequence[Claim],
    reason: str,
    now: datetime,
    policy: Policy,
    timed_out: Sequence[str] = (),
) -> SettlementPlan:
    """Decide the fate of rows a runner that is gone left claimed.

    A row past its run timeout ends ``failed`` with outcome ``timeout``. Any other goes
    back to ``pending`` with ``tries+1`` after ``retry_base * 2**tries``, or ends
    ``failed`` once it used up ``max_tries``. A recurring series continues either way.
    """
    draft = _Draft()
    for claim in claims:
        row = rows.get(claim.message_id)
        if row is None or row.status is not MessageStatus.PENDING:
            continue
        run = RunRecord(
            message_id=row.id, series_id=row.series_id, tries=row.tries + 1,
            scheduled_for=row.scheduled_for or row.process_after,
        )  # fmt: skip
        if claim.message_id in timed_out:
            error = f"timed out after {int(claim.timeout.total_seconds())} s"
            ended = run.model_copy(
                update={"error": error, "finished_at": fmt(now), "outcome": RunOutcome.TIMEOUT}
            )
            draft.end(row, MessageStatus.FAILED, error, now, ended, policy, tries=run.tries)
            continue
        retry = plan_retry(row.tries, now, policy.max_tries, policy.retry_base)
        error = f"{reason} (try {retry.tries})"
        if retry.process_after is not None:
            change = RowChange(message_id=row.id, at=fmt(now), tries=retry.tries, error=error,
                               process_after=fmt(retry.process_after))  # fmt: skip
            draft.change(change, row, run.model_copy(update={"error": error}))
            continue
        ended = run.model_copy(
            update={"error": error, "finished_at": fmt(now), "outcome": RunOutcome.ERROR}
        )
        draft.end(row, MessageStatus.FAILED, error, now, ended, policy, tries=retry.tries)
    return draft.plan()


def plan_catch_up(
    due: Sequence[InboundMessage], now: datetime, policy: Policy | None = None
) -> SettlementPlan:
    """Apply each due row's missed-run policy before its runner is woken.

    A recurring occurrence whose slot (and perhaps later ones) passed while nothing ran
    it is decided by :func:`~cronbox_shared.policies.plan_missed`: it is moved to the
    slot it runs for, or, when nothing runs now, recorded ``missed`` (the row ends
    ``skipped``) and the series moves on to its next slot. Every missed slot gets a
    run record with outcome ``missed``. Rows already tried and non-task rows are left
    alone.
    """
    draft = _Draft()
    rules = policy or Policy()
    for row in due:
        if row.kind is not MessageKind.TASK or row.tries > 0 or row.content.get("manual"):
            continue  # a manual run (task run, backfill) runs when it was asked for
        scheduled = parse_utc(row.scheduled_for or row.process_after or row.created_at)
        rec = stored_recurrence(row.recurrence) if row.recurrence else None
        grace = timedelta(seconds=row.misfire_grace) if row.misfire_grace is not None else None
        series = row.series_id or row.id

        def delay(slot: datetime, row: InboundMessage = row) -> timedelta:
            return rules.admitted(row, slot) - slot

        decision = plan_missed(row.missed_policy, rec, zone(row.timezone), scheduled, now,
                               grace, row.catchup_limit, delay)  # fmt: skip
        last = decision.run_slot is None and decision.missed
        for i, passed in enumerate(decision.missed):
            if last and i == len(decision.missed) - 1:
                break  # the row itself stands for the last missed slot
            earlier = decision.missed_total - len(decision.missed)
            note = f" (and {earlier} earlier slots)" if i == 0 and earlier > 0 else ""
            draft.runs.append(
                RunRecord(message_id=f"{series}{OCCURRENCE_SEP}missed-{_compact(passed)}",
                          series_id=series, scheduled_for=fmt(passed), tries=0,
                          finished_at=fmt(now), outcome=RunOutcome.MISSED,
                          error=f"missed: {_seconds_words(now - passed)} late{note}")
            )  # fmt: skip
        if decision.run_slot is None:
            missed_slot = decision.missed[-1]
            slot = fmt(missed_slot)
            late = _seconds_words(now - missed_slot)
            moved = row.model_copy(update={"scheduled_for": slot, "process_after": slot})
            run = RunRecord(message_id=row.id, series_id=row.series_id, scheduled_for=slot,
                            tries=0, finished_at=fmt(now), outcome=RunOutcome.MISSED,
                            error=f"missed: {late} late, past its grace")  # fmt: skip
            draft.end(moved, MessageStatus.SKIPPED, f"missed: {late} late", now, run, policy,
                      scheduled_for=slot, process_after=slot)  # fmt: skip
        elif (shift := _moved(row, decision.run_slot, rules)) is not None:
            change = RowChange(message_id=row.id, at=fmt(now), scheduled_for=shift[0],
                               process_after=shift[1])  # fmt: skip
            draft.change(change, row, None)
        elif decision.missed:
            draft.series.append(series)
    return draft.plan()


def preview_runs(row: InboundMessage, policy: Policy, n: int) -> list[tuple[datetime, datetime]]:
    """(slot, when it runs) of the next ``n`` runs of ``row``'s series, as the host will
    run them: each occurrence due at its slot plus jitter past the quiet hours, and the
    missed-run policy applied when it wakes (a window of quiet hours can hold several
    slots: ``latest`` and ``skip`` run once for them, ``all`` replays them up to its
    limit). Runs are taken to take no time."""
    if row.scheduled_for is None:
        return []
    slot = parse_utc(row.scheduled_for)
    wake = parse_utc(row.process_after or row.scheduled_for)
    if not row.recurrence:
        return [(slot, wake)]
    rec = stored_recurrence(row.recurrence)
    tz = zone(row.timezone)
    grace = timedelta(seconds=row.misfire_grace) if row.misfire_grace is not None else None

    def delay(at: datetime) -> timedelta:
        return policy.admitted(row, at) - at

    runs: list[tuple[datetime, datetime]] = []
    for _ in range(4 * n):  # every step runs a slot or skips past at least one
        decision = plan_missed(row.missed_policy, rec, tz, slot, wake, grace, row.catchup_limit,
                               delay)  # fmt: skip
        if decision.run_slot is None:
            slot = next_fire(rec, tz, decision.missed[-1])
        else:
            at = max(wake, policy.admitted(row, decision.run_slot))
            runs.append((decision.run_slot, at))
            if len(runs) >= n:
                break
            slot = next_fire(rec, tz, decision.run_slot)
            wake = max(at, policy.admitted(row, slot))
            continue
        wake = max(wake, policy.admitted(row, slot))
    return runs


# --- helpers ---------------------------------------------------------------------------


def _cap(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def _clamp(claimed: str, row: InboundMessage, now: datetime) -> datetime:
    """A runner's timestamp, kept within what is possible (it is untrusted)."""
    floor = parse_utc(row.process_after or row.created_at)
    try:
        when = parse_utc(claimed)
    except ValueError:
        return now
    return min(max(when, floor), now)


def _moved(row: InboundMessage, slot: datetime, rules: Policy) -> tuple[str, str] | None:
    """(scheduled_for, process_after) of a row that runs for ``slot``, when they change."""
    new = (fmt(slot), fmt(rules.admitted(row, slot)))
    return None if new == (row.scheduled_for, row.process_after) else new


def _compact(slot: datetime) -> str:
    return slot.strftime("%Y%m%dT%H%M%S") + f"{slot.microsecond // 1000:03d}Z"


def _seconds_words(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
