"""``python -m agent_runner.forkserver``: the runner template the process runtime forks.

A fresh interpreter spends most of a runner's start importing (pydantic, sqlite-utils,
anyio, the providers). The template imports all that once and then waits on its control
socket (a ``SOCK_SEQPACKET`` socket the host keeps the other end of, its number the one argument).
Each request carries what would follow ``python`` on a runner's command line (``-m
agent_runner``, or ``-m``/``-c`` anything), its whole environment and working directory, with two
file descriptors: the runner's log (its stdout and stderr) and the runner's own status
socket. The template forks; the child makes itself a runner exactly as
``python -m agent_runner`` would start (see :func:`_become_runner`), and the template
answers ``{"pid": N}`` on the status socket, then ``{"exit": code, "cpu": seconds}`` once
it has reaped the child (a negative code for a signal, as ``subprocess`` reports it; the
CPU the child used).

The template exits when its standard input (a pipe from the host) closes, so it never
outlives its host; runners it forked do, in sessions of their own, as spawned ones do.

Linux only: ``/proc/<pid>/environ`` of a forked process shows the memory its parent's
environment was exec'd into, and the host reads a runner's labels there. So the template
is started with room to spare in that memory (``ROOM_VAR``), and each child writes its
own environment over it. A runner whose environment does not fit is refused, and the
host spawns it instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import time
import traceback
import types
from collections.abc import Mapping

import anyio
import anyio.to_thread

# What a runner imports, imported once here so a forked runner finds it loaded (not
# agent_runner.__main__ itself: ``-m agent_runner`` runs it afresh as ``__main__``).
# Eagerly, on purpose: a cold runner loads the gate scripts' machinery and the outbound
# migrations (sqlite-utils) only for a row or a file that needs them, a forked one finds
# them loaded already.
import agent_runner.gate
import agent_runner.mailbox.sqlite
import agent_runner.providers.echo
import agent_runner.runner  # noqa: F401
import cronbox_shared.sessiondb  # noqa: F401

ROOM_VAR = "CRONBOX_TEMPLATE_ROOM"
ROOM_BYTES = 32 * 1024
"""Bytes of environment a forked runner may have (its settings, labels and secrets)."""
MAX_REQUEST = 256 * 1024
READY = b"ready"

# Fields 50 and 51 of /proc/<pid>/stat: where the process's environment strings lie.
_ENV_START_FIELD = 50


def environ_block(env: Mapping[str, str]) -> bytes:
    """The environment as the kernel lays it out: ``NAME=value`` strings, NUL-terminated."""
    return b"".join(f"{name}={value}".encode() + b"\0" for name, value in env.items())


def _environ_region() -> tuple[int, int]:
    stat = open(f"/proc/{os.getpid()}/stat", "rb").read()  # noqa: SIM115 - closed by GC at once
    fields = stat.rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (the state).
    start = int(fields[_ENV_START_FIELD - 3])
    end = int(fields[_ENV_START_FIELD - 2])
    return start, end


def _room() -> int:
    start, end = _environ_region()
    return end - start


def _rewrite_environ(block: bytes) -> None:
    """Write ``block`` over the environment memory ``/proc/self/environ`` shows."""
    start, end = _environ_region()
    if len(block) > end - start:
        raise ValueError("the environment does not fit the template's room")
    ctypes.memmove(start, block + b"\0" * (end - start - len(block)), end - start)


def _run_python(args: list[str]) -> None:
    """Run what ``python ARGS`` would: ``-m MODULE ...`` or ``-c SOURCE ...``."""
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *args[2:]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(args[1], "<string>", "exec"), main.__dict__)  # what python -c does


def _become_runner(args: list[str], env: dict[str, str], cwd: str, log_fd: int, set_up: int) -> int:
    """In the forked child: turn the template into a runner, run it, return its exit code.

    What a fresh ``python -m agent_runner`` would have: its own session and process
    group, stdin on /dev/null, stdout and stderr on its log, no other descriptor of the
    template's, default signal dispositions, exactly ``env`` as its environment (in
    ``os.environ``, the C library's and ``/proc``), the zone ``TZ`` says, and fresh
    random state (``random`` reseeds itself in a forked child).
    """
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _rewrite_environ(environ_block(env))
    time.tzset()
    # Only now does the host learn the pid: it may look at the group and /proc at once.
    os.write(set_up, b"1")
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    try:
        _run_python(args)
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # noqa: T201 - what sys.exit("...") prints
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _child(args: list[str], env: dict[str, str], cwd: str, log_fd: int, set_up: int) -> None:
    code = 1
    try:
        code = _become_runner(args, env, cwd, log_fd, set_up)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code & 0xFF)


def _warm() -> None:
    """Do once what every runner would do first: load the event loop's modules, then
    freeze what is loaded, so no runner's garbage collector walks (and so copies) the
    template's objects."""
    anyio.run(anyio.sleep, 0)
    gc.collect()
    gc.freeze()


def _send(conn: socket.socket, message: dict[str, object]) -> None:
    # OSError: the host has gone or dropped this runner, and nobody is listening.
    with contextlib.suppress(OSError):
        conn.send(json.dumps(message).encode())


class Template:
    """The template's loop: fork on request, reap and report, stop with the host."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.children: dict[int, socket.socket] = {}
        self.room = _room()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    def serve(self) -> None:
        _warm()
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w)
        # The host's Ctrl-C is for the host; it closes our stdin when it goes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "host")
        selector.register(self._wake_r, selectors.EVENT_READ, "child")
        self.control.send(READY)
        while True:
            for key, _ in selector.select():
                if key.data == "host":
                    return
                if key.data == "child":
                    self._drain_wakeups()
                    self._reap()
                elif not self._request():
                    return

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                cpu = usage.ru_utime + usage.ru_stime
                _send(conn, {"exit": os.waitstatus_to_exitcode(status), "cpu": cpu})
                conn.close()

    def _request(self) -> bool:
        """Serve one request; False when the host closed the control socket."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_REQUEST, 2)
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        log_fd, status_fd = fds
        conn = socket.socket(fileno=status_fd)
        try:
            request = json.loads(data)
            env = {str(k): str(v) for k, v in dict(request["env"]).items()}
            cwd = str(request["cwd"])
            args = [str(a) for a in request["args"]]
            if len(args) < 2 or args[0] not in ("-m", "-c"):
                raise ValueError(args)
        except (ValueError, KeyError, TypeError):
            _send(conn, {"error": "malformed request"})
            conn.close()
            os.close(log_fd)
            return True
        if len(environ_block(env)) > self.room:
            _send(conn, {"error": "its environment does not fit the template"})
        else:
            set_up_r, set_up_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                _child(args, env, cwd, log_fd, set_up_w)
            os.close(set_up_w)
            os.read(set_up_r, 1)  # empty if the child died setting up: its exit tells
            os.close(set_up_r)
            self.children[pid] = conn
            _send(conn, {"pid": pid})
            conn = None  # type: ignore[assignment]
        os.close(log_fd)
        if conn is not None:
            conn.close()
        return True


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    Template(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
