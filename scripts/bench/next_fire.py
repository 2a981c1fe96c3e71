"""Per-call cost of ``next_fire`` beside cronsim, croniter and the old evaluation.

One list of cases, every implementation timed on it in the same run: each expression
class below in each zone (``30 2 * * *`` only in zones with DST), from ``--starts``
instants per pair drawn from 2026-2027 with a fixed seed; ``--near-dst`` of them (a
quarter by default) fall within a day of one of the zone's offset changes, so the DST
paths are measured too, not just the quiet days.

* cronbox: ``next_fire(rec, tz, after)`` with ``rec`` parsed once;
* old: the evaluation cronbox shipped before (croniter walking wall times with a heap,
  ``tests/recurrence_oracle.py``), on the same parsed ``rec``;
* cronsim: one ``CronSim`` per expression and zone, re-seeded with the local start time
  before each ``next()`` so that, like cronbox, it is timed after parsing (``cronsim,
  new object`` builds a fresh ``CronSim`` each call, its usual API, for reference);
* croniter: one ``croniter`` per expression, ``set_current(naive local wall time)`` then
  ``get_next``; it answers in wall time only, without the DST rules, so it is a floor
  for "walk the fields" more than a rival.

A case's figure is the mean of ``--repeat`` back-to-back calls; medians and p99s are
over cases. Each implementation's answer is compared with cronbox's (croniter's wall
time read in the zone, fold 0) and the number that differ is printed; "old" differing
in none is the benchmark's own check that the rewrite changed no answer. Last, a few
cases where cronsim is known to be wrong are printed with both answers.
"""

from __future__ import annotations

import argparse
import gc
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import percentile, ratio, table
from croniter import croniter
from cronsim import CronSim

from cronbox_shared.recurrence import Recurrence, next_fire, parse_recurrence
from tests.recurrence_oracle import reference_fires, zone_transitions

CLASSES = [
    "* * * * *",
    "0 9 * * *",
    "*/15 * * * *",
    "0 9 * * MON-FRI",
    "30 2 * * *",
    "0 0 1 * *",
    "@hourly",
    "0 0 29 2 *",
]
ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "Asia/Kolkata",
    "UTC",
]
NO_DST = {"Asia/Kolkata", "UTC"}
# Cases where cronsim and cronbox disagree (tests/test_recurrence.py has cronbox's answers
# checked against the old evaluation): one-value stepped ranges, a start inside a repeated
# span's second pass, and shifts that are not a whole hour or not on the hour.
KNOWN = [
    ("0 12-12/6 * * *", "UTC", "2026-01-01T12:00:00Z"),
    ("0 9 * * MON-MON/2", "UTC", "2026-01-01T00:00:00Z"),
    ("45 1 * * *", "Australia/Lord_Howe", "2026-04-04T15:05:00Z"),
    ("20 3 * * *", "Pacific/Chatham", "2026-04-04T14:24:00Z"),
    ("30 * * * *", "Australia/Lord_Howe", "2026-04-04T14:30:00Z"),
    ("30 * * * *", "Australia/Lord_Howe", "2026-10-03T15:00:00Z"),
    ("0 */2 * * *", "Australia/Lord_Howe", "2026-04-04T13:30:00Z"),
    ("*/15 2 * * *", "Pacific/Chatham", "2026-04-04T13:00:00Z"),
    ("50 */3 * * *", "Pacific/Chatham", "2026-04-04T14:10:00Z"),
]
SPAN_START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_END = datetime(2028, 1, 1, tzinfo=UTC)

Call = Callable[[], datetime]
Read = Callable[[datetime], datetime]


