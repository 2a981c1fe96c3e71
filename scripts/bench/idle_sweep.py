"""Idle sweep cost with many sessions holding future work (SPEC §10, issue 3).

Builds a home with ``--sessions`` sessions (10,000) of ``--tasks-per-session`` tasks
(10) each, every first run between one hour and 30 days out, so nothing is due. Then:

* cronbox: a ``Sweeper`` (process runtime, a ``Delivery`` with no channels) runs
  ``await sweeper.tick()`` ``--ticks`` times; a "pass" is what ``Sweeper.run`` does per
  wake-up, ``tick()`` plus the ``_next_delay()`` look-up of the next wake;
* baseline, nanoclaw-style: list every session, open its ``inbound.db`` read-only and
  query its due rows (``sessiondb.due_rows``), ``--baseline-iterations`` times.

Both run in this process against the same files; the page cache is warm for both (the
build just wrote them). SQLite connections opened during the measured ticks are counted
with the ``sqlite3.connect`` audit event, to show which files a pass touches.

How the home is built (printed separately; not part of any measured figure):
sessions are created with ``Store.create_session`` in ``--workers`` processes (it
creates the session's directory and ``inbound.db``). Each session's tasks are validated
with ``validate_schedule`` exactly as ``Store.schedule_task`` does, and written to its
``inbound.db`` with ``sessiondb.insert_inbound`` in one transaction, in the row shape
``Store.insert_task`` writes. ``Store.schedule_task`` would also re-sync the central view
after every task (100,000 times); instead ``Store.reindex()`` derives the central view
(``next_due_at`` and the task mirror) once at the end, as the host does at start, and its
time is printed as the host's start-up cost at this size. ``--home`` keeps the built home
and reuses it on the next run when it holds the same number of sessions.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import percentile, ratio, secs, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.tasks import ScheduleRequest, validate_schedule
from cronbox_shared.timeutil import SystemClock, fmt
from host.delivery import Delivery
from host.runtimes import ProcessRuntime
from host.service import Cronbox, task_row
from host.store.files import row_values
from host.sweep import SweepConfig, Sweeper

HORIZON = timedelta(days=30)
NOT_BEFORE = timedelta(hours=1)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--tasks-per-session", type=int, default=10)
    p.add_argument("--ticks", type=int, default=200, help="measured sweep passes")
    p.add_argument("--baseline-iterations", type=int, default=5)
    p.add_argument("--workers", type=int, default=8, help="processes building the home")
    p.add_argument("--home", type=Path, help="keep (and reuse) the built home here")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


# --- building the home ---------------------------------------------------------------


def task_requests(rng: random.Random, index: int, count: int, now: datetime) -> list[Any]:
    """A session's tasks: mostly one-time, every fourth recurring (weekly or monthly)."""
    out = []
    for k in range(count):
        task_id = f"idle-{index:05d}-{k:02d}"
        if k % 4 == 3:
            minute, hour = rng.randrange(60), rng.randrange(24)
            cron = (
                f"{minute} {hour} * * {rng.randrange(7)}"
                if k % 8 == 3
                else f"{minute} {hour} {rng.randrange(1, 29)} * *"
            )
            out.append({"taskId": task_id, "prompt": f"recurring {k}", "recurrence": cron})
        else:
            when = now + timedelta(seconds=rng.uniform(0, (HORIZON - NOT_BEFORE).total_seconds()))
            out.append({"taskId": task_id, "prompt": f"once {k}", "processAfter": fmt(when)})
    return out


def build_chunk(job: tuple[str, int, int, int, int]) -> int:
    """Create sessions ``start..stop`` with their tasks (runs in a worker process)."""
    home, start, stop, per_session, seed = job
    store = Cronbox(Path(home))
    # Validate against an hour from now: no first run, recurring or not, is due sooner.
    ref = store.now() + NOT_BEFORE
    for index in range(start, stop):
        rng = random.Random(seed * 1_000_003 + index)
        session = store.create_session(f"idle-{index:05d}")
        valid = [
            validate_schedule(
                ScheduleRequest.parse(raw),
                default_tz=session.timezone,
                now=ref,
                min_interval=store.limits.min_interval,
            )
            for raw in task_requests(rng, index, per_session, ref)
        ]
        now = fmt(store.now())
        with sdb.inbound(store.session_dir(session.id)) as db:
            db.execute("BEGIN IMMEDIATE")
            for task in valid:
                sdb.insert_inbound(db, row_values(task_row(task, now)))
            db.conn.commit()
    return stop - start


