"""A burst: 2,000 due one-time tasks over 200 sessions, with a pool of 16.

One home is built (``--sessions`` sessions with ``--tasks-per-session`` one-time tasks
each, ``echo`` agent, all due by the time a host starts) and copied for each scenario,
which runs a real host (``python -m host.cli run``, ``process`` runtime, HTTP off,
idle timeout 1 s) on its copy:

* **now**: runners forked from the template, change signals, pool ``--pool``;
* **before**: the same pool with the code paths this release replaced: every runner a
  fresh interpreter (``CRONBOX_FORK_SERVER=0``) and polling (``CRONBOX_CHANGE_SIGNAL=0``);
* **nanoclaw's algorithm**: no pool (every session's runner at once) and fresh
  interpreters, woken by one tick. The tick is the host's start here; nanoclaw's 60 s
  tick also makes work wait for it, 30 s at the median, shown beside;
* **today's code** (``--baseline REV``, by default ``1bbd9fc``: main as the speed issue
  measured it, before its first change): the same pool, the host and runners of that
  revision (a temporary worktree), on a home that revision built.

Every home is built by its own code, through the service (``create_session``,
``schedule_task``), and every run is read from ``cronbox.db`` with a plain read-only
query, so no code migrates another's home.

Per scenario: wall time from the host's start to the last run recorded (the host's own
``finished_at``), tasks/s and sessions/s, outcomes, and the peak memory of the host with
every process under it, sampled twice a second: RSS summed (shared pages counted in
every process) and PSS summed (shared pages split among the processes mapping them);
and the CPU time of the host with every process under it, which does not depend on what
else the machine runs at the time (the wall time does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import (
    REPO,
    baseline_tree,
    children_cpu,
    compiled,
    cpu_seconds,
    descendants,
    drop_tree,
    host_process,
    memory_kib,
    ratio,
    table,
    tree_python,
)

from cronbox_shared.timeutil import parse_utc

NOW = "now (fork server, change signals)"
BEFORE = "before (fresh interpreters, polling)"
NANOCLAW = "nanoclaw's algorithm (no pool, one tick)"
NANOCLAW_TICK_MEDIAN = 30.0  # a 60 s tick makes due work wait half of it at the median
TODAY = "today's code ({rev}: fresh interpreters, polling)"
# Main as the speed issue measured it: the commit its work branched from (the fork
# server, its first change, is a child of it).
ISSUE_BASELINE = "1bbd9fc"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--tasks-per-session", type=int, default=10)
    p.add_argument("--pool", type=int, default=16, help="CRONBOX_MAX_CONTAINERS")
    p.add_argument("--skip-nanoclaw", action="store_true", help="leave the no-pool baseline out")
    p.add_argument("--baseline", default=ISSUE_BASELINE, help="the revision of today's code")
    p.add_argument("--skip-baseline", action="store_true", help="leave today's code out")
    p.add_argument("--limit", type=float, default=600.0, help="seconds a scenario may take")
    return p.parse_args()


# Run by the code whose home it builds (``python -c`` in that tree): the service's own
# calls, which every revision compared here has.
BUILD = """
import json, sys
from pathlib import Path
from host.service import Cronbox
home, sessions, per_session = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = Cronbox(home)
tasks = {}
for i in range(sessions):
    session = store.create_session(f"burst-{i}", agent="echo")
    tasks[session.id] = [
        store.schedule_task(session.id, {"prompt": f"task {j}", "processAfter": "now"}).id
        for j in range(per_session)
    ]
json.dump(tasks, sys.stdout)
"""


def build(code: Path, home: Path, sessions: int, per_session: int) -> dict[str, list[str]]:
    """A home of ``sessions`` sessions with ``per_session`` one-time tasks due now each,
    built by the code in ``code``; the task ids of each session."""
    python = sys.executable if code == REPO else str(tree_python(code))
    done = subprocess.run(
        [python, "-c", BUILD, str(home), str(sessions), str(per_session)],
        cwd=code, env={**os.environ, "TZ": "UTC"}, check=True, capture_output=True, text=True,
    )  # fmt: skip
    tasks: dict[str, list[str]] = json.loads(done.stdout)
    return tasks


def finished_runs(home: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(session, message) -> (outcome, finished_at) of every finished run, read-only."""
    path = home / "cronbox.db"
    if not path.exists():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        rows = conn.execute(
            "SELECT session_id, message_id, outcome, finished_at FROM runs "
            "WHERE outcome IS NOT NULL AND finished_at IS NOT NULL"
        ).fetchall()
    conn.close()
    return {(sid, mid): (outcome, at) for sid, mid, outcome, at in rows}


@dataclass(frozen=True)
class Result:
    wall: float
    """Seconds from the host's start to the last run's ``finished_at``."""
    rss_kib: int
    pss_kib: int
    outcomes: dict[str, int]
    cpu: float
    """CPU seconds of the host and every process under it (reaped in turn), start to exit."""
    host_cpu: float
    """The host's own share of ``cpu`` (all its threads), up to the last run."""


