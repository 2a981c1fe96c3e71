"""The HTTP API's own process, spawned and supervised by ``cronbox run``.

The API is served by a child process so that a flood of requests shares neither the
sweep's event loop nor its GIL (issue 11: the sweep's due→start lateness must not move
while ``GET /api/tasks`` is hammered):

* the host binds and listens on the API's socket and hands it to the child; it keeps
  its own copy, so connections queue while a child starts and a restarted child serves
  the same port;
* the child reads and writes sessions and tasks itself, through the same service layer
  (:class:`host.service.Cronbox`) over its own connections to the same files, its writes
  funnelled through its own one writer — as the CLI does from its process;
* what only the host knows — ``/health``, ``/metrics``, the engine's ``/version``, the
  background jobs — and the nudge after a write, the child asks over a socket pair: one
  JSON object a line, each question with an id, so a long job trigger holds nothing up;
* the host tells the child over the same pair to stop taking writes and to close; a
  child that reads end-of-file (its host died) closes at once, so it never outlives it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ByteStream, Process, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from cronbox_shared.errors import CronboxError
from host.api_link import HostRefused, HostUnavailable, LocalHost, status_code
from host.config import Settings
from host.service import Cronbox
from host.views import HealthOut, JobOut
from host.writer import Writer

log = logging.getLogger("cronbox.http")
# A frame is one line; the metrics text is the largest one.
MAX_FRAME = 16 * 1024 * 1024
# How long the API waits for the host to answer a question (a job trigger waits longer:
# a backup of a large home takes a while).
ANSWER_WITHIN = 10.0
TRIGGER_WITHIN = 3600.0
# How long a child may take to start before the host gives up on it.
START_WITHIN = 60.0
# The pause before a child that died is started again.
RESTART_AFTER = 1.0
# Where the kernel has no idle scheduling class (see yield_cpu), the child runs at this
# niceness instead.
API_NICENESS = 10


class ApiProcessFailed(CronboxError, RuntimeError):
    def __init__(self, why: str) -> None:
        super().__init__(f"the HTTP API process could not start: {why}; its log above says why")


def _frame(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


async def _frames(stream: ByteStream) -> Any:
    """The JSON objects on ``stream``, until it ends."""
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            line = await buffered.receive_until(b"\n", MAX_FRAME)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            return
        yield json.loads(line)


# --- the host's side ---------------------------------------------------------------------------


@dataclass
class ApiProcess:
    """The child serving the API: started, answered, restarted when it dies, closed last."""

    local: LocalHost
    sock: socket.socket
    settings: Settings
    closed: anyio.Event = field(default_factory=anyio.Event)
    accepting_writes: bool = True
    _closing: bool = False
    _process: Process | None = None
    _outbox: MemoryObjectSendStream[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        # Listening from here on: connections queue while a child starts or restarts.
        self.sock.listen(1024)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve through children until :meth:`close`; ready once the first one is.

        Shielded: the host's cancellation must not cut the link while it drains (the
        child would lose its stop-writes and close), so this ends only through close.
        """
        try:
            with anyio.CancelScope(shield=True):
                await self._supervise(task_status)
        finally:
            self.sock.close()
            self.closed.set()

    async def _supervise(self, task_status: TaskStatus[None]) -> None:
        started = False
        while not self._closing:
            code = await self._child(task_status if not started else None)
            started = True
            if self._closing:
                break
            log.error("the HTTP API process exited (code %s); starting it again", code)
            await anyio.sleep(RESTART_AFTER)

    def stop_writes(self) -> None:
        """Shutdown stage one: the API refuses changes (503) while reads still answer."""
        self.accepting_writes = False
        self._control("stop-writes")

    def close(self, force: bool = False) -> None:
        """Last shutdown stage: the child finishes open requests and exits; with
        ``force`` it drops them (and is killed if it does not go)."""
        self._closing = True
        self._control("force" if force else "close")
        if force and self._process is not None and self._process.returncode is None:
            self._process.kill()

    def _control(self, what: str) -> None:
        if self._outbox is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._outbox.send_nowait({"control": what})

    async def _child(self, task_status: TaskStatus[None] | None) -> int | None:
        """One child, from spawn to exit; returns its exit code."""
        ours, theirs = socket.socketpair()
        command = [
            sys.executable, "-m", "host.api_process", str(theirs.fileno()), str(self.sock.fileno()),
        ]  # fmt: skip
        try:
            process = await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stdout=None, stderr=None,
                pass_fds=(theirs.fileno(), self.sock.fileno()),
            )  # fmt: skip
        finally:
            theirs.close()
        self._process = process
        stream = await anyio.abc.UNIXSocketStream.from_socket(ours)
        outbox, queued = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        self._outbox = outbox
        ready = anyio.Event()
        async with process, stream, anyio.create_task_group() as tg:
            tg.start_soon(self._send_all, stream, queued)
            outbox.send_nowait(
                {"settings": self.settings.model_dump(mode="json"),
                 "accepting_writes": self.accepting_writes}
            )  # fmt: skip
            if self._closing:
                outbox.send_nowait({"control": "close"})
            tg.start_soon(self._answer_all, stream, outbox, ready, tg)
            if task_status is not None:
                if await _ready_or_exited(ready, process):
                    task_status.started()
                else:
                    process.kill()
            with anyio.CancelScope(shield=True):
                code = await process.wait()
            self._outbox = None
            outbox.close()
            tg.cancel_scope.cancel()
        if task_status is not None and not ready.is_set():
            raise ApiProcessFailed(f"it exited with code {code}")
        return code

    async def _send_all(
        self, stream: ByteStream, queued: MemoryObjectReceiveStream[dict[str, Any]]
    ) -> None:
        async with queued:
            async for value in queued:
                try:
                    await stream.send(_frame(value))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    async def _answer_all(
        self, stream: ByteStream, outbox: MemoryObjectSendStream[dict[str, Any]],
        ready: anyio.Event, tg: anyio.abc.TaskGroup,
    ) -> None:  # fmt: skip
        async for question in _frames(stream):
            if question.get("ready"):
                ready.set()
                continue
            tg.start_soon(self._answer, question, outbox)

    async def _answer(
        self, question: dict[str, Any], outbox: MemoryObjectSendStream[dict[str, Any]]
    ) -> None:
        ask = question.get("ask")
        reply: dict[str, Any] = {"id": question.get("id")}
        try:
            reply["ok"] = await self._ask(ask, question)
        except CronboxError as exc:
            reply |= {"error": str(exc), "status": status_code(exc)}
        except Exception as exc:
            log.exception("the host could not answer the API's %r", ask)
            reply |= {"error": f"the host could not do this ({type(exc).__name__}); "
                      "its log has the detail", "status": 500}  # fmt: skip
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            outbox.send_nowait(reply)

    async def _ask(self, ask: object, question: dict[str, Any]) -> Any:
        local = self.local
        match ask:
            case "health":
                report, code = await local.health()
                return {"report": report.model_dump(mode="json"), "code": code}
            case "metrics":
                return (await local.metrics()).decode()
            case "engine":
                return await local.engine()
            case "jobs":
                return [j.model_dump(mode="json") for j in await local.jobs()]
            case "trigger":
                return (await local.trigger(str(question.get("job")))).model_dump(mode="json")
            case "changed":
                await local.changed()
                return None
        raise ValueError(f"unknown question {ask!r}")