def build(args: argparse.Namespace, home: Path) -> Cronbox:
    store = Cronbox(home)
    have = len(store.list_sessions())
    if have == args.sessions:
        print(f"build: reusing {have} sessions in {home}")
        return store
    if have:
        sys.exit(f"{home} holds {have} sessions, not {args.sessions}; give another --home")
    began = time.perf_counter()
    chunk = 250
    jobs = [
        (str(home), start, min(start + chunk, args.sessions), args.tasks_per_session, args.seed)
        for start in range(0, args.sessions, chunk)
    ]
    done = 0
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for count in pool.imap_unordered(build_chunk, jobs):
            done += count
            if done % 2500 < chunk:
                print(f"  {done}/{args.sessions} sessions ({time.perf_counter() - began:.0f} s)")
    files = time.perf_counter() - began
    began = time.perf_counter()
    count = store.reindex()
    reindex = time.perf_counter() - began
    tasks = len(store.list_tasks())
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) / 2**20
    print(
        f"build: {count} sessions, {tasks} live tasks, {size:,.0f} MiB; session files "
        f"{files:.1f} s with {args.workers} processes; Store.reindex() {reindex:.1f} s "
        f"({reindex / max(1, count) * 1000:.2f} ms per session: the host's start-up cost)"
    )
    return store


# --- measuring -------------------------------------------------------------------------


class Connections:
    """Counts SQLite connections by file name while ``active`` (the sqlite3.connect event)."""

    def __init__(self) -> None:
        self.active = False
        self.by_file: dict[str, int] = {}
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "sqlite3.connect":
            name = Path(str(args[0]).removeprefix("file:").split("?")[0]).name
            self.by_file[name] = self.by_file.get(name, 0) + 1


async def measure_ticks(store: Cronbox, ticks: int, conns: Connections) -> dict[str, list[float]]:
    sweeper = Sweeper(store, ProcessRuntime(), Delivery(store, []), SweepConfig(), SystemClock())
    for _ in range(5):  # warm-up: thread pool, first connections
        await sweeper.tick()
    tick_times: list[float] = []
    pass_times: list[float] = []
    conns.active = True
    for _ in range(ticks):
        began = time.perf_counter()
        await sweeper.tick()
        tick_times.append(time.perf_counter() - began)
    conns.active = False
    for _ in range(ticks):
        began = time.perf_counter()
        await sweeper.tick()
        await anyio.to_thread.run_sync(sweeper._next_delay)
        pass_times.append(time.perf_counter() - began)
    if sweeper.live or sweeper.waiting:
        print(f"WARNING: the sweep started {len(sweeper.live)} runners; work was due")
    return {"tick": tick_times, "pass": pass_times}


def nanoclaw_sweep(store: Cronbox) -> tuple[float, float, int]:
    """One nanoclaw-style sweep: (list time, open-and-query time, due rows found)."""
    began = time.perf_counter()
    sessions = store.list_sessions()
    listed = time.perf_counter()
    now = fmt(store.now())
    due = 0
    for session in sessions:
        with sdb.inbound(store.session_dir(session.id), readonly=True) as db:
            due += len(sdb.due_rows(db, now))
    return listed - began, time.perf_counter() - listed, due


def run(args: argparse.Namespace, home: Path) -> None:
    store = build(args, home)
    conns = Connections()
    times = anyio.run(measure_ticks, store, args.ticks, conns)
    per_tick = {name: n / args.ticks for name, n in sorted(conns.by_file.items())}

    baseline: list[float] = []
    listing: list[float] = []
    found = 0
    for _ in range(args.baseline_iterations):
        listed, opened, found = nanoclaw_sweep(store)
        listing.append(listed)
        baseline.append(listed + opened)

    tick, full = times["tick"], times["pass"]
    base50 = statistics.median(baseline)
    print()
    print(
        f"idle sweep, {args.sessions:,} sessions x {args.tasks_per_session} future tasks "
        "(nothing due)"
    )
    table(
        ["", "runs", "p50", "p99", "max"],
        [
            ["cronbox tick()", str(len(tick)),
             *(secs(percentile(tick, q), "ms") for q in (50, 99, 100))],
            ["cronbox pass (tick + next wake)", str(len(full)),
             *(secs(percentile(full, q), "ms") for q in (50, 99, 100))],
            ["nanoclaw-style: open every inbound.db", str(len(baseline)),
             *(secs(percentile(baseline, q), "ms") for q in (50, 99, 100))],
            ["  of which listing the sessions", str(len(listing)),
             *(secs(percentile(listing, q), "ms") for q in (50, 99, 100))],
        ],
    )  # fmt: skip
    print()
    print(
        f"ratio nanoclaw-style / cronbox, p50: {ratio(base50, statistics.median(tick))} "
        f"per tick, {ratio(base50, statistics.median(full))} per pass"
    )
    print(
        f"nanoclaw-style per session: {base50 / max(1, args.sessions) * 1e6:.0f} us; "
        f"due rows it found: {found}"
    )
    print(f"SQLite connections per measured tick, by file: {per_tick or 'none'}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.home:
        args.home.mkdir(parents=True, exist_ok=True)
        run(args, args.home)
        return
    tmp = Path(tempfile.mkdtemp(prefix="cronbox-idle-"))
    try:
        run(args, tmp / "home")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