@dataclass(frozen=True)
class Case:
    expr: str
    zone: str
    after: datetime
    near_change: bool
    """Within a day of one of the zone's offset changes."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=40, help="start instants per expression x zone")
    p.add_argument("--near-dst", type=float, default=0.25, help="share of starts near a change")
    p.add_argument("--repeat", type=int, default=3, help="calls averaged per case")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def build_cases(args: argparse.Namespace) -> list[Case]:
    rng = random.Random(args.seed)
    span = (SPAN_END - SPAN_START).total_seconds()
    cases = []
    for zone in ZONES:
        changes = zone_transitions(ZoneInfo(zone), SPAN_START, SPAN_END)
        for expr in CLASSES:
            if expr == "30 2 * * *" and zone in NO_DST:
                continue
            for _ in range(args.starts):
                if changes and rng.random() < args.near_dst:
                    after = rng.choice(changes) + timedelta(seconds=rng.uniform(-86400, 86400))
                else:
                    after = SPAN_START + timedelta(seconds=rng.uniform(0, span))
                near = any(abs((after - t).total_seconds()) <= 86400 for t in changes)
                cases.append(Case(expr, zone, after, near))
    return cases


def implementations(cases: list[Case]) -> dict[str, Callable[[Case], tuple[Call, Read]]]:
    """Per implementation, a function that prepares one case.

    It returns the call to time and how to read the call's answer as aware UTC.
    """
    recs: dict[str, Recurrence] = {c.expr: parse_recurrence(c.expr) for c in cases}
    zones = {z: ZoneInfo(z) for z in ZONES}
    sims: dict[tuple[str, str], CronSim] = {}
    iters: dict[str, croniter] = {}

    def as_is(answer: datetime) -> datetime:
        return answer

    def utc(answer: datetime) -> datetime:
        return answer.astimezone(UTC)

    def cronbox(case: Case) -> tuple[Call, Read]:
        rec, tz, after = recs[case.expr], zones[case.zone], case.after
        return (lambda: next_fire(rec, tz, after)), as_is

    def old(case: Case) -> tuple[Call, Read]:
        rec, tz, after = recs[case.expr], zones[case.zone], case.after
        return (lambda: next(reference_fires(rec, tz, after))), as_is

    def cronsim(case: Case) -> tuple[Call, Read]:
        tz = zones[case.zone]
        cron = recs[case.expr].cron or ""
        sim = sims.setdefault((cron, case.zone), CronSim(cron, case.after.astimezone(tz)))
        local = case.after.astimezone(tz).replace(microsecond=0)
        # What CronSim.__init__ does with its start time, without parsing again.
        start = local.replace(tzinfo=None) if sim.fixup_tz else local

        def call() -> datetime:
            sim.dt = start
            got: datetime = next(sim)
            return got

        return call, utc

    def cronsim_new(case: Case) -> tuple[Call, Read]:
        cron = recs[case.expr].cron or ""
        local = case.after.astimezone(zones[case.zone])
        return (lambda: next(CronSim(cron, local))), utc

    def plain_croniter(case: Case) -> tuple[Call, Read]:
        cron = recs[case.expr].cron or ""
        it = iters.setdefault(cron, croniter(cron, datetime(2026, 1, 1)))
        tz = zones[case.zone]
        wall = case.after.astimezone(tz).replace(tzinfo=None)

        def call() -> datetime:
            it.set_current(wall, force=True)
            got: datetime = it.get_next(datetime)
            return got

        return call, lambda answer: answer.replace(tzinfo=tz).astimezone(UTC)

    return {
        "cronbox": cronbox,
        "old": old,
        "cronsim": cronsim,
        "cronsim, new object": cronsim_new,
        "croniter": plain_croniter,
    }


def measure(cases: list[Case], repeat: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per call for each implementation and case, and answers differing from cronbox."""
    makers = implementations(cases)
    seconds: dict[str, list[float]] = {name: [] for name in makers}
    differ = dict.fromkeys(makers, 0)
    for case in cases:
        prepared = {name: make(case) for name, make in makers.items()}
        # Reading every answer first also warms each implementation's caches.
        answers = {name: read(call()) for name, (call, read) in prepared.items()}
        for name, answer in answers.items():
            differ[name] += answer != answers["cronbox"]
        if answers["cronsim"] != answers["cronsim, new object"]:
            raise AssertionError(f"re-seeding CronSim changed its answer for {case}")
        # Interleaved per case, so drift in the machine's speed hits every column alike.
        for name, (call, _) in prepared.items():
            gc.disable()
            start = time.perf_counter()
            for _ in range(repeat):
                call()
            elapsed = time.perf_counter() - start
            gc.enable()
            seconds[name].append(elapsed / repeat)
    return seconds, differ


def cronsim_answer(expr: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    """cronsim's next fire, or None when it has not answered within a second."""

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        got: datetime = next(CronSim(expr, after.astimezone(tz)))
        return got
    except TimeoutError:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def print_known_differences() -> None:
    def local(instant: datetime | None, tz: ZoneInfo) -> str:
        if instant is None:
            return "no answer within 1 s"
        return instant.astimezone(tz).strftime("%m-%d %H:%M%z")

    rows = []
    for expr, zone, start in KNOWN:
        tz, after = ZoneInfo(zone), datetime.fromisoformat(start)
        rec = parse_recurrence(expr)
        mine = next_fire(rec, tz, after)
        theirs = cronsim_answer(rec.cron or "", tz, after)
        rows.append([expr, zone, local(after, tz), local(mine, tz), local(theirs, tz)])
    table(["expression", "zone", "after (local)", "cronbox", "cronsim"], rows)


def micros(value: float) -> str:
    return f"{value * 1e6:,.1f}"


def main() -> None:
    args = parse_args()
    cases = build_cases(args)
    near = sum(c.near_change for c in cases)
    print(
        f"{len(cases)} cases: {len(CLASSES)} expression classes x {len(ZONES)} zones x "
        f"{args.starts} starts ({near} within a day of an offset change), "
        f"{args.repeat} calls each"
    )
    started = time.perf_counter()
    seconds, differ = measure(cases, args.repeat)
    print(f"measured in {time.perf_counter() - started:.1f} s")
    names = list(seconds)

    def figures(indices: list[int]) -> dict[str, tuple[float, float]]:
        out = {}
        for name in names:
            values = [seconds[name][i] for i in indices]
            out[name] = (percentile(values, 50), percentile(values, 99))
        return out

    groups = {expr: [i for i, c in enumerate(cases) if c.expr == expr] for expr in CLASSES}
    groups["overall"] = list(range(len(cases)))
    groups["overall, quiet days"] = [i for i, c in enumerate(cases) if not c.near_change]
    groups["overall, near a change"] = [i for i, c in enumerate(cases) if c.near_change]
    print()
    print("microseconds per next-fire call, median / p99 over cases")
    rows = []
    for label, indices in groups.items():
        f = figures(indices)
        rows.append([label, *(f"{micros(f[n][0])} / {micros(f[n][1])}" for n in names)])
    table(["", *names], rows)
    print()
    print("cronbox is this many times faster (median / p99)")
    baselines = ["old", "cronsim", "croniter"]
    rows = []
    for label, indices in groups.items():
        f = figures(indices)
        mine = f["cronbox"]
        rows.append(
            [
                label,
                *(f"{ratio(f[b][0], mine[0])} / {ratio(f[b][1], mine[1])}" for b in baselines),
            ]
        )
    table(["", *(f"vs {b}" for b in baselines)], rows)
    print()
    print(
        "answers differing from cronbox's: "
        + ", ".join(f"{name} {differ[name]}/{len(cases)}" for name in names if name != "cronbox")
    )
    print()
    print("next fire where cronsim and cronbox disagree (cronbox's are checked in the tests)")
    print_known_differences()


if __name__ == "__main__":
    main()
