"""The host's end of the runner template (``agent_runner.forkserver``).

:class:`ForkServer` keeps one template process warm, started on first use with the
host's basic environment (nothing else of the host's) and restarted when it has died.
:meth:`ForkServer.fork` hands it a runner's environment, working directory and log and
returns a :class:`Forked`: the runner's pid and the socket on which the template reports
its exit code. A template that cannot be (re)started or refuses a runner raises
:class:`ForkUnavailable`, and the process runtime spawns that runner instead.

Blocking calls throughout: the process runtime calls them from worker threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_runner.forkserver import READY, ROOM_BYTES, ROOM_VAR
from cronbox_shared.environment import basic_environment

__all__ = ["ForkServer", "ForkUnavailable", "Forked"]

# How long the template may take to import the runner's modules and say it is ready.
READY_TIMEOUT = 30.0
# How long one fork may take to be answered with the child's pid.
FORK_TIMEOUT = 10.0
_MAX_REPLY = 4096


class ForkUnavailable(Exception):
    """The template cannot fork this runner (it cannot start, died, or refused)."""


def _proc_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in {"Z", "X", "x"}:
        return None
    return int(fields[19])


class Forked:
    """A runner the template forked: not the host's child, so its exit code comes from
    the template over ``status``. Offers what the process runtime uses of a ``Popen``."""

    def __init__(self, pid: int, status: socket.socket) -> None:
        self.pid = pid
        self._status = status
        # Dropped while its runner runs (a runtime nobody closed): close quietly.
        weakref.finalize(self, status.close)
        self._proc_start = _proc_start(pid)
        self._gone = False
        self.returncode: int | None = None
        self.cpu_seconds: float | None = None
        """The CPU the runner used, once the template has reported its exit."""

    @property
    def gone(self) -> bool:
        """Whether the runner has exited; never blocks. ``returncode`` is then its exit
        code, or None when its template died first (the runner, adopted by init, is
        then watched through ``/proc``)."""
        if not self._gone:
            self._read(block=False)
        return self._gone

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the runner is gone; its exit code (None when unknown)."""
        if not self._gone:
            self._status.settimeout(timeout)
            try:
                self._read(block=True)
            finally:
                with contextlib.suppress(OSError):
                    self._status.settimeout(None)
        return self.returncode

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Signal the runner (with ``group``, its process group), unless it is gone: its
        pid may name another process by now."""
        if not self.gone and _proc_start(self.pid) == self._proc_start:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)

    def _read(self, *, block: bool) -> None:
        try:
            data = self._status.recv(_MAX_REPLY, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            if block:
                raise
            return
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                report = json.loads(data)
                self.returncode = int(report["exit"])
                self.cpu_seconds = float(report["cpu"])
            self._done()
            return
        # The template died before the runner: it runs on, adopted by init.
        if _proc_start(self.pid) != self._proc_start or self._proc_start is None:
            self._done()
        elif block:
            while _proc_start(self.pid) == self._proc_start:
                threading.Event().wait(0.05)
            self._done()

    def _done(self) -> None:
        self._gone = True
        with contextlib.suppress(OSError):
            self._status.close()


class ForkServer:
    """One warm runner template, (re)started on demand."""

    def __init__(self, argv: tuple[str, ...] | None = None) -> None:
        self._argv = argv or (sys.executable, "-P", "-m", "agent_runner.forkserver")
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.starts = 0
        """How many templates were started (the first one, and each restart)."""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def fork(self, args: Sequence[str], env: Mapping[str, str], cwd: Path, log_fd: int) -> Forked:
        """Fork what ``python ARGS`` would run (``-m MODULE`` or ``-c SOURCE``, then its
        arguments) with exactly ``env`` in ``cwd``, stdout and stderr on ``log_fd``.

        Restarts a dead template once; raises ForkUnavailable when no template answers.
        """
        request = json.dumps({"args": list(args), "env": dict(env), "cwd": str(cwd)}).encode()
        with self._lock:
            for attempt in range(2):
                control = self._ensure()
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    socket.send_fds(control, [request], [log_fd, theirs.fileno()])
                    theirs.close()
                    ours.settimeout(FORK_TIMEOUT)
                    reply = ours.recv(_MAX_REPLY)
                except OSError as exc:
                    reply, failure = b"", str(exc)
                else:
                    failure = "it closed the connection"
                finally:
                    theirs.close()
                if reply:
                    return _forked(reply, ours)
                # The template died (perhaps while this request was on its way).
                ours.close()
                self._discard()
                if attempt:
                    raise ForkUnavailable(f"the runner template is gone: {failure}")
        raise AssertionError("unreachable")

    def _ensure(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._control is not None:
            return self._control
        self._discard()
        host_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Room in the template's environment memory for each child's own (see its doc).
        env = {**basic_environment(os.environ), ROOM_VAR: "x" * ROOM_BYTES}
        try:
            proc = subprocess.Popen(
                (*self._argv, str(template_end.fileno())),
                cwd="/",
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(template_end.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            host_end.close()
            raise ForkUnavailable(f"cannot start the runner template: {exc}") from exc
        finally:
            template_end.close()
        host_end.settimeout(READY_TIMEOUT)
        try:
            ready = host_end.recv(len(READY))
        except OSError:
            ready = b""
        if ready != READY:
            host_end.close()
            _stop(proc)
            raise ForkUnavailable("the runner template did not start")
        host_end.settimeout(None)
        self._proc, self._control = proc, host_end
        # A server nobody closed stops its template when it is collected.
        self._finalizer = weakref.finalize(self, _stop_quietly, proc, host_end)
        self.starts += 1
        return host_end

    def _discard(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None

    def warm(self) -> None:
        """Start the template now rather than at the first fork (ForkUnavailable if it
        cannot be started)."""
        with self._lock:
            self._ensure()

    def close(self) -> None:
        """Stop the template (runners it forked run on)."""
        with self._lock:
            self._discard()


def _forked(reply: bytes, status: socket.socket) -> Forked:
    answer: object = None
    try:
        answer = json.loads(reply)
        pid = int(answer["pid"])  # type: ignore[index]
    except (ValueError, KeyError, TypeError):
        status.close()
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ForkUnavailable(str(error or "the runner template refused")) from None
    status.settimeout(None)
    return Forked(pid, status)


def _stop_quietly(proc: subprocess.Popen[bytes], control: socket.socket) -> None:
    control.close()
    _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
