"""Recurrence rules: parsing, describing and DST-correct evaluation (SPEC §5).

A recurrence is a 5-field cron expression (names, ``0``/``7`` for Sunday, ranges, steps,
lists), a shorthand (``@daily`` …) or ``@every <duration>``. Everything here is a pure
function of its inputs.

Cron is evaluated the way Debian's cron(8) does it, in the task's zone:

* Matching wall-clock times are found from the expanded fields, jumping month, day,
  hour, minute, and each is mapped to UTC; zone transitions are looked for only where
  one is close. croniter only double-checks an expression when it is parsed.
* *Fixed-time* jobs (minute and hour fields both not starting with ``*``) fire once a
  day as the wall clock says: a wall time inside a spring-forward gap fires once, at the
  transition instant; a wall time inside a repeated fall-back hour fires once, on its
  first pass.
* Other jobs (``*/15 * * * *``, ``@hourly``) follow real time: gap wall times do not
  exist and are skipped, and a repeated hour fires in both passes.
* Day of month and day of week follow the Vixie rule: when both are restricted (neither
  starts with ``*``) a day matching either fires.

``@every`` intervals are real time, anchored on the previous fire.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import islice, pairwise
from typing import Any, Literal, NoReturn
from zoneinfo import ZoneInfo

from cronbox_shared.durations import UNIT_HINT, duration_seconds
from cronbox_shared.errors import InvalidRecurrence
from cronbox_shared.timeutil import find_transition, is_ambiguous, local_to_utc

SHORTHANDS: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: plan_due stops counting coalesced grid times here; ``skipped_fires`` never exceeds it.
SKIPPED_FIRES_CAP = 1_000

# How far ahead evaluation looks for a fall-back. A second-pass fire can only come next
# when a fall-back is less than its shift ahead; shifts are at most a day (most are an
# hour), and tzdata's offset changes are always more than four days apart, so one look
# this far ahead finds the fall-back that matters and no other change beside it.
_WINDOW = timedelta(days=2)
_NO_SHIFT = timedelta(0)
# Takes "strictly after" to "at or after" for whole-minute wall times.
_TICK = timedelta(microseconds=1)
# Naive reference for validity and minimum-gap checks (a leap year, starting a Monday).
_REFERENCE = datetime(2024, 1, 1)
# How many years of firing days the minimum-gap check looks at.
_GAP_CHECK_YEARS = 4

_FIELD_SUMMARY = "minute hour day-of-month month day-of-week"
_SYNTAX_HINT = "use a number, a range such as 1-5, a step such as */15, or a list such as 1,15"
_SHORTHAND_LIST = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
_NUMBER = re.compile(r"\d+", re.ASCII)

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    label: str
    low: int
    high: int
    names: Mapping[str, int]
    name_hint: str = ""


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field(
        "month",
        1,
        12,
        {name: i for i, name in enumerate(_MONTHS, start=1)},
        "is not a month name or number; use JAN-DEC or 1-12",
    ),
    _Field(
        "day of week",
        0,
        7,
        {name: i for i, name in enumerate(_DAYS)},
        "is not a day name or number; use SUN-SAT or 0-7 (0 and 7 are Sunday)",
    ),
)


@dataclass(frozen=True)
class Recurrence:
    """A parsed recurrence. Build it with :func:`parse_recurrence`, never by hand."""

    expr: str
    """The expression as given, stripped (runs of whitespace become one space)."""
    every: timedelta | None
    """The interval of an ``@every`` recurrence; None for cron."""
    fixed_time: bool
    """Cron whose minute and hour fields are both fixed (neither starts with ``*``)."""

    @property
    def cron(self) -> str | None:
        """The 5-field cron expression (shorthands expanded); None for ``@every``."""
        if self.every is not None:
            return None
        return SHORTHANDS.get(self.expr.lower(), self.expr)

    def describe(self) -> str:
        """The recurrence in words, e.g. ``At 09:00, Monday through Friday``."""
        if self.every is not None:
            return f"every {_duration_words(self.every)}"
        # Imported here: only a description needs it, and it is slow to import.
        from cron_descriptor import ExpressionDescriptor, Options

        options = Options()
        options.use_24hour_time_format = True
        return str(ExpressionDescriptor(self.cron, options).get_description())


@dataclass(frozen=True)
class RunDecision:
    """What to do with an occurrence that is due now."""

    action: Literal["run", "missed"]
    scheduled_for: datetime
    """The grid time this run (or miss) stands for, after coalescing (aware UTC)."""
    skipped_fires: int
    """Grid times folded into this one by coalescing (capped at SKIPPED_FIRES_CAP)."""


def parse_recurrence(
    expr: str, min_interval: timedelta = timedelta(seconds=60), *, confirm: bool = True
) -> Recurrence:
    """Parse and validate a recurrence expression.

    Raises InvalidRecurrence with one sentence naming the expression, what is wrong and
    how to fix it; also when the recurrence can fire more often than ``min_interval``
    (for cron, measured on the local wall clock). ``confirm`` has croniter check a cron
    expression too (slow to import: an expression checked when it was stored skips it).
    """
    text = " ".join(expr.split())
    if not text:
        raise InvalidRecurrence(
            'recurrence "" is empty; write a 5-field cron expression such as "0 9 * * *" '
            'or an interval such as "@every 1h"'
        )
    if text.startswith("@"):
        head, _, rest = text.partition(" ")
        key = head.lower()
        if key == "@every":
            every = _parse_duration(text, rest)
            if every < min_interval:
                raise InvalidRecurrence(
                    f'recurrence "{text}" fires every {_seconds(every)}, more often than '
                    f"the minimum of {_seconds(min_interval)}; use a longer interval"
                )
            return Recurrence(text, every, fixed_time=False)
        if key == "@reboot":
            raise _error(
                text,
                "@reboot is not supported because cronbox schedules by the clock; "
                'use a time-based expression such as "@daily"',
            )
        if key not in SHORTHANDS:
            raise _error(
                text,
                f'unknown shorthand "{head}"; use {_SHORTHAND_LIST} or @every <duration>',
            )
        if rest:
            raise _error(text, f'{head} takes nothing after it; write just "{head}"')
    cron = SHORTHANDS.get(text.lower(), text)
    parts = cron.split(" ")
    if len(parts) != 5:
        extra = "; seconds and year fields are not supported" if len(parts) > 5 else ""
        raise _error(text, f"expected 5 fields ({_FIELD_SUMMARY}), got {len(parts)}{extra}")
    values = [_expand_field(text, part, field) for part, field in zip(parts, _FIELDS, strict=True)]
    if confirm:
        _confirm_with_croniter(text, cron)
    fixed = not parts[0].startswith("*") and not parts[1].startswith("*")
    if min_interval > timedelta(minutes=1):
        _check_min_gap(text, cron, values[0], values[1], min_interval)
    return Recurrence(text, None, fixed_time=fixed)


def recurrence_warnings(rec: Recurrence) -> tuple[str, ...]:
    """What a valid recurrence does that its writer may not expect, one sentence each.

    A step larger than its range (``*/90`` in the minute field) is accepted, as cron
    accepts it, but picks only the first value of the range: ``*/90 * * * *`` fires at
    minute 0 of every hour, not every 90 minutes.
    """
    cron = rec.cron
    if cron is None:
        return ()
    warnings = []
    for part, field in zip(cron.split(" "), _FIELDS, strict=True):
        for item in part.split(","):
            base, slash, step_text = item.partition("/")
            if not slash:
                continue
            low, high = field.low, field.high
            if base != "*":
                first, _, second = base.partition("-")
                low, high = _value(cron, part, first, field), _value(cron, part, second, field)
            if int(step_text) > high - low:
                warnings.append(
                    f'the {field.label} step "{item}" is larger than its range ({low}-{high}), '
                    f"so it fires only at {field.label} {low}"
                )
    return tuple(warnings)


def stored_recurrence(expr: str) -> Recurrence:
    """Read an expression that was validated when it was stored: neither the interval
    nor croniter checks it again (a listing describes its rows without importing it)."""
    return parse_recurrence(expr, timedelta(0), confirm=False)


def next_fire(rec: Recurrence, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire strictly after the aware instant ``after``, as aware UTC."""
    return next(_fires(rec, tz, after))


