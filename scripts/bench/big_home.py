"""The CLI and the host on a big home: 10,000 sessions, 100,000 tasks (issue 13, item 4).

Builds (or reuses, with ``--home``) a home of ``--sessions`` sessions holding
``--tasks-per-session`` future tasks each, then times, each beside the same command of
the code before this change (``--baseline REV``, default the merge base with ``main``,
checked out into a temporary worktree and run with the same interpreter on the same
home, in the same run):

* ``cronbox task list`` (first page) and ``cronbox task list --all --json`` (every row);
* ``cronbox status``;
* ``cronbox run`` ready (process runtime, HTTP API on a free port): from the spawn until
  the host logs that it is running, and the host's RSS then (and its peak, ``VmHWM``);
* ``cronbox --help``, beside ``python -c pass`` (the interpreter alone).

Both trees' modules are compiled to bytecode first (``compileall``), as an installed
package is: the figures are what a user's command costs, not a compile of every module
(which ``PYTHONDONTWRITEBYTECODE``, set on some machines, would otherwise add to every run).

Every figure is a median of ``--repeat`` runs of a fresh process (the page cache is warm:
the build, or the first run, read the files), in wall seconds and in CPU seconds (user
and system: of each command, and of the host process until it is ready), which other
work on a shared machine moves far less than the wall clock. Targets: first page and status ≤ 0.3 s,
ready ≤ 1.5 s, host RSS ≤ 150 MB.

How the home is built (printed separately, not measured): the first session is made
with ``Cronbox.create_session``; the others get a copy of its fresh ``inbound.db`` and
``outbound.db`` in their own directory (the schema the store made), their tasks validated with
``validate_schedule`` and written with ``sessiondb.insert_inbound`` in the row shape
``task_row`` makes, in ``--workers`` processes; the central rows go in through the
store's own schema, sessions in one transaction and the task mirror with
``SqliteCentral.apply_views`` from each session's own view, 500 sessions a transaction.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import _common
from _common import baseline_tree, children_cpu, compiled, drop_tree, ratio, table
from idle_sweep import NOT_BEFORE, task_requests

from cronbox_shared import sessiondb as sdb
from cronbox_shared.tasks import ScheduleRequest, validate_schedule
from cronbox_shared.timeutil import SystemClock, fmt
from host.service import Cronbox, Limits, task_row
from host.store.central import SqliteCentral
from host.store.files import SqliteSessionFiles, row_values
from host.store.records import SessionView

READY = "cronbox host running"
TARGETS = {"first page": 0.3, "status": 0.3, "ready": 1.5}
RSS_TARGET_MB = 150


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--tasks-per-session", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="runs of each command")
    p.add_argument("--workers", type=int, default=2, help="processes building the home")
    p.add_argument("--home", type=Path, help="keep (and reuse) the built home here")
    p.add_argument(
        "--baseline", default=None, help="git revision of the code to compare with "
        "(default: the merge base with main)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


# --- building the home ---------------------------------------------------------------


def build_chunk(job: tuple[str, bytes, bytes, int, int, int, int]) -> list[Any]:
    """Session files of sessions ``start..stop``, and each one's view (a worker process)."""
    home, template, outbox, start, stop, per_session, seed = job
    files = SqliteSessionFiles(Path(home))
    now = fmt(_now())
    ref = _now() + NOT_BEFORE
    out = []
    for index in range(start, stop):
        session_id = f"s-{index:012x}"
        directory = files.directory(session_id)
        for sub in (sdb.WORKSPACE, sdb.OUTBOX):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        inbound = directory / sdb.INBOUND
        inbound.parent.mkdir(parents=True, exist_ok=True)
        inbound.write_bytes(template)
        (directory / sdb.OUTBOUND).write_bytes(outbox)
        rng = random.Random(seed * 1_000_003 + index)
        with sdb.inbound(directory) as db:
            db.execute("BEGIN IMMEDIATE")
            for raw in task_requests(rng, index, per_session, ref):
                valid = validate_schedule(
                    ScheduleRequest.parse(raw), default_tz="UTC", now=ref,
                    min_interval=Limits().min_interval,
                )  # fmt: skip
                sdb.insert_inbound(db, row_values(task_row(valid, now)))
            db.conn.commit()
        with files.transaction(session_id) as tx:
            view = tx.view(None)
        out.append((session_id, f"big-{index:05d}", view, files.version(session_id)))
    return out