def run(
    home: Path, tasks: dict[str, list[str]], env: dict[str, str], limit: float,
    code: Path | None = None,
) -> Result:  # fmt: skip
    started = time.time()
    peak_rss = peak_pss = 0
    pending = {(sid, mid) for sid, ids in tasks.items() for mid in ids}
    finished: list[datetime] = []
    outcomes: Counter[str] = Counter()
    last_look = 0.0
    cpu_before = children_cpu()
    host_cpu = 0.0
    with host_process(env, home / "host.log", code) as host:
        while pending:
            if time.time() - started > limit:
                raise TimeoutError(f"{len(pending)} tasks still open")
            host_cpu = cpu_seconds(host.pid) or host_cpu
            mem = [memory_kib(p) for p in [host.pid, *descendants(host.pid)]]
            peak_rss = max(peak_rss, sum(r for r, _ in mem))
            peak_pss = max(peak_pss, sum(p for _, p in mem))
            if time.time() - last_look >= 1.0:
                last_look = time.time()
                for key, (outcome, at) in finished_runs(home).items():
                    if key in pending:
                        pending.discard(key)
                        finished.append(parse_utc(at))
                        outcomes[outcome] += 1
            time.sleep(0.5)
    wall = max(finished).timestamp() - started
    return Result(wall, peak_rss, peak_pss, dict(outcomes), children_cpu() - cpu_before, host_cpu)


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="cronbox-burst-"))
    built = time.perf_counter()
    tasks = build(REPO, root / "template", args.sessions, args.tasks_per_session)
    total = sum(map(len, tasks.values()))
    print(
        f"{total} one-time tasks over {len(tasks)} sessions "
        f"(built in {time.perf_counter() - built:.0f} s)\n"
    )
    base = {
        "TZ": "UTC", "CRONBOX_HTTP_PORT": "0", "CRONBOX_IDLE_TIMEOUT": "1",
        "CRONBOX_MAX_CONTAINERS": str(args.pool),
    }  # fmt: skip
    scenarios = {
        NOW: {},
        BEFORE: {
            "CRONBOX_FORK_SERVER": "0",
            "CRONBOX_CHANGE_SIGNAL": "0",
        },
    }
    if not args.skip_nanoclaw:
        scenarios[NANOCLAW] = {
            "CRONBOX_FORK_SERVER": "0", "CRONBOX_CHANGE_SIGNAL": "0",
            "CRONBOX_MAX_CONTAINERS": str(len(tasks)),
        }  # fmt: skip
    results: dict[str, Result] = {}
    for name, extra in scenarios.items():
        home = root / f"home-{len(results)}"
        shutil.copytree(root / "template", home)
        env = {**base, "CRONBOX_HOME": str(home), **extra}
        results[name] = run(home, tasks, env, args.limit)
        shutil.rmtree(home, ignore_errors=True)
    today = None
    if not args.skip_baseline:
        tree, rev = baseline_tree(args.baseline)
        try:
            compiled(tree)
            home = root / "home-today"
            old_tasks = build(tree, home, args.sessions, args.tasks_per_session)
            today = TODAY.format(rev=rev)
            env = {**base, "CRONBOX_HOME": str(home)}
            results[today] = run(home, old_tasks, env, args.limit, code=tree)
        finally:
            drop_tree(tree)

    rows = [
        [
            name, f"{r.wall:.1f} s", f"{total / r.wall:.1f}", f"{len(tasks) / r.wall:.2f}",
            f"{r.cpu:.1f} s", f"{r.host_cpu:.1f} s", f"{r.cpu / total * 1000:.1f} ms",
            f"{r.rss_kib / 1024:,.0f} MiB", f"{r.pss_kib / 1024:,.0f} MiB",
            ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())),
        ]
        for name, r in results.items()
    ]  # fmt: skip
    table(
        ["scenario", "wall", "tasks/s", "sessions/s", "CPU", "host's", "CPU/task", "peak RSS",
         "peak PSS", "outcomes"],
        rows,
    )  # fmt: skip
    now = results[NOW]
    print(f"\nnow vs before: {ratio(results[BEFORE].wall, now.wall)} the tasks/s")
    if today is not None:
        print(f"now vs {today}: {ratio(results[today].wall, now.wall)} the tasks/s (target >= 5x)")
    if NANOCLAW in results:
        nano = results[NANOCLAW].wall
        print(
            f"now vs nanoclaw's algorithm from its tick: {ratio(nano, now.wall)} in wall time; "
            f"counting the tick's wait ({NANOCLAW_TICK_MEDIAN:.0f} s at the median): "
            f"{ratio(nano + NANOCLAW_TICK_MEDIAN, now.wall)}"
        )
    print(
        f"peak tree memory now: RSS {now.rss_kib / 1024:,.0f} MiB, PSS {now.pss_kib / 1024:,.0f} "
        "MiB (target: RSS < 1 GiB)"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
