"""Slot hand-over in a burst (issue 13 item 2): how long a slot waits on the host.

``--sessions`` sessions (default 40) each get ``--per-session`` one-time tasks due at the
same instant, with a pool of ``--pool`` slots (default 5), so most sessions wait for a
slot. The host runs in this process with the ``process`` runtime and the production
sweep timings. Measured from the host's own log records and the runners' acks:

* last ack -> SIGTERM: a runner's last ack (its ``updated_at``) to the sweep deciding
  that it yields its slot to a waiting session;
* exit -> next spawn: the host settling the stopped runner's exit to the next runner
  start;
* the burst's wall time and tasks/s.

Each figure is printed for the runners tended one after another (``tend_concurrency=1``,
the old path; settling an evicted runner at its exit is kept) and concurrently (4 at
once, and 8, the default), in alternating rounds of the same run.

Usage: python scripts/bench/handover.py [--sessions 40] [--pool 5] [--per-session 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import percentile, ratio, secs, table

from cronbox_shared.timeutil import fmt, parse_utc
from host.daemon import sweep_config
from host.service import Cronbox
from tests.hosting import acks, make_settings, running_host, wait_for


class Events(logging.Handler):
    """When the sweep yielded a slot, settled an exit, started a runner (per session)."""

    def __init__(self) -> None:
        super().__init__()
        self.yielded: dict[str, float] = {}
        self.exited: list[float] = []
        self.started: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        session = getattr(record, "session_id", None)
        if "yields its slot" in message and session:
            self.yielded.setdefault(session, record.created)
        elif message.endswith("runner finished"):
            self.exited.append(record.created)
        elif message.endswith(" started") and "runner" in message:
            self.started.append(record.created)


@dataclass(frozen=True)
class Burst:
    wall: float
    rate: float
    sigterm: list[float]
    spawn: list[float]


async def burst(args: argparse.Namespace, home: Path, concurrency: int) -> Burst:
    settings = make_settings(home, max_containers=args.pool, idle_timeout=1.0)
    sweep = replace(sweep_config(settings), tend_concurrency=concurrency)
    store = Cronbox.from_settings(settings)
    sessions = [store.create_session(f"b{i:03d}").id for i in range(args.sessions)]
    due = store.now() + timedelta(seconds=2 + 0.01 * args.sessions * args.per_session)
    tasks: dict[str, list[str]] = {}
    for sid in sessions:
        tasks[sid] = [
            store.schedule_task(sid, {"prompt": f"p{n}", "processAfter": fmt(due)}).id
            for n in range(args.per_session)
        ]
    events = Events()
    sweep_log = logging.getLogger("cronbox.sweep")
    sweep_log.addHandler(events)
    sweep_log.setLevel(logging.INFO)
    sweep_log.propagate = False
    try:
        async with running_host(settings, sweep) as sweeper:
            await wait_for(lambda: due <= store.now(), limit=120)
            began = time.perf_counter()
            total = args.sessions * args.per_session
            await wait_for(
                lambda: sum(r.outcome is not None for t in tasks.values() for i in t
                            for r in store.runs_for(i)) >= total,
                limit=600,
            )  # fmt: skip
            wall = time.perf_counter() - began
            await wait_for(lambda: not sweeper.live, limit=120)
    finally:
        sweep_log.removeHandler(events)
        sweep_log.propagate = True
    to_sigterm = []
    for sid, at in events.yielded.items():
        done = [parse_utc(a["updated_at"]).timestamp() for a in acks_all(store, sid, tasks[sid])]
        if done and max(done) <= at:
            to_sigterm.append(at - max(done))
    spawns = sorted(events.started)
    to_spawn = []
    for exit_at in events.exited:
        later = [s for s in spawns if s >= exit_at]
        if later:
            to_spawn.append(later[0] - exit_at)
    return Burst(wall, total / wall, to_sigterm, to_spawn)


def pooled(runs: list[Burst]) -> Burst:
    """The rounds of one mode: median wall time, every hand-over."""
    walls = sorted(r.wall for r in runs)
    wall = walls[len(walls) // 2]
    return Burst(
        wall, runs[0].rate * runs[0].wall / wall,
        [x for r in runs for x in r.sigterm], [x for r in runs for x in r.spawn],
    )  # fmt: skip


def acks_all(store: Cronbox, session_id: str, message_ids: list[str]) -> list[dict[str, str]]:
    return [a for m in message_ids for a in acks(store, session_id, m)]


async def main(args: argparse.Namespace) -> None:
    modes = {"one after another (old path)": 1, "concurrent, 4 at once": 4,
             "concurrent, 8 at once (default)": 8}  # fmt: skip
    rounds: dict[str, list[Burst]] = {label: [] for label in modes}
    # Alternating rounds, so a change in the machine's load hits every mode alike.
    for _ in range(args.rounds):
        for label, concurrency in modes.items():
            with tempfile.TemporaryDirectory(prefix="cronbox-handover-") as tmp:
                rounds[label].append(await burst(args, Path(tmp) / "home", concurrency))
    results = {label: pooled(runs) for label, runs in rounds.items()}
    old, new = results[next(iter(modes))], results[list(modes)[-1]]
    print(
        f"burst: {args.sessions} sessions x {args.per_session} one-time tasks due at once, "
        f"pool {args.pool}, {args.rounds} alternating rounds per mode (median wall time)"
    )
    rows = [
        [label, f"{r.wall:.1f} s", f"{r.rate:.1f}",
         secs(percentile(r.sigterm, 50)), secs(percentile(r.sigterm, 99)),
         secs(percentile(r.spawn, 50)), secs(percentile(r.spawn, 99))]
        for label, r in results.items()
    ]  # fmt: skip
    table(
        ["tending", "wall", "tasks/s", "ack->SIGTERM p50", "p99", "exit->spawn p50", "p99"],
        rows,
    )
    print(
        f"ratio old / concurrent: wall {ratio(old.wall, new.wall)}, ack->SIGTERM p50 "
        f"{ratio(percentile(old.sigterm, 50), percentile(new.sigterm, 50))}, exit->spawn p50 "
        f"{ratio(percentile(old.spawn, 50), percentile(new.spawn, 50))}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=40)
    p.add_argument("--per-session", type=int, default=3)
    p.add_argument("--pool", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of each mode")
    return p.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TZ", "UTC")
    anyio.run(main, parse_args())
