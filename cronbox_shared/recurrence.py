"""Recurrence rules: parsing, describing and DST-correct evaluation (SPEC §5).

A recurrence is a 5-field cron expression (names, ``0``/``7`` for Sunday, ranges, steps,
lists), a shorthand (``@daily`` …) or ``@every <duration>``. Everything here is a pure
function of its inputs.

Cron is evaluated the way Debian's cron(8) does it, in the task's zone:

* croniter only ever sees naive local wall-clock times; cronbox maps them to UTC itself.
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

import heapq
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import islice, pairwise
from typing import Any, Literal, NoReturn
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor, Options
from croniter import CroniterBadDateError, CroniterError, croniter

from cronbox_shared.errors import InvalidRecurrence
from cronbox_shared.timeutil import exists_locally, is_ambiguous, local_to_utc

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

# How far wall-clock iteration looks behind and ahead of a candidate. A fold=1 instant
# comes from a wall time up to one DST shift (at most 2 hours anywhere) earlier than
# the wall times around it, so a 3-hour window always sees the true next fire.
_WINDOW = timedelta(hours=3)
# Naive reference for validity and minimum-gap checks (a leap year, starting a Monday).
_REFERENCE = datetime(2024, 1, 1)
# How many years of firing days the minimum-gap check looks at.
_GAP_CHECK_YEARS = 4

_FIELD_SUMMARY = "minute hour day-of-month month day-of-week"
_SYNTAX_HINT = "use a number, a range such as 1-5, a step such as */15, or a list such as 1,15"
_SHORTHAND_LIST = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
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


def parse_recurrence(expr: str, min_interval: timedelta = timedelta(seconds=60)) -> Recurrence:
    """Parse and validate a recurrence expression.

    Raises InvalidRecurrence with one sentence naming the expression, what is wrong and
    how to fix it; also when the recurrence can fire more often than ``min_interval``
    (for cron, measured on the local wall clock).
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
    _confirm_with_croniter(text, cron)
    fixed = not parts[0].startswith("*") and not parts[1].startswith("*")
    if min_interval > timedelta(minutes=1):
        _check_min_gap(text, cron, values[0], values[1], min_interval)
    return Recurrence(text, None, fixed_time=fixed)


def stored_recurrence(expr: str) -> Recurrence:
    """Read an expression that was validated when it was stored (no interval check)."""
    return parse_recurrence(expr, timedelta(0))


def next_fire(rec: Recurrence, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire strictly after the aware instant ``after``, as aware UTC."""
    return next(_fires(rec, tz, after))


def fire_times(rec: Recurrence, tz: ZoneInfo, after: datetime, n: int) -> list[datetime]:
    """The first ``n`` fires strictly after ``after``, strictly increasing, aware UTC."""
    return list(islice(_fires(rec, tz, after), max(n, 0)))


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
    # Wall times map to instants almost in order; a fold=1 instant can come from a wall
    # time up to an hour or two behind. Hold candidates in a heap and release the
    # earliest only once the wall clock is a full window past it.
    walls = _walk(cron, _wall(after, tz) - _WINDOW)
    pending: list[datetime] = []
    last = after
    while True:
        wall: datetime = walls.get_next(datetime)
        for instant in _instants(wall, tz, rec.fixed_time):
            if instant > last:
                heapq.heappush(pending, instant)
        while pending and wall - _WINDOW > _wall(pending[0], tz):
            fire = heapq.heappop(pending)
            if fire > last:  # several gap wall times can share one transition instant
                last = fire
                yield fire


def _instants(wall: datetime, tz: ZoneInfo, fixed_time: bool) -> list[datetime]:
    """The UTC instants at which a matching naive wall time fires."""
    if not exists_locally(wall, tz):
        # Spring-forward gap: a fixed-time job runs at the transition, others skip it.
        return [local_to_utc(wall, tz)] if fixed_time else []
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if fixed_time or not is_ambiguous(wall, tz):
        return [first]
    return [first, wall.replace(tzinfo=tz, fold=1).astimezone(UTC)]


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


def _walk(cron: str, start: datetime) -> Any:
    """A croniter over naive wall times after ``start``, reading fields cronbox's way."""
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


def _day_or(cron: str) -> bool:
    """Vixie rule: day of month OR day of week only when neither field starts with '*'."""
    parts = cron.split(" ")
    return not parts[2].startswith("*") and not parts[4].startswith("*")


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


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
    compact = rest.replace(" ", "").lower()
    match = _DURATION.fullmatch(compact)
    if not compact or match is None:
        _fail(
            text,
            f'"{rest}" is not a duration; write whole numbers with units d, h, m and s '
            "in that order, such as 90s, 30m, 2h, 1d or 1h30m",
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    try:
        every = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
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


def _confirm_with_croniter(text: str, cron: str) -> None:
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
