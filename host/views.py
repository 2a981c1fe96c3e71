"""The response models: one shape per answer, shared by ``cronbox --json`` and the HTTP API.

The CLI prints ``model_dump(mode="json")`` of these and the HTTP API returns them (its
OpenAPI document is generated from them), so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from cronbox_shared.models import InboundMessage, MessageStatus, Record, RunOutcome
from cronbox_shared.rows import is_backfill
from cronbox_shared.timeutil import Instant, fmt, parse_utc, zone
from host.reading import describe_recurrence
from host.store.records import Run, Session, TaskView, TokenCount

# Names of UTC itself. A zone that merely sits at offset 0 for now (Europe/London in
# winter) keeps its "+00:00": it is a local time that happens to equal UTC.
UTC_ZONES = frozenset(
    {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu"}
)


def iso_local(when: datetime, tz: ZoneInfo) -> str:
    """ISO-8601 with the local offset, e.g. ``2026-03-09T09:00:00-04:00``.

    In UTC itself the instant ends in ``Z``, as every other UTC instant cronbox prints.
    """
    local = when.astimezone(tz)
    text = local.isoformat(timespec="seconds" if not local.microsecond else "milliseconds")
    return text.removesuffix("+00:00") + "Z" if tz.key in UTC_ZONES else text


class TaskOut(Record):
    """A task series (``task schedule``, ``task list`` and friends; ``/api/tasks``)."""

    id: str
    series_id: str
    session: str
    session_id: str
    status: MessageStatus
    next_run: Instant | None
    next_run_local: str | None
    recurrence: str | None
    recurrence_words: str
    timezone: str
    prompt: str
    has_script: bool
    last_run_at: Instant | None
    last_outcome: RunOutcome | None
    paused_reason: str | None = None
    after_task: str | None = None
    """A chained task: the parent series it runs after."""
    after_outcome: str | None = None
    when_output: str | None = None
    approval: bool = False
    """Each occurrence waits for a person's approval."""

    @classmethod
    def of(cls, view: TaskView) -> TaskOut:
        tz = zone(view.timezone)
        nxt = parse_utc(view.next_run) if view.next_run else None
        return cls(
            id=view.id, series_id=view.series_id, session=view.session,
            session_id=view.session_id, status=view.status,
            next_run=fmt(nxt) if nxt else None,
            next_run_local=iso_local(nxt, tz) if nxt else None,
            recurrence=view.recurrence, recurrence_words=describe_recurrence(view.recurrence),
            timezone=view.timezone, prompt=view.prompt, has_script=view.has_script,
            last_run_at=view.last_run_at, last_outcome=view.last_outcome,
            paused_reason=view.paused_reason, after_task=view.after_task,
            after_outcome=view.after_outcome, when_output=view.when_output,
            approval=view.approval,
        )  # fmt: skip


class RunOut(Run):
    """One past run (``task history``; ``/api/tasks/{id}/runs``)."""

    duration_seconds: float | None
    backfill: bool = False
    """A run of ``task backfill`` (it stands for a past slot of its series)."""

    @classmethod
    def of(cls, run: Run) -> RunOut:
        took = None
        if run.started_at is not None and run.finished_at is not None:
            took = (parse_utc(run.finished_at) - parse_utc(run.started_at)).total_seconds()
        return cls(**run.model_dump(), duration_seconds=took, backfill=is_backfill(run.message_id))


class HistoryOut(Record):
    """A task's past runs, newest first, and the model tokens all its recorded runs used
    (``task history``; ``/api/tasks/{id}/history``)."""

    series_id: str
    runs: list[RunOut]
    input_tokens: int
    output_tokens: int

    @classmethod
    def of(cls, series_id: str, runs: Sequence[Run], tokens: TokenCount) -> HistoryOut:
        return cls(
            series_id=series_id, runs=[RunOut.of(r) for r in runs],
            input_tokens=tokens.input_tokens, output_tokens=tokens.output_tokens,
        )  # fmt: skip


class SessionTokensOut(Record):
    """One session's model tokens today (UTC) and its profile's daily budget."""

    session: str
    session_id: str
    input_tokens: int
    output_tokens: int
    daily_token_budget: int | None


class TokensTodayOut(Record):
    """Model tokens used today (UTC), in total and by session (``status``)."""

    day: str
    input_tokens: int
    output_tokens: int
    sessions: list[SessionTokensOut]
    """Sessions that used tokens today or have a daily budget."""

    @classmethod
    def of(
        cls, day: str, used: Sequence[tuple[Session, TokenCount]], budgets: dict[str, int | None]
    ) -> TokensTodayOut:
        total = sum((tokens for _, tokens in used), TokenCount())
        sessions = [
            SessionTokensOut(
                session=s.name, session_id=s.id, input_tokens=t.input_tokens,
                output_tokens=t.output_tokens, daily_token_budget=budgets.get(s.agent),
            )
            for s, t in used
            if t.total or budgets.get(s.agent) is not None
        ]  # fmt: skip
        return cls(day=day, input_tokens=total.input_tokens, output_tokens=total.output_tokens,
                   sessions=sessions)  # fmt: skip


class RunOutput(RunOut):
    """One run with the agent's replies to it (``task output``)."""

    replies: list[str]


class MessageOut(InboundMessage):
    """A message just queued for a session (``send``; ``POST /api/sessions/{name}/messages``)."""

    session: str


class RunQueued(Record):
    """A manual run just queued (``task run``; ``POST /api/tasks/{id}/run``)."""

    id: str
    series_id: str | None
    process_after: Instant | None


class ErrorOut(BaseModel):
    """Every refused HTTP request: one sentence that says what to fix."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    error: str


class HealthOut(Record):
    """``GET /health``: whether the sweep is keeping up."""

    status: Literal["ok", "stalled", "stopping"]
    uptime_seconds: float
    sweep_lag_seconds: float
    """Seconds since the sweep last completed a pass (since the start before the first)."""
    last_sweep: Instant | None
    live_runners: int
    pool_size: int
    waiting: int
    awaiting_approval: int = 0
    """Occurrences waiting for a person's approval (they hold no pool slot)."""
    problems: tuple[dict[str, Any], ...] = ()


class VersionOut(Record):
    """``GET /version`` (and ``cronbox --version``'s figures)."""

    cronbox: str
    python: str
    runtime: str
    engine: str | None
    """The docker engine's version with the docker runtime; null for ``process``."""


class JobOut(Record):
    """One of the host's background jobs (``cronbox jobs``; ``/api/scheduler``)."""

    name: str
    schedule: str
    enabled: bool
    running: bool
    last_run_at: Instant | None
    last_finished_at: Instant | None
    last_ok: bool | None
    last_result: str | None
    next_run_at: Instant | None


class JobTrigger(BaseModel):
    """``POST /api/scheduler``: run one job now."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)

    action: Literal["trigger"]
    job: str
