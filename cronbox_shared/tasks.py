"""Validation of task requests: the one implementation the store, CLI, HTTP and MCP share.

Every check raises an InvalidInput subclass whose message is one sentence that says what
was wrong and how to fix it. Nothing here writes anything.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cronbox_shared.chains import check_on_timeout, check_outcome, check_when_output
from cronbox_shared.durations import UNITS, duration_seconds
from cronbox_shared.errors import (
    InvalidInput,
    InvalidTime,
    NotATime,
    TimeInPast,
    TooManyWakes,
    shown,
)
from cronbox_shared.models import MAX_PROMPT_BYTES, MAX_SCRIPT_BYTES, InboundMessage, MissedPolicy
from cronbox_shared.policies import (
    MAX_CATCHUP_LIMIT,
    MAX_JITTER,
    MAX_MAX_FAILURES,
    due_at,
    smallest_gap,
)
from cronbox_shared.recurrence import (
    Recurrence,
    count_fires,
    fire_times,
    next_fire,
    parse_recurrence,
    recurrence_warnings,
    stored_recurrence,
)
from cronbox_shared.timeutil import fmt, local_to_utc, parse_utc, zone

TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A one-time instant this far in the past is still accepted as "due now": clocks of
# the agent and the host differ a little, and "now" typed by a person is a moment old.
PAST_SLACK = timedelta(seconds=60)
# A request applied late (an agent's, carried by its runner's outbox) is judged by when
# it was asked, at most this long ago: the asking time is the container's word.
MAX_APPLY_DELAY = timedelta(days=1)
MAX_GRACE = 366 * 86400
MAX_TIMEOUT = 86400
# Relative times beyond this are typing mistakes, and beyond datetime's range anyway.
MAX_AHEAD = timedelta(days=366 * 100)
MAX_NOTE_CHARS = 500

_WORDS = {
    "second": "s", "seconds": "s", "sec": "s", "secs": "s",
    "minute": "m", "minutes": "m", "min": "m", "mins": "m",
    "hour": "h", "hours": "h", "hr": "h", "hrs": "h",
    "day": "d", "days": "d", "week": "w", "weeks": "w",
}  # fmt: skip
_IN_PHRASE = re.compile(r"^in\s+(\d+)\s*([a-z]+)$")


def new_task_id() -> str:
    """A fresh, URL-safe task id."""
    return "task-" + secrets.token_hex(6)


def parse_duration(text: str) -> timedelta | None:
    """Parse ``30m``, ``1h30m``, ``90s``, ``2d``, ``1w``; None when ``text`` is not such a
    duration (the grammar of ``cronbox_shared.durations``, also used by ``@every``)."""
    seconds = duration_seconds(text)
    if seconds is None or seconds > MAX_AHEAD.total_seconds():
        return None
    return timedelta(seconds=seconds)


def _relative_seconds(lowered: str) -> int | None:
    """Seconds ahead for ``+10m``, ``in 2 hours`` or ``in 2h``; None for anything else."""
    if lowered.startswith("+"):
        return duration_seconds(lowered[1:])
    match = _IN_PHRASE.match(lowered)
    if match and match.group(2) in _WORDS:
        return int(match.group(1)) * UNITS[_WORDS[match.group(2)]]
    if lowered.startswith("in "):
        return duration_seconds(lowered[3:])
    return None


def parse_when(text: str, tz: ZoneInfo, now: datetime, field: str = "processAfter") -> datetime:
    """Read a time given by a person or an agent, as aware UTC.

    ``Z`` or an offset is taken as is; a naive ``2026-01-15T21:00:00`` is wall-clock time
    in ``tz`` (a time in a spring-forward gap resolves to the transition); ``now``,
    ``+10m`` and ``in 2 hours`` are relative to ``now``.
    """
    raw = text.strip()
    lowered = raw.lower()
    if lowered == "now":
        return now
    ahead = _relative_seconds(lowered)
    if ahead is not None:
        if ahead > MAX_AHEAD.total_seconds():
            raise InvalidTime(
                f'{field} "{text[:40]}" is too far ahead; give a time within 100 years'
            )
        return now + timedelta(seconds=ahead)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise NotATime(field, text, tz.key) from None
    if parsed.tzinfo is None:
        return local_to_utc(parsed, tz)
    return parsed.astimezone(now.tzinfo)


def _check_text(field: str, value: str | None, limit: int, required: bool) -> None:
    if value is None or not value.strip():
        if required:
            raise InvalidInput(f"{field} is empty; say what the agent should do when the task runs")
        return
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{field} is not valid Unicode text (it holds a lone surrogate); send it as UTF-8"
        ) from None
    if size > limit:
        raise InvalidInput(
            f"{field} is {size:,} bytes, over the limit of {limit:,} bytes "
            f"({limit // 1024} KiB); shorten it or keep the bulk in a workspace file"
        )


def validation_sentence(
    exc: ValidationError, error: type[InvalidInput] = InvalidInput, skip: int = 0
) -> InvalidInput:
    """The first error of ``exc`` as ``field: problem``, its location without the first
    ``skip`` parts (a union's tag); a hostile field name is cut short."""
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(shown(p) for p in err["loc"][skip:]) or "request"
    return error(f"{where}: {err['msg']}")


class StrictRequest(BaseModel):
    """A task request from outside: strict, frozen, no unknown fields."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, strict=True, defer_build=True
    )

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        """Validate raw input, turning type errors into one InvalidInput sentence."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_sentence(exc) from None


MissedName = Literal["latest", "all", "skip"]


class _Policies(StrictRequest):
    """The scheduling policies of a recurring task (see ``cronbox_shared.policies``)."""

    missed_policy: MissedName | None = Field(default=None, alias="missedPolicy")
    catchup_limit: int | None = Field(
        default=None, alias="catchupLimit", ge=1, le=MAX_CATCHUP_LIMIT
    )
    max_failures: int | None = Field(default=None, alias="maxFailures", ge=0, le=MAX_MAX_FAILURES)
    jitter: int | None = Field(default=None, ge=0, le=MAX_JITTER)


POLICY_FIELDS = ("missed_policy", "catchup_limit", "max_failures", "jitter")


class ScheduleRequest(_Policies):
    """A request to schedule a task, as it arrives from the CLI, HTTP, MCP or a container."""

    id: str | None = Field(default=None, alias="taskId")
    prompt: str
    process_after: str | None = Field(default=None, alias="processAfter")
    recurrence: str | None = None
    script: str | None = None
    timezone: str | None = None
    misfire_grace: int | None = Field(default=None, alias="misfireGrace", ge=0, le=MAX_GRACE)
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT)
    ignore_quiet: bool | None = Field(default=None, alias="ignoreQuiet")
    after_task: str | None = Field(default=None, alias="afterTask")
    after_outcome: str | None = Field(default=None, alias="afterOutcome")
    when_output: str | None = Field(default=None, alias="whenOutput")
    approval: bool | None = None
    approval_timeout: str | None = Field(default=None, alias="approvalTimeout")
    on_timeout: str | None = Field(default=None, alias="onTimeout")
    isolated: bool | None = None


