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

from pydantic import ValidationError

from cronbox_shared.models import (
    Ack,
    AckStatus,
    InboundMessage,
    MessageKind,
    MessageStatus,
    Record,
    RunOutcome,
)
from cronbox_shared.recurrence import next_fire, plan_due, stored_recurrence
from cronbox_shared.timeutil import Instant, fmt, parse_utc, zone
from host.liveness import Claim, plan_retry
from host.store.records import RunRecord

OCCURRENCE_SEP = "~"
MAX_ERROR_CHARS = 2000
MAX_PREVIEW_CHARS = 500


@dataclass(frozen=True)
class Policy:
    """The rules settlement applies; see the configuration table in README.md."""

    default_timeout: timedelta = timedelta(seconds=600)
    max_tries: int = 5
    retry_base: timedelta = timedelta(seconds=5)


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


class SettlementPlan(Record):
    """Everything one settlement decided."""

    changes: InboxChanges = InboxChanges()
    runs: tuple[RunRecord, ...] = ()
    claims: tuple[Claim, ...] = ()
    finished: tuple[Finished, ...] = ()
    series: tuple[str, ...] = ()
    """Series whose current row changed (their central mirror must follow)."""

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


def next_occurrence(row: InboundMessage, now: datetime) -> InboundMessage | None:
    """The occurrence that follows ``row`` once it finished; None for a one-time row.

    Computed from the row's scheduled time, not from now, so a slow run never shifts
    the series.
    """
    if not row.recurrence:
        return None
    rec = stored_recurrence(row.recurrence)
    base = parse_utc(row.scheduled_for or row.process_after or row.created_at)
    nxt = fmt(next_fire(rec, zone(row.timezone), base))
    return row.model_copy(
        update={
            "id": next_occurrence_id(row), "seq": 0, "created_at": fmt(now),
            "updated_at": fmt(now), "status": MessageStatus.PENDING, "process_after": nxt,
            "scheduled_for": nxt, "series_id": row.series_id or row.id, "tries": 0,
            "error": None,
        }
    )  # fmt: skip


def finish(
    row: InboundMessage, status: MessageStatus, error: str | None, now: datetime, **extra: Any
) -> tuple[list[RowChange], list[InboundMessage]]:
    """End an occurrence; a recurring one hands its recurrence to the next occurrence.

    Clearing the old row's recurrence in the same transaction that inserts the next
    row is what keeps a crash from leaving two live occurrences.
    """
    nxt = next_occurrence(row, now)
    change = RowChange(
        message_id=row.id, at=fmt(now), status=status, error=error,
        clear_recurrence=nxt is not None, **extra,
    )  # fmt: skip
    return [change], [nxt] if nxt is not None else []


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

    def change(self, change: RowChange, row: InboundMessage, run: RunRecord | None) -> None:
        """Change a row without ending it (a retry, a coalesced slot)."""
        self.updates.append(change)
        if run is not None:
            self.runs.append(run)
        self.series.append(row.series_id or row.id)

    def end(
        self, row: InboundMessage, status: MessageStatus, error: str | None, now: datetime,
        run: RunRecord, **extra: Any,
    ) -> None:  # fmt: skip
        """End a row (handing a recurrence on) and record its finished run."""
        changed, new = finish(row, status, error, now, **extra)
        self.updates += changed
        self.inserts += new
        self.runs.append(run)
        self.series.append(row.series_id or row.id)
        assert run.outcome is not None
        self.finished.append(Finished(message_id=row.id, series_id=row.series_id,
                                      outcome=run.outcome, error=run.error))  # fmt: skip

    def plan(self) -> SettlementPlan:
        return SettlementPlan(
            changes=InboxChanges(updates=tuple(self.updates), inserts=tuple(self.inserts)),
            runs=tuple(self.runs), claims=tuple(self.claims), finished=tuple(self.finished),
            series=tuple(self.series),
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
        draft.end(row, status, error, now, run)
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
            draft.end(row, MessageStatus.FAILED, error, now, ended, tries=run.tries)
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
        draft.end(row, MessageStatus.FAILED, error, now, ended, tries=retry.tries)
    return draft.plan()


def plan_catch_up(due: Sequence[InboundMessage], now: datetime) -> SettlementPlan:
    """Apply the catch-up rule to due rows before their runner is woken.

    A recurring occurrence whose later slots have also passed (the host was down) is
    coalesced onto the latest slot; one later than its ``misfire_grace`` is recorded
    ``missed`` (the row ends ``skipped``) and the series moves on. Rows already tried
    and non-task rows are left alone.
    """
    draft = _Draft()
    for row in due:
        if row.kind is not MessageKind.TASK or row.tries > 0:
            continue
        scheduled = parse_utc(row.scheduled_for or row.process_after or row.created_at)
        rec = stored_recurrence(row.recurrence) if row.recurrence else None
        grace = timedelta(seconds=row.misfire_grace) if row.misfire_grace is not None else None
        decision = plan_due(rec, zone(row.timezone), scheduled, now, grace)
        slot = fmt(decision.scheduled_for)
        if decision.action == "missed":
            late = _seconds_words(now - decision.scheduled_for)
            moved = row.model_copy(update={"scheduled_for": slot, "process_after": slot})
            run = RunRecord(message_id=row.id, series_id=row.series_id, scheduled_for=slot,
                            tries=0, finished_at=fmt(now), outcome=RunOutcome.MISSED,
                            error=f"missed: {late} late, past its grace")  # fmt: skip
            draft.end(moved, MessageStatus.SKIPPED, f"missed: {late} late", now, run,
                      scheduled_for=slot, process_after=slot)  # fmt: skip
        elif slot != row.scheduled_for:
            change = RowChange(message_id=row.id, at=fmt(now), scheduled_for=slot,
                               process_after=slot)  # fmt: skip
            draft.change(change, row, None)
    return draft.plan()


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


def _seconds_words(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
