"""Gate scripts: a task's bash check that decides whether the agent is woken.

A task may carry a ``script``. Before the agent is invoked the runner executes it with
:func:`run_gate`, under a wall-clock timeout and a cap on how much it may print. The last
non-empty line of its stdout must be a JSON object ``{"wakeAgent": true|false, "data":
...}``: ``false`` skips the occurrence, ``true`` wakes the agent with ``data`` rendered
into its prompt. Anything else — a timeout, a non-zero exit, no output, output that is
not such an object, output over the cap — is an error and the agent is not invoked.

The script runs in its own session (so its own process group); on timeout, overflow,
cancellation, and also after it exits, the whole group is killed so that background
children neither outlive the gate nor hold its pipes open.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream

from cronbox_shared.defaults import DEFAULTS

_STDERR_TAIL_BYTES = 4 * 1024
_PREVIEW_CHARS = 500
_STDERR_LINE_CHARS = 200
_BAD_JSON_CHARS = 100

_NOT_A_VERDICT = 'gate script\'s last line must be a JSON object with a boolean "wakeAgent"'


class GateVerdict(StrEnum):
    """What a gate script decided."""

    WAKE = "wake"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate script run.

    ``data`` is the script's ``"data"`` value when the verdict is ``WAKE`` (``None`` if
    it gave none) and ``None`` otherwise. ``reason`` is one sentence saying why the
    verdict is ``ERROR``, and ``None`` for ``WAKE`` and ``SKIP``. ``output_preview`` is
    the tail of stdout, kept for the run history.
    """

    verdict: GateVerdict
    data: Any
    reason: str | None
    output_preview: str


@dataclass
class Capture:
    """What a bounded program printed: stdout, the tail of stderr, and the limit it hit."""

    stdout: bytearray
    stderr_tail: bytearray
    overflowed: bool = False
    timed_out: bool = False


async def run_gate(
    script: str,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULTS.gate_timeout,  # noqa: ASYNC109 - the gate's own budget, reported in its reason
    output_cap: int = DEFAULTS.gate_output_cap,
) -> GateResult:
    """Run ``script`` with bash in ``cwd`` and judge its output.

    ``env`` is the script's whole environment, as with :mod:`subprocess`; ``None``
    inherits the runner's. stdin is ``/dev/null``. The script is killed (with its whole
    process group) once it runs longer than ``timeout`` seconds or prints more than
    ``output_cap`` bytes to stdout; only the last 4 KiB of stderr are kept.

    Never raises for anything the script does: every failure is a ``GateResult`` with
    verdict ``ERROR``. Cancellation of the caller propagates, after the process group
    has been killed.
    """
    ooms_before = _oom_kills()
    capture, returncode = await run_bounded(
        ["bash", "-c", script], cwd=cwd, env=env, timeout=timeout, output_cap=output_cap
    )
    preview = _decode(bytes(capture.stdout))[-_PREVIEW_CHARS:]
    if capture.overflowed:
        return _error(f"gate script output exceeded {_format_size(output_cap)}", preview)
    if capture.timed_out:
        return _error(f"gate script timed out after {timeout:g} s", preview)
    assert returncode is not None
    result = judge_gate_output(returncode, bytes(capture.stdout), bytes(capture.stderr_tail))
    killed = returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    if killed and result.reason and _oom_kills() > ooms_before:
        result = _error(f"{result.reason} (out of memory: the container's memory limit)", preview)
    return result