class UpdateRequest(_Policies):
    """A change to a task; a field left out stays, an explicit null clears it (a cleared
    policy is back at its default)."""

    task_id: str = Field(alias="taskId")
    prompt: str | None = None
    process_after: str | None = Field(default=None, alias="processAfter")
    recurrence: str | None = None
    script: str | None = None
    ignore_quiet: bool | None = Field(default=None, alias="ignoreQuiet")
    isolated: bool | None = None


class OperatorUpdateRequest(UpdateRequest):
    """An update from the operator (the CLI): an UpdateRequest that may also change the
    run timeout, the misfire grace and the timezone.

    Agents send plain UpdateRequests (``update_task`` subclasses that, not this), so these
    fields stay out of what a container may ask for; an explicit null restores the
    default (timeout, grace). A new timezone keeps the stored instants: a recurring task's
    next run is recomputed from its recurrence in the new zone, a one-time run stays put.
    """

    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT)
    misfire_grace: int | None = Field(default=None, alias="misfireGrace", ge=0, le=MAX_GRACE)
    timezone: str | None = None


_SETTINGS = ("timeout", "misfire_grace", "timezone")


@dataclass(frozen=True)
class ValidTask:
    """A schedule request that passed every check, with its first run computed."""

    id: str
    prompt: str
    script: str | None
    timezone: str
    recurrence: Recurrence | None
    first_run: datetime
    misfire_grace: int | None
    timeout: int | None
    missed_policy: MissedPolicy | None = None
    catchup_limit: int | None = None
    max_failures: int | None = None
    jitter: int | None = None
    ignore_quiet: bool = False
    after_task: str | None = None
    """The parent series of a chained task (it waits, and has no first run of its own)."""
    after_outcome: str | None = None
    when_output: str | None = None
    approval: bool = False
    approval_timeout: int | None = None
    on_timeout: str | None = None
    isolated: bool = False

    @property
    def content(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "script": self.script}


