"""Scheduling policies past the anchors: pure decisions, tested by table.

* :func:`plan_missed` — what a recurring occurrence does with the slots that passed
  while nothing ran them (``latest``, ``all``, ``skip``), under its misfire grace.
* :func:`failure_streak`, :func:`failure_delay` — consecutive failed occurrences push
  the next one back (2, 4, 8, 16, 32, then 60 minutes at the default base) and pause
  the series after ``max_failures`` in a row.
* :func:`jitter_offset`, :func:`due_at` — a deterministic delay in ``[0, jitter)`` per
  series and slot, so previews, retries and restarts agree on it.
* :func:`parse_quiet`, :func:`quiet_end`, :func:`admit` — a session's quiet hours hold
  task occurrences due inside the window to its end (in the session's zone,
  DST-correct); chat is never held.

The host's settlement plans and the MCP server's previews call these; nothing here
reads a clock or a file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from cronbox_shared.errors import InvalidInput
from cronbox_shared.models import MissedPolicy, RunOutcome
from cronbox_shared.recurrence import Recurrence, fire_times, plan_due, slots_through
from cronbox_shared.timeutil import fmt, local_to_utc

DEFAULT_CATCHUP_LIMIT = 24
MAX_CATCHUP_LIMIT = 1000
DEFAULT_MAX_FAILURES = 8
MAX_MAX_FAILURES = 1000
MAX_JITTER = 86400
# ``skip`` without a misfire grace: a slot this late counts as missed. A sweep wakes
# within a second of a slot, so an on-time run is never this late.
SKIP_GRACE = timedelta(seconds=60)
# How many missed slots one catch-up records one by one (older ones are counted).
MISSED_RECORDS = 100
# The failure backoff grows from its base by doubling up to this many times the base
# (2, 4, 8, 16, 32 minutes, then 60 at the default base of 2 minutes).
BACKOFF_CAP_FACTOR = 30
FAILED_OUTCOMES = (RunOutcome.ERROR, RunOutcome.TIMEOUT)

_NO_DELAY: Callable[[datetime], timedelta] = lambda slot: timedelta(0)  # noqa: E731


@dataclass(frozen=True)
class CatchUp:
    """What one due occurrence does about the slots that passed."""

    run_slot: datetime | None
    """The slot the occurrence runs for now; None when nothing runs now (every passed
    slot is missed and the series continues at its next slot)."""
    missed: tuple[datetime, ...]
    """Slots to record ``missed``, oldest first (at most :data:`MISSED_RECORDS`)."""
    missed_total: int
    """How many slots were missed (``missed`` holds the newest of them)."""


def plan_missed(
    policy: MissedPolicy | None,
    rec: Recurrence | None,
    tz: ZoneInfo,
    scheduled_for: datetime,
    now: datetime,
    grace: timedelta | None,
    limit: int | None = None,
    delay: Callable[[datetime], timedelta] = _NO_DELAY,
) -> CatchUp:
    """Decide what a due occurrence scheduled at ``scheduled_for`` does at ``now``.

    A slot's lateness is measured from its due time (the slot plus ``delay(slot)``, its
    jitter). ``misfire_grace`` keeps its meaning under each policy: a slot later than
    the grace is missed, never run.

    * ``latest`` (None too): every passed slot is coalesced onto the latest, which runs
      (or is missed past the grace); the coalesced ones are not recorded.
    * ``all``: each passed slot runs in order, the oldest first; only the newest
      ``limit`` (default 24) within the grace are kept, the rest are missed.
    * ``skip``: the latest slot runs only if it is within the grace (default
      :data:`SKIP_GRACE`); every other passed slot is missed.
    A one-time occurrence (``rec`` None) runs, or is missed past its grace.
    """
    policy = policy or MissedPolicy.LATEST
    if rec is None or policy is MissedPolicy.LATEST:
        latest = plan_due(rec, tz, scheduled_for, now, None).scheduled_for
        if grace is not None and now - latest - delay(latest) > grace:
            return CatchUp(None, (latest,), 1)
        return CatchUp(latest, (), 0)
    keep = limit if limit is not None else DEFAULT_CATCHUP_LIMIT
    slots, total = slots_through(rec, tz, scheduled_for, now, keep + MISSED_RECORDS)
    if policy is MissedPolicy.SKIP:
        grace = grace if grace is not None else SKIP_GRACE
        keep = 1
    runnable = [s for s in slots if grace is None or now - s - delay(s) <= grace][-keep:]
    if policy is MissedPolicy.SKIP:
        runnable = [s for s in runnable if s == slots[-1]]
    first = runnable[0] if runnable else None
    missed = tuple(s for s in slots if first is None or s < first)
    return CatchUp(first, missed[-MISSED_RECORDS:], total - len(slots) + len(missed))


def failure_streak(failures: int, outcome: RunOutcome) -> int:
    """Failed occurrences in a row after one that ended with ``outcome``.

    An error or a timeout adds one; a success resets the streak; a gate's deliberate
    ``wakeAgent: false`` (skipped) and a missed slot leave it as it is.
    """
    if outcome in FAILED_OUTCOMES:
        return failures + 1
    if outcome is RunOutcome.OK:
        return 0
    return failures


def failure_delay(streak: int, base: timedelta) -> timedelta:
    """How long after the ``streak``-th failure in a row the next occurrence waits at least:
    ``base`` doubling each time, at most ``BACKOFF_CAP_FACTOR * base``."""
    if streak <= 0:
        return timedelta(0)
    factor: int = min(2 ** (streak - 1), BACKOFF_CAP_FACTOR)
    return base * factor


def pause_reason(streak: int, max_failures: int | None, error: str | None) -> str | None:
    """Why the series pauses after this failure streak; None while it goes on.

    ``max_failures`` None means the default (8); 0 means never pause.
    """
    limit = DEFAULT_MAX_FAILURES if max_failures is None else max_failures
    if limit == 0 or streak < limit:
        return None
    times = "time" if streak == 1 else "times"
    return f"failed {streak} {times} in a row: {error or 'no error text'}"


def jitter_offset(series_id: str, slot: datetime, jitter: int | None) -> timedelta:
    """A deterministic delay in ``[0, jitter)`` seconds, in whole milliseconds, from the
    series id and the slot: every process that asks gets the same answer."""
    if not jitter:
        return timedelta(0)
    # Keyed on the slot as stored (whole milliseconds), so every reader agrees.
    digest = hashlib.sha256(f"{series_id}|{fmt(slot)}".encode()).digest()
    return timedelta(milliseconds=int.from_bytes(digest[:8], "big") % (jitter * 1000))


def due_at(series_id: str, slot: datetime, jitter: int | None) -> datetime:
    """When an occurrence scheduled for ``slot`` is due: the slot plus its jitter."""
    return slot + jitter_offset(series_id, slot, jitter)


@dataclass(frozen=True)
class QuietHours:
    """A daily window of local wall-clock time; it crosses midnight when ``end <= start``."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