async def _ready_or_exited(ready: anyio.Event, process: Process) -> bool:
    """Whether the child said it is ready before it exited (or the start timed out)."""
    with anyio.move_on_after(START_WITHIN):
        async with anyio.create_task_group() as waiting:

            async def exited() -> None:
                await process.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(exited)
            await ready.wait()
            waiting.cancel_scope.cancel()
    return ready.is_set()


# --- the child's side --------------------------------------------------------------------------


class HostClient:
    """The child's :class:`host.api_link.HostLink`: questions to the host over the pair."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._ids = itertools.count(1)
        self._waiting: dict[int, anyio.Event] = {}
        self._answers: dict[int, dict[str, Any]] = {}
        self._sending = anyio.Lock()
        self._gone = False

    async def send(self, value: dict[str, Any]) -> None:
        async with self._sending:
            await self.stream.send(_frame(value))

    async def _ask(self, ask: str, within: float = ANSWER_WITHIN, **more: Any) -> Any:
        if self._gone:
            raise HostUnavailable("it has gone")
        n = next(self._ids)
        arrived = self._waiting[n] = anyio.Event()
        try:
            try:
                await self.send({"id": n, "ask": ask, **more})
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise HostUnavailable("it has gone") from None
            with anyio.move_on_after(within):
                await arrived.wait()
            answer = self._answers.pop(n, None)
        finally:
            self._waiting.pop(n, None)
        if answer is None:
            raise HostUnavailable("it has gone" if self._gone else f"not within {within:g} s")
        if "error" in answer:
            raise HostRefused(str(answer["error"]), int(answer.get("status", 500)))
        return answer.get("ok")

    def answered(self, answer: dict[str, Any]) -> None:
        n = answer.get("id")
        if isinstance(n, int) and n in self._waiting:
            self._answers[n] = answer
            self._waiting[n].set()

    def gone(self) -> None:
        self._gone = True
        for event in self._waiting.values():
            event.set()

    async def health(self) -> tuple[HealthOut, int]:
        got = await self._ask("health")
        return HealthOut.model_validate(got["report"]), int(got["code"])

    async def metrics(self) -> bytes:
        return str(await self._ask("metrics")).encode()

    async def engine(self) -> str | None:
        got = await self._ask("engine")
        return None if got is None else str(got)

    async def jobs(self) -> list[JobOut]:
        return [JobOut.model_validate(j) for j in await self._ask("jobs")]

    async def trigger(self, job: str) -> JobOut:
        return JobOut.model_validate(await self._ask("trigger", TRIGGER_WITHIN, job=job))

    async def changed(self) -> None:
        # A nudge, not a question: the write is done whatever the host says (and the
        # host notices it on its own within its change poll), so nothing waits for it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.send({"id": 0, "ask": "changed"})


async def serve(link_fd: int, listen_fd: int) -> None:
    """The child: serve the API on the inherited socket until the host says close."""
    # Only this process serves HTTP: the host never imports the web framework.
    from host.http import Api, HttpServer

    stream = await anyio.abc.UNIXSocketStream.from_socket(link_fd)
    listening = socket.socket(fileno=listen_fd)
    client = HostClient(stream)
    frames = _frames(stream)
    hello = await anext(frames, None)
    if hello is None:
        return  # the host went before it said anything
    settings = Settings.model_validate(hello["settings"])
    store = await anyio.to_thread.run_sync(Cronbox.from_settings, settings)
    writer = Writer(settings.home)  # its writes take the home's write lock, as the host's do
    api = Api(store, writer, settings, client, accepting_writes=hello["accepting_writes"])
    server = HttpServer(api, listening)
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(server.serve)

        async def listen_to_host() -> None:
            async for frame in frames:
                match frame.get("control"):
                    case "stop-writes":
                        server.stop_writes()
                    case "close":
                        server.close()
                    case "force":
                        server.close(force=True)
                    case _:
                        client.answered(frame)
            client.gone()  # the host died or closed the pair: do not outlive it
            server.close(force=True)

        tg.start_soon(listen_to_host)
        await client.send({"ready": True})
        await server.closed.wait()
        tg.cancel_scope.cancel()


def yield_cpu() -> None:
    """Have this process take only the CPU that the sweep and the runners leave.

    Linux's ``SCHED_IDLE`` class does more than a niceness: a CPU that runs only such a
    process counts as idle, so a woken sweep thread, runner template or runner is placed
    on it and runs at once, where behind a niced process it may wait out that process's
    slice. ``scripts/bench/http_load.py`` shows the difference: with niceness 10 alone,
    a flood of ``GET /api/tasks`` made the sweep's starts 10-20 % later at the median;
    with ``SCHED_IDLE``, a few percent. The price is on a machine whose CPUs are all
    busy: there the API gets a sliver of CPU and answers slowly (a probe of
    ``/health`` waits), while the sweep keeps its time.
    """
    os.nice(API_NICENESS)
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or refused
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main() -> None:
    # The host's staged shutdown owns the signals: a Ctrl-C in the terminal reaches this
    # process too, and must not drop requests before the host has drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    yield_cpu()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(serve, int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
