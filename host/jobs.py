"""The host's own background jobs: backups, retention cleanup, stale-run checks.

Each job has a schedule (an interval, or a time of day in the host's zone), an enabled
flag, and a record in ``cronbox.db`` (running since, last run, last result), so
``cronbox jobs``, ``GET /api/scheduler`` and ``/health`` all see the same state. When a
job is next due is a pure function (:func:`next_run`); the host's :class:`JobRunner`
sleeps until then (or a trigger) and runs due jobs one at a time beside the sweep.

* ``backup`` — a consistent snapshot of ``cronbox.db`` and every session's
  ``inbound.db`` / ``outbound.db`` through SQLite's online backup API (never a file
  copy), as one ``backups/cronbox-YYYY-MM-DD_HH-MM-SS.tar.gz``; the newest
  ``CRONBOX_BACKUP_KEEP`` are kept. In the host it runs as one write of the one writer,
  so no host write falls between the snapshots of the central and the session files.
* ``cleanup`` — deletes runs and audit entries past ``CRONBOX_KEEP_RUNS_DAYS`` /
  ``CRONBOX_KEEP_AUDIT_DAYS`` (0 keeps forever) and finished inbox rows past
  ``CRONBOX_KEEP_FINISHED``, and audits the counts.
* ``stale-check`` — runners live but silent, rows processing past their timeout, webhooks
  whose circuit is open; reported in ``/health`` and ``cronbox status``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import anyio
from anyio.abc import TaskStatus

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import CronboxError, InvalidInput, TaskStateError
from cronbox_shared.timeutil import Clock, fmt, parse_utc, zone
from host.config import Settings
from host.service import PRUNE_BATCH, Cronbox
from host.store.records import JobRecord
from host.views import JobOut
from host.writer import Writer

log = logging.getLogger("cronbox.jobs")
BACKUPS = "backups"
ARCHIVE_RE = re.compile(r"cronbox-(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})(?:-(\d+))?\.tar\.gz")
# What an archive may hold: the central database, the agent profiles, each session's two.
_MEMBER = re.compile(
    r"cronbox\.db|agents\.toml|sessions/s-[0-9a-f]{12}/(inbox/inbound\.db|outbox/outbound\.db)"
)


class JobName(StrEnum):
    BACKUP = "backup"
    CLEANUP = "cleanup"
    STALE_CHECK = "stale-check"


class JobNotFound(CronboxError, LookupError):
    def __init__(self, name: str) -> None:
        known = ", ".join(j.value for j in JobName)
        super().__init__(f'no background job named "{name[:40]}"; the jobs are {known}')


class HomeNotEmpty(CronboxError, ValueError):
    def __init__(self, home: Path) -> None:
        super().__init__(f"{home} is not empty; restore into a new or empty directory with --home")


@dataclass(frozen=True)
class Schedule:
    """Every ``every``, or daily at ``at`` (in the host's zone)."""

    every: timedelta | None = None
    at: time | None = None

    def words(self) -> str:
        if self.at is not None:
            return f"daily at {self.at:%H:%M}"
        assert self.every is not None
        minutes = self.every.total_seconds() / 60
        return f"every {minutes:g} min" if minutes < 60 else f"every {minutes / 60:g} h"


def next_run(schedule: Schedule, last: datetime | None, now: datetime, tz: ZoneInfo) -> datetime:
    """When a job runs next: its slot after its last run, or now if that slot has passed
    (a host that was down catches up once, not once per missed slot).

    An interval job that never ran runs now; a daily job that never ran waits for its time.
    """
    if schedule.every is not None:
        return now if last is None else max(now, last + schedule.every)
    assert schedule.at is not None
    local = (last or now).astimezone(tz)
    slot = datetime.combine(local.date(), schedule.at, tz)
    if slot <= local:
        slot = datetime.combine(local.date() + timedelta(days=1), schedule.at, tz)
    first = slot.astimezone(now.tzinfo)
    return first if last is None else max(now, first)


# --- backup and restore --------------------------------------------------------------------


def _snapshot(source: Path, target: Path) -> None:
    """Copy one SQLite database with the online backup API (a consistent snapshot)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=sdb.BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def backup_home(store: Cronbox, keep: int) -> str:
    """Write one archive of the home's databases and keep the newest ``keep``; a summary."""
    home = store.home
    folder = home / BACKUPS
    folder.mkdir(exist_ok=True)
    stamp = store.now().astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d_%H-%M-%S")
    target = folder / f"cronbox-{stamp}.tar.gz"
    n = 1
    while target.exists():
        target = folder / f"cronbox-{stamp}-{n}.tar.gz"
        n += 1
    sessions = store.list_sessions()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".partial-") as tmp:
        staged = Path(tmp)
        _snapshot(home / "cronbox.db", staged / "cronbox.db")
        for session in sessions:
            directory = store.session_dir(session.id)
            for part in (sdb.INBOUND, sdb.OUTBOUND):
                if (directory / part).is_file():
                    _snapshot(directory / part, staged / sdb.SESSIONS / session.id / part)
        if (home / "agents.toml").is_file():
            (staged / "agents.toml").write_bytes((home / "agents.toml").read_bytes())
        partial = staged / "archive.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(p for p in staged.rglob("*") if p.is_file() and p != partial):
                tar.add(path, arcname=path.relative_to(staged).as_posix())
        partial.replace(target)
    removed = prune_backups(folder, keep)
    return f"{BACKUPS}/{target.name}: {len(sessions)} sessions; {removed} older archives removed"


