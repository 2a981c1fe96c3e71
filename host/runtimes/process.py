"""The ``process`` runtime: each session's agent runner is a local subprocess (SPEC §7).

The embedded default: no Docker, no isolation. A runner is started in its own session
(and so its own process group), so stopping it takes along everything it spawned (gate
scripts, tools) and a Ctrl-C on the host's terminal never reaches it directly; the host
decides when runners stop.

A runner's environment is an allowlist (``cronbox_shared.environment``): its settings,
``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ``, its secrets and the labels; nothing else
of the host's environment. The "label" that marks a runner as this host's is part of
that environment: every runner gets ``CRONBOX_HOST_HOME`` and ``CRONBOX_SESSION_DIR``,
and ``<session_dir>/.runner.pid`` records its pid. A restarted host finds its runners
through the pid files and trusts a pid only when ``/proc/<pid>`` still shows that
environment and start time, so a pid the kernel has since handed to another program is
never signalled. Adoption reads ``/proc``, so it needs Linux.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread

from cronbox_shared.environment import HOME_LABEL, runner_environment
from cronbox_shared.errors import CronboxError
from cronbox_shared.sessiondb import WORKSPACE
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, SystemClock, fmt, parse_utc
from host.runtimes.base import RunnerHandle, RunnerSpec, RunnerStartFailed
from host.runtimes.forkserver import Forked, ForkServer, ForkUnavailable

__all__ = ["HOME_LABEL", "PID_FILE", "RUNNER_LOG", "SESSION_DIR_VAR", "ProcessRuntime"]

log = logging.getLogger("cronbox.runtime")

# The runner's own setting doubles as the label that names its session.
SESSION_DIR_VAR = RunnerSettings.env_name("session_dir")
PID_FILE = ".runner.pid"
RUNNER_LOG = "runner.log"
# A runner's log is rotated (one old file kept) when a runner starts and it is this big.
RUNNER_LOG_CAP = 1024 * 1024
# How much of the log's end is read for a runner's last words.
_TAIL_BYTES = 4096

# How often a stop or kill looks whether the runner is gone. The death of a process that
# is not our child (an adopted runner) has no event to wait on, so these waits poll.
_FIRST_POLL = 0.01
_MAX_POLL = 0.2


@dataclass
class _Child:
    """A runner this host process started: spawned (so it must be reaped) or forked by
    the template (which reaps it and reports its exit code)."""

    popen: subprocess.Popen[bytes] | Forked
    session_dir: Path
    finished: bool = False

    def running(self) -> bool:
        if isinstance(self.popen, Forked):
            return not self.popen.gone
        return self.popen.poll() is None


@dataclass(frozen=True)
class _Adopted:
    """What a runner found through its pid file must still look like to be ours."""

    home: Path
    session_dir: Path
    proc_start: int | None


@dataclass(frozen=True)
class _PidRecord:
    pid: int
    session_id: str
    started_at: datetime
    proc_start: int | None


class ProcessRuntime:
    """Runs ``python -m agent_runner`` (or ``argv``) as a subprocess per session.

    The exit code of a runner stays known until the next runner of its session starts.
    """

    name = "process"

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *,
        clock: Clock | None = None,
        fork: bool | None = None,
    ) -> None:
        """``argv`` replaces ``python -m agent_runner``; ``fork`` (default: when ``argv``
        is not given) forks runners from a warm template instead of spawning them, when
        ``argv`` is this interpreter's ``-m MODULE`` or ``-c SOURCE``."""
        self._argv: tuple[str, ...] = (
            tuple(argv) if argv is not None else (sys.executable, "-m", "agent_runner")
        )
        self._clock: Clock = clock or SystemClock()
        forkable = self._argv[0] == sys.executable and self._argv[1:2] in (("-m",), ("-c",))
        wanted = argv is None if fork is None else fork
        self.template: ForkServer | None = ForkServer() if wanted and forkable else None
        # Touched from worker threads (start, list_own) and the event loop alike.
        self._lock = threading.Lock()
        self._children: dict[RunnerHandle, _Child] = {}
        self._adopted: dict[RunnerHandle, _Adopted] = {}

    # -- the Runtime protocol ---------------------------------------------------------

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        return await anyio.to_thread.run_sync(self._start_sync, spec)

    async def is_running(self, handle: RunnerHandle) -> bool:
        child = self._child(handle)
        if child is not None:
            if child.running():
                return True
            if not child.finished:
                await anyio.to_thread.run_sync(self._finish_sync, child)
            return False
        alive = await anyio.to_thread.run_sync(self._foreign_alive_sync, handle)
        if not alive:
            with self._lock:
                adopted = self._adopted.pop(handle, None)
            if adopted is not None:
                await anyio.to_thread.run_sync(_kill_session_strays, adopted.session_dir)
        return alive

    async def exit_code(self, handle: RunnerHandle) -> int | None:
        child = self._child(handle)
        if child is None or await self.is_running(handle):
            return None
        return child.popen.returncode

    def cpu_used(self, handle: RunnerHandle) -> float | None:
        """CPU seconds a finished forked runner used, as its template reported; None for
        a spawned, adopted or running one."""
        child = self._child(handle)
        if child is None or not isinstance(child.popen, Forked) or child.running():
            return None
        return child.popen.cpu_seconds

    async def last_words(self, handle: RunnerHandle) -> str | None:
        child = self._child(handle)
        if child is None:
            return None
        return await anyio.to_thread.run_sync(_last_line, child.session_dir / RUNNER_LOG)

    async def stop(self, handle: RunnerHandle, grace: float) -> None:
        if not await self.is_running(handle):
            return
        # The runner alone is asked: it finishes its batch, and the gate script or agent
        # it is waiting on must not be cut short by the same signal (that would record a
        # failure instead of the retry a stopped host owes its rows). The whole group is
        # killed only if the grace runs out.
        await self._signal(handle, signal.SIGTERM, group=False)
        with anyio.move_on_after(grace):
            await self._wait_gone(handle)
            return
        await self.kill(handle)

    async def kill(self, handle: RunnerHandle) -> None:
        if not await self.is_running(handle):
            return
        await self._signal(handle, signal.SIGKILL)
        await self._wait_gone(handle)

    async def list_own(self, home: Path) -> list[RunnerHandle]:
        return await anyio.to_thread.run_sync(self._list_own_sync, home)

    def warm(self) -> None:
        """Start the runner template ahead of the first runner (blocking: call it from a
        worker thread); a template that cannot start leaves runners spawned."""
        if self.template is not None:
            try:
                self.template.warm()
            except ForkUnavailable as exc:
                log.warning("runners will be spawned until it starts: %s", exc)

    def close(self) -> None:
        """Stop the runner template; runners run on and are found again through their
        pid files."""
        if self.template is not None:
            self.template.close()

    # -- blocking halves, run in worker threads ---------------------------------------

    def _start_sync(self, spec: RunnerSpec) -> RunnerHandle:
        workspace = spec.session_dir / WORKSPACE
        labels = {SESSION_DIR_VAR: str(spec.session_dir), HOME_LABEL: str(spec.home)}
        try:
            env = runner_environment(os.environ, spec.env, spec.secrets, labels)
        except CronboxError as exc:
            raise RunnerStartFailed(spec.session_id, str(exc)) from exc
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            _rotate(spec.session_dir / RUNNER_LOG, RUNNER_LOG_CAP)
            with open(spec.session_dir / RUNNER_LOG, "ab") as log:
                log.write(f"--- runner started at {fmt(self._clock.now())} ---\n".encode())
                log.flush()
                forked = self._fork(env, workspace, log.fileno(), spec.session_id)
                popen: Forked | subprocess.Popen[bytes] = forked or subprocess.Popen(
                    self._argv,
                    cwd=workspace,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise RunnerStartFailed(spec.session_id, str(exc)) from exc

        handle = RunnerHandle(spec.session_id, str(popen.pid), self._clock.now())
        with self._lock:
            # An earlier runner of this session that has finished is of no more use.
            for old in [
                h
                for h, c in self._children.items()
                if h.session_id == spec.session_id and c.finished
            ]:
                del self._children[old]
            self._children[handle] = _Child(popen, spec.session_dir)
        record = _PidRecord(popen.pid, spec.session_id, handle.started_at, _proc_start(popen.pid))
        try:
            _write_pid_file(spec.session_dir, record)
        except OSError as exc:
            # A runner no restarted host could find would be an orphan: do not keep it.
            _killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            self._finish_sync(self._children[handle])
            raise RunnerStartFailed(spec.session_id, f"cannot write its pid file: {exc}") from exc
        return handle

    def _fork(
        self, env: dict[str, str], workspace: Path, log_fd: int, session_id: str
    ) -> Forked | None:
        """The runner forked from the template; None when it must be spawned instead."""
        if self.template is None:
            return None
        try:
            return self.template.fork(self._argv[1:], env, workspace, log_fd)
        except ForkUnavailable as exc:
            log.warning("session %s: spawning its runner: %s", session_id, exc)
            return None

    def _finish_sync(self, child: _Child) -> None:
        """Tidy up after a reaped child, once: kill what it left in its group, drop its
        pid file."""
        with self._lock:
            if child.finished:
                return
            child.finished = True
        # The group outlives its leader while a spawned gate script or tool still runs;
        # while any member lives the kernel does not reuse the group id.
        _killpg(child.popen.pid, signal.SIGKILL)
        # Gate scripts run in sessions (and groups) of their own: find them by their
        # environment, so none outlives its runner or overlaps the next attempt's gate.
        _kill_session_strays(child.session_dir)
        _remove_pid_file(child.session_dir, child.popen.pid)

    def _foreign_alive_sync(self, handle: RunnerHandle) -> bool:
        try:
            pid = int(handle.ref)
        except ValueError:
            return False
        with self._lock:
            adopted = self._adopted.get(handle)
        if adopted is None:
            return _is_runner(pid, session_id=handle.session_id)
        return _is_runner(
            pid,
            session_id=handle.session_id,
            home=adopted.home,
            session_dir=adopted.session_dir,
            proc_start=adopted.proc_start,
        )

    def _signal_foreign_sync(
        self, handle: RunnerHandle, sig: signal.Signals, group: bool = True
    ) -> None:
        if not self._foreign_alive_sync(handle):
            return
        pid = int(handle.ref)
        try:
            leads_group = os.getpgid(pid) == pid
        except ProcessLookupError:
            return
        if group and leads_group:
            _killpg(pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _list_own_sync(self, home: Path) -> list[RunnerHandle]:
        handles: list[RunnerHandle] = []
        for pid_file in sorted((home / "sessions").glob(f"*/{PID_FILE}")):
            session_dir = pid_file.parent
            record = _read_pid_file(pid_file)
            if record is None:
                pid_file.unlink(missing_ok=True)
                continue
            own = self._own_child_sync(record.pid, session_dir)
            if own is not None:
                handles.append(own)
                continue
            if _is_runner(
                record.pid,
                session_id=record.session_id,
                home=home,
                session_dir=session_dir,
                proc_start=record.proc_start,
            ):
                handle = RunnerHandle(record.session_id, str(record.pid), record.started_at)
                with self._lock:
                    self._adopted[handle] = _Adopted(home, session_dir, record.proc_start)
                handles.append(handle)
            else:
                pid_file.unlink(missing_ok=True)
        return handles

    def _own_child_sync(self, pid: int, session_dir: Path) -> RunnerHandle | None:
        """Our live child with this pid, if it is one; a finished one is tidied up."""
        with self._lock:
            matches = [
                (h, c)
                for h, c in self._children.items()
                if c.popen.pid == pid and c.session_dir == session_dir and not c.finished
            ]
        for handle, child in matches:
            if child.running():
                return handle
            self._finish_sync(child)
        return None

    # -- helpers ----------------------------------------------------------------------

    def _child(self, handle: RunnerHandle) -> _Child | None:
        with self._lock:
            return self._children.get(handle)

    async def _signal(self, handle: RunnerHandle, sig: signal.Signals, group: bool = True) -> None:
        """Signal the runner's process group, or with ``group=False`` the runner alone."""
        child = self._child(handle)
        if child is None:
            await anyio.to_thread.run_sync(self._signal_foreign_sync, handle, sig, group)
        elif child.running():
            # Not reaped yet, so the pid (and group id) cannot have been reused.
            if isinstance(child.popen, Forked):
                child.popen.send_signal(sig, group=group)
            elif group:
                _killpg(child.popen.pid, sig)
            else:
                child.popen.send_signal(sig)

    async def _wait_gone(self, handle: RunnerHandle) -> None:
        """Return once the runner is gone (callers bound the wait)."""
        step = _FIRST_POLL
        while await self.is_running(handle):
            await anyio.sleep(step)
            step = min(step * 2, _MAX_POLL)


# -- logs, /proc and pid files ---------------------------------------------------------


def _rotate(path: Path, cap: int) -> None:
    """Move a log of ``cap`` bytes or more aside (``<name>.1``, replacing an older one)."""
    try:
        if path.stat().st_size >= cap:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a log, read from its last few KiB only."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read()
    except OSError:
        return None
    lines = [line.strip() for line in tail.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("--- runner started")]
    return lines[-1][:500] if lines else None


def _kill_session_strays(session_dir: Path) -> None:
    """SIGKILL the process group of every process left running for this session (its
    runner's environment names the session directory): gate scripts start sessions of
    their own, so killing the runner's group does not reach them. Never the host's own
    group."""
    own = os.getpgrp()
    # Every process's environment is read at each runner's exit: the parse (and the
    # paths' resolution) is left to those that name this session's directory, whose
    # last part is the session id however the home is spelt.
    marks = (
        f"{HOME_LABEL}=".encode(), f"{SESSION_DIR_VAR}=".encode(), os.fsencode(session_dir.name)
    )  # fmt: skip
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        env = _proc_environ(pid, marks)
        if env is None or HOME_LABEL not in env or SESSION_DIR_VAR not in env:
            continue
        if not _same_path(env[SESSION_DIR_VAR], session_dir):
            continue
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid != own:
            _killpg(pgid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    # An empty group is fine: everything in it is already gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of ``pid``, or ``None`` if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _proc_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _proc_environ(pid: int, marks: tuple[bytes, ...] = ()) -> dict[str, str] | None:
    """``pid``'s environment; None when it is gone, unreadable or lacks one of ``marks``."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not all(mark in raw for mark in marks):
        return None
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _is_runner(
    pid: int,
    *,
    session_id: str,
    home: Path | None = None,
    session_dir: Path | None = None,
    proc_start: int | None = None,
) -> bool:
    """Whether ``pid`` is alive (not a zombie) and is a cronbox runner of this session.

    Without ``home`` any home label is accepted, and without ``session_dir`` the session
    dir only needs to be named after ``session_id``.
    """
    stat = _proc_stat(pid)
    if stat is None or stat[0] in {"Z", "X", "x"}:
        return False
    if proc_start is not None and stat[1] != proc_start:
        return False
    env = _proc_environ(pid)
    if env is None or HOME_LABEL not in env or SESSION_DIR_VAR not in env:
        return False
    if home is not None and not _same_path(env[HOME_LABEL], home):
        return False
    if session_dir is not None:
        return _same_path(env[SESSION_DIR_VAR], session_dir)
    return Path(env[SESSION_DIR_VAR]).name == session_id


def _write_pid_file(session_dir: Path, record: _PidRecord) -> None:
    payload = {
        "pid": record.pid,
        "session_id": record.session_id,
        "started_at": fmt(record.started_at),
        "proc_start": record.proc_start,
    }
    tmp = session_dir / f"{PID_FILE}.tmp"
    tmp.write_text(json.dumps(payload) + "\n")
    os.replace(tmp, session_dir / PID_FILE)


def _read_pid_file(path: Path) -> _PidRecord | None:
    try:
        data = json.loads(path.read_text())
        proc_start = data.get("proc_start")
        return _PidRecord(
            pid=int(data["pid"]),
            session_id=str(data.get("session_id") or path.parent.name),
            started_at=parse_utc(str(data["started_at"])),
            proc_start=int(proc_start) if proc_start is not None else None,
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # torn or foreign content: treat as stale


def _remove_pid_file(session_dir: Path, pid: int) -> None:
    """Remove the session's pid file if it still names ``pid`` (a newer runner's stays)."""
    path = session_dir / PID_FILE
    record = _read_pid_file(path)
    if record is not None and record.pid == pid:
        path.unlink(missing_ok=True)