def fire_times(rec: Recurrence, tz: ZoneInfo, after: datetime, n: int) -> list[datetime]:
    """The first ``n`` fires strictly after ``after``, strictly increasing, aware UTC."""
    return list(islice(_fires(rec, tz, after), max(n, 0)))


def count_fires(rec: Recurrence, tz: ZoneInfo, after: datetime, until: datetime, cap: int) -> int:
    """How many fires fall in ``(after, until]``, counted up to ``cap`` (cost follows the
    count, never more than ``cap`` fires are computed)."""
    count = 0
    for fire in _fires(rec, tz, after):
        if fire > _utc(until) or count >= cap:
            break
        count += 1
    return count


def latest_fire_at_or_before(
    rec: Recurrence, tz: ZoneInfo, start: datetime, now: datetime
) -> datetime:
    """The latest fire ``t`` with ``start <= t <= now``, where ``start`` is a fire time.

    Returns ``start`` when the next fire after it is later than ``now``. Cost does not
    grow with ``now - start``: the search restarts a little before ``now`` and widens
    only when that window holds no fire.
    """
    start = _utc(start)
    now = _utc(now)
    if now <= start:
        return start
    if rec.every is not None:
        return start + ((now - start) // rec.every) * rec.every
    span = timedelta(hours=6)
    while True:
        low = max(now - span, start)
        latest: datetime | None = None
        for fire in _fires(rec, tz, low):
            if fire > now:
                break
            latest = fire
        if latest is not None:
            return latest
        if low == start:
            return start
        span *= 4


def slots_through(
    rec: Recurrence, tz: ZoneInfo, start: datetime, end: datetime, keep: int
) -> tuple[list[datetime], int]:
    """The newest ``keep`` fires ``t`` with ``start <= t <= end`` (``start`` is a fire time),
    oldest first, and how many there are in all (counted up to SKIPPED_FIRES_CAP, beyond
    which the count is a lower bound).

    Cost follows ``keep``, not ``end - start``: past the cap, the search restarts a
    little before ``end`` and widens until it holds ``keep`` fires.
    """
    start, end = _utc(start), _utc(end)
    if end < start:
        return [], 0
    tail: list[datetime] = [start]
    total = 1
    for fire in _fires(rec, tz, start):
        if fire > end:
            return tail[-keep:], total
        total += 1
        tail.append(fire)
        if len(tail) > 2 * keep:
            del tail[:keep]
        if total >= SKIPPED_FIRES_CAP:
            break
    span = timedelta(hours=6)
    while True:
        low = max(end - span, start)
        window = list(_until(_fires(rec, tz, low - _TICK), end))
        if len(window) >= keep or low == start:
            return window[-keep:], max(total, len(window))
        span *= 4


def _until(fires: Iterator[datetime], end: datetime) -> Iterator[datetime]:
    for fire in fires:
        if fire > end:
            return
        yield fire


def plan_due(
    rec: Recurrence | None,
    tz: ZoneInfo,
    scheduled_for: datetime,
    now: datetime,
    misfire_grace: timedelta | None,
) -> RunDecision:
    """Decide what to do with an occurrence scheduled at ``scheduled_for`` and due at ``now``.

    A recurring occurrence coalesces every later grid time that has also passed into the
    latest one, L (the series fires once to catch up); a one-time occurrence stands for
    itself. When ``misfire_grace`` is set and ``now - L`` exceeds it the occurrence is
    ``missed``, otherwise it is ``run``. Expects ``scheduled_for <= now``; an occurrence
    not yet due is treated as on time.
    """
    scheduled = _utc(scheduled_for)
    now = _utc(now)
    latest = scheduled
    skipped = 0
    if rec is not None and now > scheduled:
        latest = latest_fire_at_or_before(rec, tz, scheduled, now)
        skipped = _count_fires_between(rec, tz, scheduled, latest)
    late = now - latest
    action: Literal["run", "missed"] = (
        "missed" if misfire_grace is not None and late > misfire_grace else "run"
    )
    return RunDecision(action=action, scheduled_for=latest, skipped_fires=skipped)


# --- evaluation ------------------------------------------------------------------------


def _fires(rec: Recurrence, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """All fires strictly after ``after``, strictly increasing, as aware UTC."""
    after = _utc(after)
    if rec.every is not None:
        fire = after
        while True:
            fire += rec.every
            yield fire
    cron = rec.cron
    assert cron is not None
    grid = _grid(cron)
    while True:
        after = _next_cron_fire(grid, rec.fixed_time, tz, after)
        yield after


def _next_cron_fire(grid: _Grid, fixed_time: bool, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire of a cron job strictly after the UTC instant ``after``.

    Every matching wall time has a first pass: its fold=0 instant or, for a fixed-time
    job in a spring-forward gap, the transition. First passes rise with the wall time
    and none of a wall time up to ``after``'s own is later than ``after``, so the next
    one comes from the first matching wall times after ``after``'s. Only near a
    fall-back does more need checking: the rest of a repeated span ``after`` is in has
    had its first passes, and a real-time job fires again in the second pass.
    """
    local = after.astimezone(tz)
    wall = local.replace(tzinfo=None)
    if local.fold:
        # ``after`` is in the second pass of a repeated span of wall times.
        if fixed_time:
            wall = _repeat_end(tz, after, local) - _TICK
        else:
            following = _next_wall(grid, wall)
            if is_ambiguous(following, tz):
                return following.replace(tzinfo=tz, fold=1).astimezone(UTC)
    fire = _first_pass_after(grid, fixed_time, tz, after, wall)
    if not fixed_time and not local.fold:
        second = _second_pass_ahead(grid, tz, after, local)
        if second is not None and second < fire:
            return second
    return fire


def _first_pass_after(
    grid: _Grid, fixed_time: bool, tz: ZoneInfo, after: datetime, wall: datetime
) -> datetime:
    """The first first-pass fire after ``after`` among matching wall times after ``wall``."""
    while True:
        wall = _next_wall(grid, wall)
        fire = wall.replace(tzinfo=tz).astimezone(UTC)
        if _wall(fire, tz) != wall:
            # A spring-forward gap skips this wall time: a fixed-time job runs at the
            # transition, a real-time one resumes at the first wall time after the gap.
            transition = local_to_utc(wall, tz)
            if not fixed_time:
                wall = _wall(transition, tz) - _TICK
                continue
            fire = transition
        if fire > after:
            return fire
        # Not reached with the transitions tzdata has (see _WINDOW); should a zone
        # break those assumptions, try the next wall time rather than answer one that
        # is not after ``after``.


def _second_pass_ahead(
    grid: _Grid, tz: ZoneInfo, after: datetime, local: datetime
) -> datetime | None:
    """The first second-pass (fold=1) fire of a fall-back just after ``after``, if any.

    ``local`` is ``after`` in ``tz``, in no repeated span. A second pass can come before
    the next first pass only from wall times whose first pass is not after ``after``,
    so only a fall-back at most its own shift ahead matters.
    """
    shift = _offset(local) - _offset((after + _WINDOW).astimezone(tz))
    if shift <= _NO_SHIFT:
        return None
    near = after + shift
    if _offset(near.astimezone(tz)) == _offset(local):
        return None
    # Whole seconds at both ends, so the search lands on the transition exactly.
    transition = find_transition(after.replace(microsecond=0), near.replace(microsecond=0), tz)
    # The repeated wall times start at the transition, read in the later offset.
    following = _next_wall(grid, _wall(transition, tz) - _TICK)
    if not is_ambiguous(following, tz):
        return None
    return following.replace(tzinfo=tz, fold=1).astimezone(UTC)


def _repeat_end(tz: ZoneInfo, after: datetime, local: datetime) -> datetime:
    """The first wall time after the repeated span whose second pass ``after`` is in."""
    shift = _offset(local.replace(fold=0)) - _offset(local)
    # The span's second pass began at the transition, less than one shift ago.
    transition = find_transition(
        (after - shift).replace(microsecond=0), after.replace(microsecond=0), tz
    )
    return _wall(transition, tz) + shift


def _count_fires_between(rec: Recurrence, tz: ZoneInfo, start: datetime, end: datetime) -> int:
    """Fires in ``(start, end]``, counted up to SKIPPED_FIRES_CAP."""
    if rec.every is not None:
        return min((end - start) // rec.every, SKIPPED_FIRES_CAP)
    count = 0
    for fire in _fires(rec, tz, start):
        if fire > end or count >= SKIPPED_FIRES_CAP:
            break
        count += 1
    return count


@dataclass(frozen=True)
class _Grid:
    """The values each field of a cron expression selects, ready for jumping to matches."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    days: frozenset[int]
    weekdays: frozenset[int]
    """Sunday is 0."""
    day_or: bool
    """The Vixie rule: a day fires when it matches either day field (else both)."""
    every_day: bool
    """Every day of every selected month matches, whatever its date or weekday."""


@lru_cache(maxsize=1024)
def _grid(cron: str) -> _Grid:
    """The field values of a validated 5-field cron expression."""
    minutes, hours, days, months, weekdays = (
        _expand_field(cron, part, f) for part, f in zip(cron.split(" "), _FIELDS, strict=True)
    )
    all_days, all_weekdays = len(days) == 31, len(weekdays) == 7
    day_or = _day_or(cron)
    return _Grid(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        months=tuple(sorted(months)),
        days=days,
        weekdays=weekdays,
        day_or=day_or,
        every_day=(all_days or all_weekdays) if day_or else (all_days and all_weekdays),
    )


def _next_wall(grid: _Grid, after: datetime) -> datetime:
    """The first naive wall time strictly after ``after`` that ``grid`` selects.

    Jumps field by field, month, day, hour, minute; when a field has no value left, the
    next larger field moves on one and the smaller ones start again from their lowest.
    """
    # The minute after ``after``'s; a minute of 60 carries over like any field that ran out.
    year, month, day, hour = after.year, after.month, after.day, after.hour
    minute = after.minute + 1
    months, hours, minutes = grid.months, grid.hours, grid.minutes
    while True:
        i = bisect_left(months, month)
        if i == len(months):
            year, month, day, hour, minute = year + 1, months[0], 1, 0, 0
        elif months[i] != month:
            month, day, hour, minute = months[i], 1, 0, 0
        found = _first_day(grid, year, month, day)
        if not found:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            day, hour, minute = 1, 0, 0
            continue
        if found != day:
            day, hour, minute = found, 0, 0
        i = bisect_left(hours, hour)
        if i == len(hours):
            day, hour, minute = day + 1, 0, 0
            continue
        if hours[i] != hour:
            hour, minute = hours[i], 0
        i = bisect_left(minutes, minute)
        if i == len(minutes):
            hour, minute = hour + 1, 0
            continue
        return datetime(year, month, day, hour, minutes[i])


def _first_day(grid: _Grid, year: int, month: int, day: int) -> int:
    """The first day from ``day`` on in the month that ``grid`` selects; 0 when none is."""
    first_weekday, length = _month_shape(year, month)
    if grid.every_day:
        return day if day <= length else 0
    days, weekdays = grid.days, grid.weekdays
    for d in range(day, length + 1):
        weekday = (first_weekday + d - 1) % 7
        if grid.day_or:
            if d in days or weekday in weekdays:
                return d
        elif d in days and weekday in weekdays:
            return d
    return 0


@lru_cache(maxsize=4096)
def _month_shape(year: int, month: int) -> tuple[int, int]:
    """The weekday of the month's first day (Sunday 0) and the month's length."""
    weekday, length = calendar.monthrange(year, month)
    return (weekday + 1) % 7, length


def _day_or(cron: str) -> bool:
    """Vixie rule: day of month OR day of week only when neither field starts with '*'."""
    parts = cron.split(" ")
    return not parts[2].startswith("*") and not parts[4].startswith("*")


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _offset(local: datetime) -> timedelta:
    offset = local.utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("recurrence evaluation needs aware datetimes")
    return when.astimezone(UTC)


# --- validation ------------------------------------------------------------------------


def _error(text: str, detail: str) -> InvalidRecurrence:
    return InvalidRecurrence(f'recurrence "{text}": {detail}')


def _parse_duration(text: str, rest: str) -> timedelta:
    if not rest:
        _fail(text, 'needs a duration after @every, such as "@every 30m"')
    seconds = duration_seconds(rest)
    if seconds is None:
        _fail(text, f'"{rest}" is not a duration; {UNIT_HINT}')
    try:
        every = timedelta(seconds=seconds)
    except OverflowError:
        _fail(text, f'"{rest}" is too long an interval; use at most a few years')
    if every <= timedelta(0):
        _fail(text, "the interval is zero; use a positive duration such as 30m")
    return every


def _fail(text: str, detail: str) -> NoReturn:
    raise _error(text, detail)


def _expand_field(text: str, part: str, field: _Field) -> frozenset[int]:
    """Validate one cron field and return the values it selects (Sunday as 0)."""
    values: set[int] = set()
    for item in part.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                raise _error(
                    text,
                    f'{field.label} step "{step_text}" in "{part}" must be a whole number '
                    "of 1 or more, as in */15",
                )
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, second = base.partition("-")
            low, high = _value(text, part, first, field), _value(text, part, second, field)
            if low > high:
                raise _error(
                    text,
                    f'{field.label} range "{base}" runs backwards; write the smaller value '
                    "first or use a list",
                )
        else:
            low = high = _value(text, part, base, field)
            if slash:
                raise _error(
                    text,
                    f'{field.label} "{item}" has a step without a range; write '
                    f"{base}-{field.high}/{step} or */{step}",
                )
        values.update(range(low, high + 1, step))
    if field.label == "day of week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _value(text: str, part: str, token: str, field: _Field) -> int:
    if _NUMBER.fullmatch(token):
        number = int(token)
        if not field.low <= number <= field.high:
            raise _error(text, f"{field.label} {number} is out of range {field.low}-{field.high}")
        return number
    if token.lower() in field.names:
        return field.names[token.lower()]
    if not token or not token.isalpha():
        raise _error(text, f'{field.label} "{part}" is not valid; {_SYNTAX_HINT}')
    if field.names:
        raise _error(text, f'{field.label} "{token}" {field.name_hint}')
    raise _error(text, f'{field.label} "{token}" is not a number; use {field.low}-{field.high}')


def _walk(cron: str, start: datetime) -> Any:
    """A croniter over naive wall times after ``start``, reading fields cronbox's way."""
    from croniter import croniter  # only a check or a walk needs it, and it is slow to import

    return croniter(_for_croniter(cron), start, day_or=_day_or(cron))


@lru_cache(maxsize=1024)
def _for_croniter(cron: str) -> str:
    """``cron`` with every restricted field spelled as a plain list of numbers.

    croniter misreads some legal fields (``7-7`` as day of week selects every day), so
    it only ever sees lists; the day-of-month/day-of-week rule is passed separately.
    """
    return " ".join(
        part if part == "*" else ",".join(str(v) for v in sorted(_expand_field(cron, part, f)))
        for part, f in zip(cron.split(" "), _FIELDS, strict=True)
    )


def _confirm_with_croniter(text: str, cron: str) -> None:
    from croniter import CroniterBadDateError, CroniterError

    try:
        _walk(cron, _REFERENCE).get_next(datetime)
    except CroniterBadDateError as exc:
        raise _error(
            text,
            "never fires because no month it names has that day; pick a day that exists",
        ) from exc
    except (CroniterError, ValueError) as exc:
        raise _error(
            text, f"is not a valid cron expression; check each field ({_FIELD_SUMMARY})"
        ) from exc


def _check_min_gap(
    text: str,
    cron: str,
    minutes: frozenset[int],
    hours: frozenset[int],
    min_interval: timedelta,
) -> None:
    """Raise when two consecutive fires can be closer than ``min_interval`` (wall clock).

    Every firing day fires at the same times of day, so the smallest gap is either
    between two times of one day or from the last time of a day to the first time of
    the next firing day; the latter is checked on real calendars for a few years.
    """
    times = sorted(h * 60 + m for h in hours for m in minutes)
    limit = min_interval.total_seconds() / 60
    smallest = min((b - a for a, b in pairwise(times)), default=None)
    if smallest is None or smallest >= limit:
        overnight = times[0] - times[-1]  # plus 1440 per day between firing days
        if 1440 + overnight < limit:
            parts = cron.split(" ")
            days = _walk(f"0 0 {parts[2]} {parts[3]} {parts[4]}", _REFERENCE)
            end = _REFERENCE.replace(year=_REFERENCE.year + _GAP_CHECK_YEARS)
            previous: datetime = days.get_next(datetime)
            while previous < end:
                day: datetime = days.get_next(datetime)
                gap = (day - previous).days * 1440 + overnight
                if gap < limit:
                    smallest = gap
                    break
                previous = day
    if smallest is not None and smallest < limit:
        raise InvalidRecurrence(
            f'recurrence "{text}" fires as little as {_seconds(timedelta(minutes=smallest))} '
            f"apart, more often than the minimum of {_seconds(min_interval)}; "
            "use a longer interval"
        )


def _seconds(span: timedelta) -> str:
    count = int(span.total_seconds())
    return f"{count} second" if count == 1 else f"{count} seconds"


def _duration_words(span: timedelta) -> str:
    total = int(span.total_seconds())
    words = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        amount, total = divmod(total, size)
        if amount:
            words.append(f"{amount} {unit}" if amount == 1 else f"{amount} {unit}s")
    return " ".join(words)