def _age(path: Path) -> tuple[str, int]:
    """Oldest first: by the instant in the name, then by the suffix a second archive made
    within the same second gets (``-1``, ``-2``...)."""
    match = ARCHIVE_RE.fullmatch(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 0)


def prune_backups(folder: Path, keep: int) -> int:
    """Delete all but the newest ``keep`` archives; how many went."""
    archives = sorted((p for p in folder.iterdir() if ARCHIVE_RE.fullmatch(p.name)), key=_age)
    old = archives[:-keep] if keep > 0 else archives
    for path in old:
        path.unlink()
    return len(old)


def restore_home(archive: Path, home: Path) -> int:
    """Unpack a backup into an empty (or new) home; the number of sessions restored."""
    if home.exists() and any(home.iterdir()):
        raise HomeNotEmpty(home)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if not (m.isfile() and _MEMBER.fullmatch(m.name))]
            if bad or "cronbox.db" not in {m.name for m in members}:
                what = f"it holds {bad[0]!r}" if bad else "it has no cronbox.db"
                raise InvalidInput(
                    f"{archive} is not a cronbox backup ({what}); "
                    "give an archive from the backups/ folder of a home"
                )
            home.mkdir(parents=True, exist_ok=True)
            tar.extractall(home, members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InvalidInput(f"no backup archive at {archive}; check the path") from None
        raise InvalidInput(f"{archive} is not a readable cronbox backup: {exc}") from None
    sessions = [p for p in (home / sdb.SESSIONS).glob("s-*") if p.is_dir()]
    for directory in sessions:
        for sub in (sdb.WORKSPACE, sdb.OUTBOX):
            (directory / sub).mkdir(parents=True, exist_ok=True)
    return len(sessions)


# --- cleanup ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    runs_days: int
    audit_days: int
    keep_finished: timedelta


def cleanup_home(store: Cronbox, keep: Retention, actor: str = "host") -> str:
    """Delete what is past its age; the counts go to the audit log and the summary."""
    now = store.now()
    runs = (
        store.central.prune_runs(fmt(now - timedelta(days=keep.runs_days))) if keep.runs_days else 0
    )
    audit = (
        store.central.prune_audit(fmt(now - timedelta(days=keep.audit_days)))
        if keep.audit_days
        else 0
    )
    rows = 0
    for session in store.list_sessions():
        while True:
            removed = store.prune_finished(session.id, keep.keep_finished)
            rows += removed
            if removed < PRUNE_BATCH:  # a full batch may have left more behind
                break
    detail = {"runs": runs, "audit_entries": audit, "inbox_rows": rows}
    store.record_audit(actor, "cleanup", None, None, detail)
    return f"deleted {runs} runs, {audit} audit entries, {rows} finished inbox rows"


# --- stale checks -----------------------------------------------------------------------------


class SweepView(Protocol):
    """What the stale check reads of the running sweep (a :class:`host.sweep.Sweeper`)."""

    @property
    def live(self) -> Mapping[str, Any]: ...


def stale_report(
    live: Mapping[str, Any], heartbeats: Mapping[str, datetime | None], open_circuits: list[str],
    now: datetime, silent_after: timedelta,
) -> list[dict[str, str]]:  # fmt: skip
    """What looks stuck, as a pure function of what the sweep knows (tested by table).

    ``live`` maps session ids to live runners (``session``, ``handle``, ``claims``);
    ``heartbeats`` holds each runner's last heartbeat.
    """
    found = []
    for session_id, runner in sorted(live.items()):
        last = heartbeats.get(session_id) or runner.handle.started_at
        quiet = now - last
        if quiet > silent_after:
            found.append({
                "kind": "silent_runner", "session_id": session_id, "session": runner.session.name,
                "reason": f"runner {runner.handle.ref} is live but silent for "
                          f"{int(quiet.total_seconds())} s",
            })  # fmt: skip
        for claim in runner.claims:
            held = now - claim.claimed_at
            if held > claim.timeout:
                found.append({
                    "kind": "stuck_row", "session_id": session_id,
                    "session": runner.session.name,
                    "reason": f"row {claim.message_id} is processing for "
                              f"{int(held.total_seconds())} s, past its timeout",
                })  # fmt: skip
    found += [
        {"kind": "open_circuit", "webhook": url, "reason": f"the circuit of webhook {url} is open"}
        for url in open_circuits
    ]
    return found


def _heartbeat(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


async def check_stale(
    store: Cronbox, live: Mapping[str, Any], open_circuits: list[str], now: datetime,
    silent_after: timedelta,
) -> list[dict[str, str]]:  # fmt: skip
    """Read each live runner's heartbeat (off the loop) and report what looks stuck."""
    heartbeats = {
        sid: await anyio.to_thread.run_sync(_heartbeat, store.session_dir(sid) / sdb.HEARTBEAT)
        for sid in list(live)
    }
    return stale_report(dict(live), heartbeats, open_circuits, now, silent_after)


# --- the runner ------------------------------------------------------------------------------


@dataclass
class Job:
    name: JobName
    schedule: Schedule
    enabled: bool
    work: Callable[[], Awaitable[str]]


@dataclass
class JobRunner:
    """Runs the host's jobs when due (or triggered), one at a time, beside the sweep; their
    records are written through the host's one writer."""

    store: Cronbox
    writer: Writer
    clock: Clock
    tz: ZoneInfo
    jobs: dict[str, Job]
    stale: list[dict[str, str]] = field(default_factory=list)
    """What the last stale check found."""
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run due jobs until cancelled; sleep until the next is due or a trigger."""
        await self.writer(self.store.central.clear_running_jobs)
        task_status.started()
        while True:
            self._wake = anyio.Event()
            views = await self.views()
            now = self.clock.now()
            due = [
                v for v in views if v.enabled and v.next_run_at and parse_utc(v.next_run_at) <= now
            ]
            for view in due:
                await self._run(self.jobs[view.name])
            if due:
                continue
            upcoming = [parse_utc(v.next_run_at) for v in views if v.enabled and v.next_run_at]
            delay = min((t - now).total_seconds() for t in upcoming) if upcoming else 3600.0
            with anyio.move_on_after(max(0.05, min(delay, 3600.0))):
                await self._wake.wait()

    async def views(self) -> list[JobOut]:
        records = await anyio.to_thread.run_sync(self.store.central.job_states)
        return job_views(self.jobs.values(), records, self.clock.now(), self.tz)

    async def trigger(self, name: str) -> JobOut:
        """Run one job now and return its state; 409 while it is running already."""
        job = self.jobs.get(name)
        if job is None:
            raise JobNotFound(name)
        if self._lock.locked() and (await self._view(name)).running:
            raise TaskStateError(f"job {name} is running right now; wait for it to finish")
        await self._run(job)
        self._wake.set()
        return await self._view(name)

    async def _view(self, name: str) -> JobOut:
        [view] = [v for v in await self.views() if v.name == name]
        return view

    async def _run(self, job: Job) -> None:
        async with self._lock:
            started = await self.writer(
                self.store.central.job_started, job.name.value, fmt(self.clock.now())
            )
            if not started:
                raise TaskStateError(f"job {job.name} is running right now; wait for it to finish")
            ok, result = True, ""
            try:
                result = await job.work()
            except Exception as exc:  # a job's failure is its result, never the host's crash
                ok, result = False, f"{type(exc).__name__}: {exc}"
                log.exception("background job %s failed", job.name)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.writer(
                        self.store.central.job_finished, job.name.value, fmt(self.clock.now()),
                        ok, result[:2000],
                    )  # fmt: skip
            log.log(logging.INFO if ok else logging.WARNING, "job %s: %s", job.name, result)


def job_views(jobs: Any, records: list[JobRecord], now: datetime, tz: ZoneInfo) -> list[JobOut]:
    """Each job's schedule and recorded state, with its next run."""
    by_name = {r.name: r for r in records}
    views = []
    for job in jobs:
        record = by_name.get(job.name.value)
        last = parse_utc(record.last_run_at) if record and record.last_run_at else None
        nxt = next_run(job.schedule, last, now, tz) if job.enabled else None
        views.append(
            JobOut(
                name=job.name.value,
                schedule=job.schedule.words(),
                enabled=job.enabled,
                running=bool(record and record.running_since),
                last_run_at=record.last_run_at if record else None,
                last_finished_at=record.last_finished_at if record else None,
                last_ok=record.last_ok if record else None,
                last_result=record.last_result if record else None,
                next_run_at=fmt(nxt) if nxt else None,
            )
        )
    return views


def retention(settings: Settings) -> Retention:
    return Retention(
        runs_days=settings.keep_runs_days,
        audit_days=settings.keep_audit_days,
        keep_finished=timedelta(seconds=settings.keep_finished),
    )


def schedules(settings: Settings) -> dict[JobName, Schedule]:
    """Each job's schedule as configured."""
    return {
        JobName.BACKUP: Schedule(at=settings.backup_at),
        JobName.CLEANUP: Schedule(at=settings.cleanup_at),
        JobName.STALE_CHECK: Schedule(every=timedelta(seconds=settings.stale_check_every)),
    }


def host_jobs(
    store: Cronbox,
    settings: Settings,
    writer: Writer,
    stale: Callable[[], Awaitable[list[dict[str, str]]]],
    found: list[dict[str, str]],
) -> dict[str, Job]:
    """The host's jobs: backup and cleanup as writes of the one writer; the stale check
    keeps what it found in ``found`` (the runner's ``stale``)."""

    async def backup() -> str:
        return await writer(backup_home, store, settings.backup_keep)

    async def cleanup() -> str:
        return await writer(cleanup_home, store, retention(settings))

    async def stale_check() -> str:
        report = await stale()
        found[:] = report
        return f"{len(report)} problems" if report else "nothing stuck"

    work = {JobName.BACKUP: backup, JobName.CLEANUP: cleanup, JobName.STALE_CHECK: stale_check}
    off = settings.disabled_jobs()
    return {
        name.value: Job(name, schedule, name.value not in off, work[name])
        for name, schedule in schedules(settings).items()
    }


def run_here(store: Cronbox, settings: Settings, name: str) -> JobOut:
    """Run ``backup`` or ``cleanup`` in this process (no host running); its new state."""
    if name not in {j.value for j in JobName}:
        raise JobNotFound(name)
    if name == JobName.STALE_CHECK:
        raise TaskStateError(
            "stale-check looks at a running host's runners; start the host with cronbox run"
        )
    if not store.central.job_started(name, fmt(store.now())):
        raise TaskStateError(f"job {name} is running right now; wait for it to finish")
    ok, result = True, ""
    try:
        if name == JobName.BACKUP:
            result = backup_home(store, settings.backup_keep)
        else:
            result = cleanup_home(store, retention(settings), actor="cli")
    except Exception as exc:
        ok, result = False, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        store.central.job_finished(name, fmt(store.now()), ok, result[:2000])
    return list_jobs(store, settings)[[j.value for j in JobName].index(name)]


def list_jobs(store: Cronbox, settings: Settings) -> list[JobOut]:
    """Every job's schedule and recorded state (as the CLI sees it)."""
    off = settings.disabled_jobs()
    jobs = [
        Job(name, schedule, name.value not in off, _never)
        for name, schedule in schedules(settings).items()
    ]
    return job_views(jobs, store.central.job_states(), store.now(), zone(settings.timezone()))


async def _never() -> str:
    raise AssertionError("only described, never run")