_QUIET = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?-(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_quiet(text: str, flag: str = "quiet hours") -> QuietHours:
    """Read ``22:00-07:00`` (seconds optional: ``22:00:30-07:00``) as quiet hours.

    Raises InvalidInput with one sentence for anything else, or an empty window.
    """
    match = _QUIET.match(text.strip())
    if match is None:
        raise InvalidInput(
            f'{flag} "{text[:40]}" is not a window; write START-END in 24-hour time, '
            "such as 22:00-07:00"
        )
    values = [int(v) if v else 0 for v in match.groups()]
    try:
        start, end = time(values[0], values[1], values[2]), time(values[3], values[4], values[5])
    except ValueError:
        raise InvalidInput(
            f'{flag} "{text[:40]}" names a time that does not exist; use 00:00 to 23:59'
        ) from None
    if start == end:
        raise InvalidInput(f'{flag} "{text[:40]}" is empty; give different start and end times')
    return QuietHours(start, end)


def quiet_end(quiet: QuietHours, tz: ZoneInfo, at: datetime) -> datetime | None:
    """The end of the quiet window ``at`` falls in (aware UTC), or None outside one.

    Each day's window is mapped to UTC through the zone, so a window keeps its wall
    times across DST changes (a start or end in a spring-forward gap moves to the
    transition).
    """
    day = at.astimezone(tz).date()
    for start_day in (day - timedelta(days=1), day):
        end_day = start_day + timedelta(days=1) if quiet.end <= quiet.start else start_day
        start = local_to_utc(datetime.combine(start_day, quiet.start), tz)
        end = local_to_utc(datetime.combine(end_day, quiet.end), tz)
        if start <= at < end:
            return end
    return None


def admit(
    due: datetime, quiet: QuietHours | None, tz: ZoneInfo, ignore_quiet: bool = False
) -> datetime:
    """When a task occurrence due at ``due`` may run: at once, or at the end of the quiet
    window it falls in (unless the task ignores quiet hours)."""
    if quiet is None or ignore_quiet:
        return due
    return quiet_end(quiet, tz, due) or due


QUIET_KEY = "quiet"
"""Where a session's quiet hours are recorded in its inbox (``session_info``)."""


def admitted(
    series_id: str, slot: datetime, jitter: int | None, quiet: QuietHours | None,
    tz: ZoneInfo, hold: bool = True,
) -> datetime:  # fmt: skip
    """When the occurrence of a series for ``slot`` is due: the slot plus its jitter, held
    (unless ``hold`` is false) to the end of the quiet window it falls in."""
    due = due_at(series_id, slot, jitter)
    return admit(due, quiet, tz) if hold else due


def _clock(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def describe_policies(
    missed: MissedPolicy | None, catchup_limit: int | None, max_failures: int | None,
    jitter: int | None,
) -> str:  # fmt: skip
    """A recurring task's scheduling policies in words, defaults spelled out."""
    missed = missed or MissedPolicy.LATEST
    words = [f"missed runs: {missed.value}"]
    if missed is MissedPolicy.ALL:
        words[0] += f" (up to {catchup_limit or DEFAULT_CATCHUP_LIMIT})"
    limit = DEFAULT_MAX_FAILURES if max_failures is None else max_failures
    words.append(f"pauses after {limit} failures in a row" if limit else "never pauses on failures")
    if jitter:
        words.append(f"jitter under {jitter} s")
    return ", ".join(words)


def smallest_gap(rec: Recurrence, tz: ZoneInfo, after: datetime, sample: int = 60) -> timedelta:
    """The smallest gap between the next ``sample`` fires (an interval's own period)."""
    if rec.every is not None:
        return rec.every
    fires = fire_times(rec, tz, after, sample)
    return min((b - a for a, b in pairwise(fires)), default=timedelta.max)