def _now() -> datetime:
    return SystemClock().now()


def build(args: argparse.Namespace, home: Path) -> None:
    store = Cronbox(home)
    have = store.central.session_count()
    if have == args.sessions:
        print(f"build: reusing {have} sessions in {home}")
        return
    if have:
        sys.exit(f"{home} holds {have} sessions, not {args.sessions}; give another --home")
    began = time.perf_counter()
    first = store.create_session("big-template")
    template = (store.session_dir(first.id) / sdb.INBOUND).read_bytes()
    outbox = (store.session_dir(first.id) / sdb.OUTBOUND).read_bytes()
    store.delete_session(first.name, actor="bench")
    chunk = 250
    jobs = [
        (str(home), template, outbox, start, min(start + chunk, args.sessions),
         args.tasks_per_session, args.seed)
        for start in range(0, args.sessions, chunk)
    ]  # fmt: skip
    central = SqliteCentral(home)
    created = fmt(_now())
    done = 0
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for built in pool.imap_unordered(build_chunk, jobs):
            with central.transaction() as db:
                db.conn.executemany(
                    "INSERT INTO sessions (id, name, agent, timezone, container, created_at, "
                    "inbound_version) VALUES (?, ?, 'echo', 'UTC', '{}', ?, ?)",
                    [(sid, name, created, version) for sid, name, _, version in built],
                )
            views: list[tuple[str, SessionView, int | None]] = [
                (sid, view, version) for sid, _, view, version in built
            ]
            central.apply_views(views, now=created)
            done += len(built)
            if done % 2500 < chunk:
                print(f"  {done}/{args.sessions} sessions ({time.perf_counter() - began:.0f} s)")
    counts = central.counts()
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) / 2**20
    print(
        f"build: {counts.get('sessions', 0)} sessions, {counts.get('tasks.pending', 0)} "
        f"pending tasks, {size:,.0f} MiB in {time.perf_counter() - began:.1f} s "
        f"({args.workers} processes)"
    )


# --- measuring -------------------------------------------------------------------------