def check_task_id(task_id: str) -> str:
    if not TASK_ID.match(task_id):
        raise InvalidInput(
            f'task id "{task_id[:80]}" is not valid; use 1-64 letters, digits, "-", "_" or "."'
        )
    return task_id


def asked_when(asked_at: datetime | None, now: datetime) -> datetime:
    """The instant a request counts as asked at: ``asked_at`` (when the agent asked, for a
    request applied late) kept between ``now - MAX_APPLY_DELAY`` and ``now``."""
    if asked_at is None:
        return now
    return min(max(asked_at, now - MAX_APPLY_DELAY), now)


def validate_schedule(
    req: ScheduleRequest, *, default_tz: str, now: datetime, min_interval: timedelta,
    asked_at: datetime | None = None,
) -> ValidTask:  # fmt: skip
    """Check a schedule request completely and compute its first run.

    ``asked_at`` is when the request was made, for one applied later (an agent's request
    delivered from its runner's outbox): a one-time time that was in the future then is
    not "in the past" now; it runs at once.
    """
    asked = asked_when(asked_at, now)
    _check_text("prompt", req.prompt, MAX_PROMPT_BYTES, required=True)
    chain, gate = check_chain(req), check_approval(req)
    _check_text("script", req.script, MAX_SCRIPT_BYTES, required=False)
    tz_name = req.timezone or default_tz
    tz = zone(tz_name, "the task's timezone" if req.timezone else "the session's timezone")
    rec = parse_recurrence(req.recurrence, min_interval) if req.recurrence else None
    if chain:
        first = now  # a chained task waits for its parent and has no run of its own
    elif req.process_after is not None:
        first = parse_when(req.process_after, tz, now)
        if rec is None and first < asked - PAST_SLACK:
            raise TimeInPast(
                f"processAfter {fmt(first)} is in the past (now is {fmt(now)}); "
                "give a future time, or add a recurrence for a repeating task",
                given=req.process_after, when=first, now=now, tz=tz.key,
            )  # fmt: skip
        first = max(first, now) if rec is None else first
    elif rec is not None:
        first = next_fire(rec, tz, now)
    else:
        raise InvalidInput(
            "a task needs processAfter (when to run once) or recurrence (a cron "
            'expression such as "0 9 * * MON-FRI"), or both'
        )
    policies = check_policies(req, rec, tz, now)
    return ValidTask(
        id=check_task_id(req.id) if req.id else new_task_id(),
        prompt=req.prompt,
        script=req.script or None,
        timezone=tz.key,
        recurrence=rec,
        first_run=first,
        misfire_grace=req.misfire_grace,
        timeout=req.timeout,
        ignore_quiet=bool(req.ignore_quiet),
        isolated=bool(req.isolated),
        **policies,
        **chain,
        **gate,
    )


MAX_APPROVAL_TIMEOUT = timedelta(days=30)


def check_chain(req: ScheduleRequest) -> dict[str, Any]:
    """The chain fields of a request, checked (empty for a task that is not chained).

    A chained task runs whenever its parent finishes, so it takes neither a time nor a
    recurrence of its own; ``afterOutcome`` and ``whenOutput`` need ``afterTask``.
    """
    if req.after_task is None:
        _only_with({"afterOutcome": req.after_outcome, "whenOutput": req.when_output},
                   "a chained task; add afterTask (the parent task id)")  # fmt: skip
        return {}
    check_task_id(req.after_task)
    if req.process_after is not None or req.recurrence is not None:
        raise InvalidInput(
            "a chained task runs each time its parent finishes, so it takes no "
            "processAfter or recurrence; leave them out (or drop afterTask)"
        )
    return {
        "after_task": req.after_task,
        "after_outcome": check_outcome(req.after_outcome).value,
        "when_output": check_when_output(req.when_output),
    }


def _only_with(given: dict[str, object], what: str) -> None:
    """Refuse the fields of ``given`` that were set: they apply only to ``what``."""
    named = [name for name, value in given.items() if value is not None]
    if named:
        raise InvalidInput(f"{', '.join(named)} apply only to {what} or leave them out")