async def run_bounded(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None,
    timeout: float,  # noqa: ASYNC109 - the program's own budget, reported by the caller
    output_cap: int,
    stdin: bytes | None = None,
) -> tuple[Capture, int | None]:
    """Run ``argv`` in its own process group, ``stdin`` fed to it (``/dev/null`` if None).

    It is killed, with its whole group, once it runs longer than ``timeout`` seconds or
    prints more than ``output_cap`` bytes to stdout (the capture says which). Returns
    the capture and the exit status (None when it was killed for a limit).
    Cancellation of the caller propagates, after the process group has been killed.
    """
    capture = Capture(stdout=bytearray(), stderr_tail=bytearray())
    # Shielded: a cancellation landing while the process is being created would leave it
    # running with nobody to kill it or close its pipes. It is honoured right after.
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    try:
        await anyio.lowlevel.checkpoint()
        assert process.stdout is not None
        assert process.stderr is not None
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as tg:

                async def read_stdout(stream: ByteReceiveStream) -> None:
                    async for chunk in stream:
                        capture.stdout += chunk
                        if len(capture.stdout) > output_cap:
                            capture.overflowed = True
                            tg.cancel_scope.cancel()
                            return

                async def feed(stream: ByteSendStream, data: bytes) -> None:
                    # A program that exits without reading all of it is no error of ours.
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await stream.send(data)
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):
                        await stream.aclose()

                if stdin is not None and process.stdin is not None:
                    tg.start_soon(feed, process.stdin, stdin)
                tg.start_soon(read_stdout, process.stdout)
                tg.start_soon(_read_stderr_tail, process.stderr, capture.stderr_tail)
                await process.wait()
                # Children the program left behind still hold the pipes; without this
                # the readers would wait for them until the timeout.
                _kill_group(process.pid)
        capture.timed_out = deadline.cancelled_caught
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                _kill_group(process.pid)
            # Closes our pipe ends (so nothing keeps reading) and reaps the process.
            await process.aclose()
            # A pipe finishes closing on the loop's next turn: give it that turn, so a
            # runner that exits right after its last gate leaves no pipe open behind it.
            await anyio.lowlevel.checkpoint()
    limited = capture.overflowed or capture.timed_out
    return capture, None if limited else process.returncode


def judge_gate_output(returncode: int, stdout: bytes, stderr: bytes) -> GateResult:
    """Decide the verdict of a gate script that finished on its own.

    A non-zero ``returncode`` is an error even when stdout ends in a valid verdict.
    Otherwise the last non-empty line of ``stdout`` must be a JSON object whose
    ``"wakeAgent"`` is a boolean.
    """
    text = _decode(stdout)
    preview = text[-_PREVIEW_CHARS:]
    if returncode != 0:
        return _error(_exit_reason(returncode, _decode(stderr)), preview)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return _error("gate script printed nothing", preview)
    last = lines[-1]
    try:
        verdict = json.loads(last)
    except ValueError:
        return _error(f"gate script's last line is not JSON: {last[:_BAD_JSON_CHARS]}", preview)
    if not isinstance(verdict, dict) or not isinstance(verdict.get("wakeAgent"), bool):
        return _error(_NOT_A_VERDICT, preview)
    if verdict["wakeAgent"]:
        return GateResult(GateVerdict.WAKE, verdict.get("data"), None, preview)
    return GateResult(GateVerdict.SKIP, None, None, preview)


async def _read_stderr_tail(stream: ByteReceiveStream, tail: bytearray) -> None:
    async for chunk in stream:
        tail += chunk
        del tail[:-_STDERR_TAIL_BYTES]


# Where the kernel counts the processes its OOM killer took in this cgroup (v2, then v1);
# in a container with a memory limit, that is how a gate killed for memory is told apart.
_OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def _oom_kills() -> int:
    """The cgroup's ``oom_kill`` count (0 where the kernel shows none)."""
    for path in _OOM_COUNTERS:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return 0


def _kill_group(pgid: int) -> None:
    # The script is its own session leader, so its pid is the process group id.
    # ESRCH (or EPERM on some kernels) means every member has already exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exit_reason(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        reason = f"gate script was killed by signal {name}"
    else:
        reason = f"gate script exited with status {returncode}"
    stderr_lines = [line.strip() for line in stderr.split("\n") if line.strip()]
    if stderr_lines:
        reason += f": {stderr_lines[-1][:_STDERR_LINE_CHARS]}"
    return reason


def _error(reason: str, preview: str) -> GateResult:
    return GateResult(GateVerdict.ERROR, None, reason, preview)


def decode_output(raw: bytes) -> str:
    """A program's output as text, undecodable bytes replaced."""
    return _decode(raw)


def exit_reason(what: str, returncode: int, stderr: bytes) -> str:
    """``<what> exited with status N: <last stderr line>`` (or killed by a signal)."""
    return _exit_reason(returncode, _decode(stderr)).replace("gate script", what, 1)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _format_size(n_bytes: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n_bytes >= size and n_bytes % size == 0:
            return f"{n_bytes // size} {unit}"
    return f"{n_bytes} bytes"