def env_for(code: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBOX_")}
    env.update(
        PYTHONPATH=str(code), CRONBOX_HOME=str(home), CRONBOX_HTTP_PORT="0",
        CRONBOX_RUNTIME="process", COLUMNS="200",
    )  # fmt: skip
    return env


def timed(code: Path, home: Path, argv: Sequence[str]) -> tuple[float, int, float]:
    """Wall seconds of one fresh ``python -m host.cli ARGV``, its stdout's bytes and its
    CPU seconds (steadier than the wall clock on a shared machine)."""
    cpu = children_cpu()
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "host.cli", *argv], cwd=code, env=env_for(code, home),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return time.perf_counter() - began, len(done.stdout), children_cpu() - cpu


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(code: Path, home: Path) -> tuple[float, float, float, float]:
    """(seconds until ``cronbox run`` logs that it runs, its RSS then, its peak RSS in MB,
    the CPU seconds the host process used until then)."""
    # With its HTTP API on, as by default, on a port free right now.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**env_for(code, home), "CRONBOX_HTTP_PORT": str(port)}
    began = time.perf_counter()
    host = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "run", "--log-format", "json"], cwd=code,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert host.stderr is not None
        for line in host.stderr:
            if READY in line:
                took = time.perf_counter() - began
                cpu = process_cpu(host.pid)
                break
        else:
            raise RuntimeError(f"the host exited ({host.wait()}) before it was ready")
        status = Path(f"/proc/{host.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) / 1024
        peak = int(fields["VmHWM"].split()[0]) / 1024
    finally:
        host.terminate()
        host.wait(timeout=60)
    return took, rss, peak, cpu


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> None:
    args = parse_args()
    # A stopped run still removes its temporary worktree (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    scratch = None
    if args.home is not None:
        home = args.home
        home.mkdir(parents=True, exist_ok=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="cronbox-big-"))
        home = scratch / "home"
    old_tree, old_rev = baseline_tree(args.baseline)
    try:
        build(args, home)
        new = _common.REPO
        for code in (old_tree, new):
            compiled(code)
        print(f"\nbaseline: {old_rev} (a temporary worktree); {args.repeat} runs each\n")
        rows = []
        commands = {
            "task list (first page)": ["task", "list"],
            "task list --all --json": ["task", "list", "--all", "--json"],
            "status": ["status"],
            "--help": ["--help"],
        }
        figures: dict[str, tuple[float, float]] = {}
        for label, argv in commands.items():
            spans: dict[str, list[float]] = {"old": [], "new": []}
            cpus: dict[str, list[float]] = {"old": [], "new": []}
            sizes: dict[str, int] = {}
            for _ in range(args.repeat):
                for which, code in (("old", old_tree), ("new", new)):
                    took, size, cpu = timed(code, home, argv)
                    spans[which].append(took)
                    cpus[which].append(cpu)
                    sizes[which] = size
            old, now = median(spans["old"]), median(spans["new"])
            old_cpu, new_cpu = median(cpus["old"]), median(cpus["new"])
            figures[label] = (old, now)
            rows.append([label, f"{old:.3f} s", f"{now:.3f} s", ratio(old, now),
                         f"{old_cpu:.3f} s", f"{new_cpu:.3f} s", ratio(old_cpu, new_cpu),
                         f"{sizes['old']:,} / {sizes['new']:,} B"])  # fmt: skip
        floor = median([timed_floor() for _ in range(args.repeat)])
        rows.append(["python -c pass (floor)", "", f"{floor:.3f} s", "", "", "", "", ""])
        readies: dict[str, list[tuple[float, float, float, float]]] = {"old": [], "new": []}
        for _ in range(args.repeat):
            for which, code in (("old", old_tree), ("new", new)):
                readies[which].append(ready(code, home))
        old_ready = [median([r[i] for r in readies["old"]]) for i in range(4)]
        new_ready = [median([r[i] for r in readies["new"]]) for i in range(4)]
        rows.append(["cronbox run: ready", f"{old_ready[0]:.3f} s", f"{new_ready[0]:.3f} s",
                     ratio(old_ready[0], new_ready[0]), f"{old_ready[3]:.3f} s",
                     f"{new_ready[3]:.3f} s", ratio(old_ready[3], new_ready[3]), ""])  # fmt: skip
        rows.append(["host RSS at ready", f"{old_ready[1]:.0f} MB", f"{new_ready[1]:.0f} MB",
                     ratio(old_ready[1], new_ready[1]), "", "", "", ""])  # fmt: skip
        rows.append(["host peak RSS (VmHWM)", f"{old_ready[2]:.0f} MB", f"{new_ready[2]:.0f} MB",
                     ratio(old_ready[2], new_ready[2]), "", "", "", ""])  # fmt: skip
        table(["measure (median)", f"before ({old_rev})", "now", "ratio", "CPU before",
               "CPU now", "CPU ratio", "stdout"], rows)  # fmt: skip
        print()
        checks = [
            (
                "task list first page",
                figures["task list (first page)"][1],
                TARGETS["first page"],
                "s",
            ),
            ("status", figures["status"][1], TARGETS["status"], "s"),
            ("cronbox run ready", new_ready[0], TARGETS["ready"], "s"),
            ("host RSS", new_ready[1], RSS_TARGET_MB, "MB"),
        ]
        for label, value, target, unit in checks:
            verdict = "met" if value <= target else "MISSED"
            print(f"target {label} <= {target} {unit}: {value:.3f} {unit} ({verdict})")
    finally:
        drop_tree(old_tree)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def timed_floor() -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