def check_approval(req: ScheduleRequest) -> dict[str, Any]:
    """The approval gate of a request, checked (empty without ``approval``).

    ``approvalTimeout`` is a duration such as ``1h`` (at most 30 days; none: it waits
    until answered); ``onTimeout`` is reject (the default) or approve.
    """
    if not req.approval:
        _only_with({"approvalTimeout": req.approval_timeout, "onTimeout": req.on_timeout},
                   "a task that needs approval; add approval (--approval)")  # fmt: skip
        return {}
    timeout = None
    if req.approval_timeout is not None:
        span = parse_duration(req.approval_timeout)
        if span is None or span <= timedelta(0) or span > MAX_APPROVAL_TIMEOUT:
            raise InvalidInput(
                f'approvalTimeout "{req.approval_timeout[:40]}" is not a duration between '
                '1s and 30d; write for example "1h" or "30m"'
            )
        timeout = int(span.total_seconds())
    elif req.on_timeout is not None:
        raise InvalidInput("onTimeout needs approvalTimeout (how long to wait); add it")
    return {
        "approval": True,
        "approval_timeout": timeout,
        "on_timeout": check_on_timeout(req.on_timeout).value if timeout else None,
    }


def check_policies(
    req: _Policies, rec: Recurrence | None, tz: ZoneInfo, now: datetime,
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The policy columns a request sets, checked against the task's recurrence.

    ``current`` holds the stored values (an update); a field the request leaves out
    keeps its stored value. Policies concern recurring tasks only; ``catchupLimit``
    only ``missedPolicy: all``; a jitter must be shorter than the recurrence's period.
    """
    given = {name: getattr(req, name) for name in POLICY_FIELDS if name in req.model_fields_set}
    merged = {**(current or dict.fromkeys(POLICY_FIELDS)), **given}
    named = [alias for name, alias in POLICY_ALIASES.items() if given.get(name) is not None]
    if rec is None:
        if named:
            raise InvalidInput(
                f"{', '.join(named)} apply only to a recurring task; add a recurrence or "
                "leave them out"
            )
        # A task made one-time drops the policies it had.
        return {name: None for name, value in (current or {}).items() if value is not None}
    stale_limit = merged["catchup_limit"] is not None and "catchup_limit" not in given
    if stale_limit and merged["missed_policy"] != MissedPolicy.ALL:
        # Leaving "all" drops the limit that only "all" uses.
        merged["catchup_limit"] = given["catchup_limit"] = None
    if merged["catchup_limit"] is not None and merged["missed_policy"] != MissedPolicy.ALL:
        raise InvalidInput(
            'catchupLimit applies only with missedPolicy "all" (which replays missed slots); '
            'set missedPolicy to "all" or leave catchupLimit out'
        )
    if rec is not None and merged["jitter"]:
        gap = smallest_gap(rec, tz, now)
        if timedelta(seconds=merged["jitter"]) >= gap:
            raise InvalidInput(
                f"jitter of {merged['jitter']} s is not shorter than the "
                f"{int(gap.total_seconds())} s between runs of this recurrence; "
                "give a smaller jitter"
            )
    out = dict(merged if current is None else given)
    if out.get("missed_policy") is not None:
        out["missed_policy"] = MissedPolicy(out["missed_policy"])
    return out


POLICY_ALIASES = {"missed_policy": "missedPolicy", "catchup_limit": "catchupLimit",
                   "max_failures": "maxFailures", "jitter": "jitter"}  # fmt: skip


MAX_BACKFILL = 100
COST_HINT = (
    "this task runs more than twice a day without a gate script, and every run wakes the "
    "agent (a model call); if most runs need no judgement, add a gate script that wakes "
    "it only when there is something to do"
)


def fires_more_than_twice_a_day(rec: Recurrence, tz: ZoneInfo, now: datetime) -> bool:
    """Whether ``rec`` fires three times or more within the next day."""
    third = fire_times(rec, tz, now, 3)[-1:]
    return bool(third) and third[0] - now < timedelta(days=1)


# Where a session's wake budget is recorded in its inbox (the host and the MCP server
# both check it).
WAKES_KEY = "max_wakes_per_day"
MAX_WAKES_PER_DAY = 100_000
# How far a refused task's own wakes are counted for the sentence that refuses it.
WAKES_SHOWN = 10_000


def wakes_per_day(
    recurrence: str | None, has_script: bool, tz: ZoneInfo, now: datetime, cap: int
) -> int:
    """How often a task wakes the agent in the day after ``now``, counted up to ``cap``.

    A task with a gate script counts 0 (its gate decides each time, without a model
    call); a one-time task counts 1; a recurring one its fires in that day.
    """
    if has_script:
        return 0
    if not recurrence:
        return 1
    return count_fires(stored_recurrence(recurrence), tz, now, now + timedelta(days=1), cap)


def check_wakes(
    adding: int, others: Sequence[tuple[str | None, bool, str]], limit: int | None,
    now: datetime, new: tuple[str | None, bool, ZoneInfo] | None = None,
) -> None:  # fmt: skip
    """Refuse a task that would take its session past ``limit`` wakes a day (None: no
    limit). ``adding`` is the new task's wakes (counted up to ``limit + 1``), ``new`` its
    (recurrence, has gate script, zone) to count further for the refusal; ``others``
    holds (recurrence, has gate script, zone) of the session's pending tasks."""
    if limit is None or adding == 0:
        return
    existing = 0
    counted: dict[tuple[str | None, bool, str], int] = {}  # tasks often share a schedule
    for key in others:
        if key not in counted:
            recurrence, has_script, tz = key
            counted[key] = wakes_per_day(recurrence, has_script, zone(tz), now, limit + 1)
        existing += counted[key]
        if existing > limit:
            break
    if existing + adding > limit:
        shown = wakes_per_day(*new, now, WAKES_SHOWN) if new else adding
        times = f"more than {WAKES_SHOWN:,} times" if shown >= WAKES_SHOWN else _times(shown)
        already = str(existing) if existing <= limit else f"more than {limit}"
        raise TooManyWakes(times, already, limit)


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def wake_limit(value: str | None) -> int | None:
    """A session's wake budget as recorded (None or unreadable: no limit)."""
    try:
        limit = int(value) if value else 0
    except ValueError:
        return None
    return limit if limit > 0 else None


def schedule_notes(
    recurrence: str | None, has_script: bool, tz: ZoneInfo, now: datetime
) -> list[str]:
    """Sentences worth telling whoever scheduled (or changed) a task: what its
    recurrence does that may surprise (``recurrence_warnings``), and the cost hint for
    an ungated task that wakes the agent more than twice a day (nanoclaw's guidance)."""
    if not recurrence:
        return []
    rec = stored_recurrence(recurrence)
    notes = list(recurrence_warnings(rec))
    if not has_script and fires_more_than_twice_a_day(rec, tz, now):
        notes.append(COST_HINT)
    return notes


def backfill_slots(
    rec: Recurrence, tz: ZoneInfo, start: str, end: str, now: datetime
) -> list[datetime]:
    """The slots of ``rec`` from ``start`` to ``end`` (both included, both read like
    ``--at``), for a backfill; the window must be in the past and hold 1 to 100 slots."""
    first = parse_when(start, tz, now, field="--from")
    last = parse_when(end, tz, now, field="--to")
    if last <= first:
        raise InvalidInput(
            f"--to {fmt(last)} is not after --from {fmt(first)}; give the window's start first"
        )
    if last > now:
        raise InvalidInput(
            f"--to {fmt(last)} is in the future (now is {fmt(now)}); a backfill runs past "
            "slots only, and the schedule runs the rest"
        )
    fires = fire_times(rec, tz, first - timedelta(microseconds=1), MAX_BACKFILL + 1)
    slots = [f for f in fires if f <= last]
    if not slots:
        raise InvalidInput(
            f"no slot of this task falls between {fmt(first)} and {fmt(last)}; widen the window"
        )
    if len(slots) > MAX_BACKFILL:
        raise InvalidInput(
            f"the window holds more than {MAX_BACKFILL} slots of this task; give a shorter one"
        )
    return slots


def check_note(note: str | None, what: str = "pause note") -> str | None:
    """A pause (or decision) note: at most 500 characters, one line; None or blank means
    no note."""
    if note is None or not note.strip():
        return None
    if len(note) > MAX_NOTE_CHARS or "\n" in note:
        raise InvalidInput(
            f"the {what} must be one line of at most {MAX_NOTE_CHARS} characters; shorten it"
        )
    return note.strip()


@dataclass(frozen=True)
class TaskChanges:
    """What an update does to the live occurrence; None fields stay as they are."""

    content: dict[str, Any] | None
    recurrence: str | None
    recurrence_changed: bool
    process_after: datetime | None
    """The live occurrence's new slot (its scheduled time)."""
    settings: dict[str, Any]
    """Columns set as given: ``timeout``, ``misfire_grace``, ``timezone`` (operator only)
    and the scheduling policies (``missed_policy``, ``catchup_limit``, ``max_failures``,
    ``jitter``)."""
    due: datetime | None = None
    """When the live occurrence is due: its slot plus its jitter (None: unchanged)."""

    def row_fields(self) -> dict[str, Any]:
        """The ``messages_in`` columns this update sets on the live occurrence."""
        fields: dict[str, Any] = {}
        if self.content is not None:
            fields["content"] = self.content
        if self.recurrence_changed:
            fields["recurrence"] = self.recurrence
        if self.process_after is not None:
            fields["scheduled_for"] = fmt(self.process_after)
        if self.due is not None:
            fields["process_after"] = fmt(self.due)
        return {**fields, **self.settings}


def validate_update(
    req: UpdateRequest, current: InboundMessage, *, now: datetime, min_interval: timedelta,
    asked_at: datetime | None = None,
) -> TaskChanges:  # fmt: skip
    """Check an update against the live occurrence and work out its new schedule.

    Changing ``recurrence`` or ``processAfter`` recomputes when the live occurrence runs,
    and so does a new timezone for a recurring task (its recurrence is evaluated in the
    new zone from now on; a naive ``processAfter`` given with it is read in that zone).
    """
    given = req.model_fields_set
    settings: dict[str, Any] = {}
    if isinstance(req, OperatorUpdateRequest):
        settings = {name: getattr(req, name) for name in _SETTINGS if name in given}
    for flag in ("ignore_quiet", "isolated"):
        if flag in given:
            settings[flag] = bool(getattr(req, flag))
    if settings.get("timezone", "") is None:
        raise InvalidInput("timezone cannot be cleared; give an IANA zone such as Europe/Berlin")
    if "timezone" in settings:
        settings["timezone"] = zone(settings["timezone"]).key
    rezoned = settings.get("timezone", current.timezone) != current.timezone
    content = dict(current.content)
    if "prompt" in given:
        if req.prompt is None:
            raise InvalidInput("prompt cannot be cleared; give the new instructions instead")
        _check_text("prompt", req.prompt, MAX_PROMPT_BYTES, required=True)
        content["prompt"] = req.prompt
    if "script" in given:
        _check_text("script", req.script, MAX_SCRIPT_BYTES, required=False)
        content["script"] = req.script or None
    tz = zone(settings.get("timezone", current.timezone), "the task's timezone")
    recurrence = current.recurrence
    rec: Recurrence | None = None
    if "recurrence" in given:
        recurrence = req.recurrence or None
    if recurrence:
        rec = parse_recurrence(recurrence, min_interval)
    process_after: datetime | None = None
    if "process_after" in given and req.process_after is not None:
        process_after = parse_when(req.process_after, tz, now)
        if rec is None and process_after < asked_when(asked_at, now) - PAST_SLACK:
            raise TimeInPast(
                f"processAfter {fmt(process_after)} is in the past (now is {fmt(now)}); "
                "give a future time",
                given=req.process_after, when=process_after, now=now, tz=tz.key,
            )  # fmt: skip
        process_after = max(process_after, now) if rec is None else process_after
    elif "process_after" in given or (("recurrence" in given or rezoned) and rec is not None):
        if rec is None:
            raise InvalidInput(
                "a task needs processAfter or recurrence; this update would leave neither"
            )
        process_after = next_fire(rec, tz, now)
    stored = {name: getattr(current, name) for name in POLICY_FIELDS}
    policies = check_policies(req, rec, tz, now, stored)
    settings.update(policies)
    series = current.series_id or current.id
    jitter = policies.get("jitter", current.jitter) if rec is not None else None
    slot = process_after
    if slot is None and "jitter" in policies and current.scheduled_for:
        slot = parse_utc(current.scheduled_for)
    return TaskChanges(
        content=content if {"prompt", "script"} & given else None,
        recurrence=recurrence,
        recurrence_changed="recurrence" in given,
        process_after=process_after,
        settings=settings,
        due=due_at(series, slot, jitter) if slot is not None else None,
    )


def resume_at(row: InboundMessage, now: datetime) -> datetime | None:
    """Where a paused occurrence runs once resumed; None when its time stands.

    A series resumed after its slot has passed continues at its next slot rather than
    firing for the missed one; a one-time task whose time has passed runs at once.
    """
    if row.process_after is None or parse_utc(row.process_after) >= now:
        return None
    if row.recurrence is None:
        return now
    return next_fire(stored_recurrence(row.recurrence), zone(row.timezone), now)
