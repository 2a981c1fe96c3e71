"""The cron evaluation cronbox shipped before next-fire was rewritten, kept as an oracle.

This is ``cronbox_shared.recurrence._fires``/``_instants`` as they were: croniter walks
naive wall times from three hours before ``after``, each wall time becomes its UTC
instants under the DST rules, and a heap releases them in order. It is slow (hundreds
of microseconds a call) but its answers are the ones cronbox has always given, so the
property tests compare the fast evaluation against it and the next-fire benchmark
times it as "before". Do not speed it up or fix it: its value is that it does not change.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from croniter import croniter

from cronbox_shared.recurrence import Recurrence, _day_or, _for_croniter
from cronbox_shared.timeutil import exists_locally, is_ambiguous, local_to_utc

WINDOW = timedelta(hours=3)


def reference_fire_times(rec: Recurrence, tz: ZoneInfo, after: datetime, n: int) -> list[datetime]:
    """The first ``n`` fires strictly after ``after``, as the old evaluation found them."""
    return list(islice(reference_fires(rec, tz, after), max(n, 0)))


def reference_fires(rec: Recurrence, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """All fires strictly after ``after``, strictly increasing, as aware UTC."""
    after = after.astimezone(UTC)
    if rec.every is not None:
        fire = after
        while True:
            fire += rec.every
            yield fire
    cron = rec.cron
    assert cron is not None
    walls = croniter(_for_croniter(cron), _wall(after, tz) - WINDOW, day_or=_day_or(cron))
    pending: list[datetime] = []
    last = after
    while True:
        wall: datetime = walls.get_next(datetime)
        for instant in _instants(wall, tz, rec.fixed_time):
            if instant > last:
                heapq.heappush(pending, instant)
        while pending and wall - WINDOW > _wall(pending[0], tz):
            fire = heapq.heappop(pending)
            if fire > last:
                last = fire
                yield fire


def _instants(wall: datetime, tz: ZoneInfo, fixed_time: bool) -> list[datetime]:
    if not exists_locally(wall, tz):
        return [local_to_utc(wall, tz)] if fixed_time else []
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if fixed_time or not is_ambiguous(wall, tz):
        return [first]
    return [first, wall.replace(tzinfo=tz, fold=1).astimezone(UTC)]


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def zone_transitions(tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants in ``[start, end)`` where ``tz``'s UTC offset changes, to the second.

    For sampling instants near DST transitions; assumes at most one change a day.
    """
    found = []
    day = timedelta(days=1)
    lo = start.astimezone(UTC)
    while lo < end:
        hi = lo + day
        if lo.astimezone(tz).utcoffset() != hi.astimezone(tz).utcoffset():
            low, high = lo, hi
            while high - low > timedelta(seconds=1):
                mid = (low + (high - low) / 2).replace(microsecond=0)
                if mid.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
                    low = mid
                else:
                    high = mid
            found.append(high)
        lo = hi
    return found
