"""``cronbox run``: the host process — one per home, composed in one task group.

Start-up re-derives the sessions whose files changed after their central view (a host
that died between the two writes) and adopts or reaps the runners a previous host left
behind, while the API's process starts. Shutdown
is staged: the HTTP API stops taking changes (it answers 503 to writes, reads still
work), the sweep stops waking sessions, running runners finish within a grace period
(their last replies delivered) and are then stopped — rows they leave claimed go back
to ``pending`` with a retry — and only then does the HTTP server close.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from cronbox_shared import sessiondb as sdb
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.errors import HostAlreadyRunning
from cronbox_shared.timeutil import Clock, SystemClock, fmt, zone
from host.api_link import LocalHost, bind, check_bind
from host.api_process import ApiProcess
from host.config import Settings
from host.delivery import ChannelRetry, ConsoleChannel, Delivery
from host.gateway import Gateways
from host.jobs import JobRunner, check_stale, host_jobs
from host.limits import ContainerLimits, check_limits
from host.metrics import Metrics
from host.runtimes import ProcessRuntime, Runtime, get_runtime
from host.service import Cronbox
from host.status import LOCK, STATUS
from host.store.base import ChangeFeed
from host.store.central import CENTRAL
from host.sweep import SweepConfig, Sweeper, outbox_sessions
from host.webhook import WebhookChannel
from host.writer import OutsideCommits, Writer

log = logging.getLogger("cronbox.host")
CHANGE_POLL = 0.2
# After a signal that cronbox.db changed, the feed is read again this long after it, and
# after each of these (seconds): the signal can come before the commit is visible.
CENTRAL_RECHECKS = (0.005, 0.02, 0.1, 0.5, 2.0)
# The change signal's tags for cronbox.db and the doorbell (the sweep's outboxes have theirs).
CENTRAL_CHANGED = "central"
BELL_RANG = "bell"
_STATUS_LOCK = threading.Lock()
# How long the HTTP server may take to finish open requests once the host has drained.
HTTP_CLOSE_GRACE = 10.0


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold the one-host-per-home lock; raise HostAlreadyRunning when another host has it."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = int(path.read_text().strip() or 0) or None
            except (OSError, ValueError):
                pid = None
            raise HostAlreadyRunning(str(home), pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


PROCESS_TRUST = (
    "the process runtime gives no isolation: runners run as this host's own uid and can "
    "write cronbox.db and every session's files; use CRONBOX_RUNTIME=docker for agents "
    "you do not trust"
)


def sweep_config(settings: Settings) -> SweepConfig:
    return SweepConfig(
        sweep_interval=settings.sweep_interval,
        max_containers=settings.max_containers,
        idle_timeout=settings.idle_timeout,
        task_timeout=settings.task_timeout,
        keep_finished=settings.keep_finished,
        outbox_stall=settings.outbox_stall,
        change_signal=settings.change_signal,
        idle_poll=settings.idle_poll,
    )


def seed_demo(store: Cronbox) -> None:
    """A demo session with a recurring task and a gated task, so a newcomer sees answers."""
    if any(s.name == "demo" for s in store.list_sessions()):
        return
    session = store.create_session("demo", agent="echo")
    store.schedule_task(
        session.id,
        {"taskId": "demo-every-minute", "prompt": "Say hello: this task runs every minute.",
         "recurrence": "* * * * *"},
    )  # fmt: skip
    store.schedule_task(
        session.id,
        {
            "taskId": "demo-gated",
            "prompt": "Report the number the gate script found.",
            "recurrence": "* * * * *",
            "script": 'n=$((RANDOM % 10)); if [ "$n" -lt 5 ]; then '
            'echo \'{"wakeAgent": true, "data": {"number": \'"$n"\'}}\'; '
            "else echo '{\"wakeAgent\": false}'; fi",
        },
    )
    store.send_message(session.id, "Hello! Is anyone there?")


def status_of(
    store: Cronbox, sweeper: Sweeper, settings: Settings, http: str | None = None,
    stale: list[dict[str, str]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The pool's state for ``cronbox status``, taken on the event loop: the sweep
    changes its live runners there, so no other thread may walk them."""
    return {
        "pid": os.getpid(),
        "updated_at": fmt(store.now()),
        "runtime": settings.runtime,
        "http": http,
        "max_containers": settings.max_containers,
        "live": [
            {
                "session_id": sid,
                "session": r.session.name,
                "ref": r.handle.ref,
                "started_at": fmt(r.handle.started_at),
                "busy": r.busy,
            }
            for sid, r in sweeper.live.items()
        ],
        "waiting": sorted(sweeper.waiting),
        "started_total": sweeper.started_total,
        "engine_down": sweeper.engine_down,
        "problems": [
            {"session_id": sid, "session": p.session, "reason": p.reason, "at": fmt(p.at)}
            for sid, p in sorted(sweeper.problems.items())
        ],
        "stale": stale or [],
    }


def write_status(home: Path, status: dict[str, Any]) -> None:
    """Publish the state :func:`status_of` took (written atomically, in a worker thread)."""
    tmp = home / (STATUS + ".tmp")
    # The status loop's last write may still be running in its thread when shutdown
    # writes the final one: one at a time, so neither renames the other's file away.
    with _STATUS_LOCK:
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(home / STATUS)


async def run_host(
    settings: Settings,
    *,
    clock: Clock | None = None,
    demo: bool = False,
    sweep: SweepConfig | None = None,
    http_socket: socket.socket | None = None,
    task_status: TaskStatus[Sweeper] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the host until SIGINT/SIGTERM (or cancellation), then shut down in stages.

    The HTTP API listens on ``http_socket`` when given (tests bind an ephemeral port),
    else on ``CRONBOX_HTTP_HOST``:``CRONBOX_HTTP_PORT`` unless the port is 0.
    """
    clock = clock or SystemClock()
    check_bind(settings)
    with home_lock(settings.home):
        store = await anyio.to_thread.run_sync(
            partial(Cronbox.from_settings, settings, clock=clock)
        )
        if demo:
            await anyio.to_thread.run_sync(seed_demo, store)
        runtime = await anyio.to_thread.run_sync(ready_runtime, settings, clock)
        writer = Writer(settings.home)
        metrics = Metrics()
        webhook = WebhookChannel(
            timeout=settings.webhook_timeout, threshold=settings.webhook_failures,
            cooldown=settings.webhook_cooldown, clock=clock,
        )  # fmt: skip
        retry = ChannelRetry(
            base=timedelta(seconds=settings.delivery_retry_base),
            max_attempts=settings.delivery_attempts,
        )
        delivery = Delivery(store, [ConsoleChannel(), webhook], writer, retry, metrics)
        gateways = Gateways(store, writer)
        config = sweep or sweep_config(settings)
        changes = watch_home(settings.home) if config.change_signal else None
        sweeper = Sweeper(
            store,
            runtime,
            delivery,
            config,
            clock,
            metrics=metrics,
            gateways=gateways,
            changes=changes,
        )
        silent_after = timedelta(seconds=sweeper.config.heartbeat_ceiling / 2)
        stale: list[dict[str, str]] = []

        async def look_for_stale() -> list[dict[str, str]]:
            return await check_stale(
                store, sweeper.live, webhook.open_circuits(), clock.now(), silent_after
            )

        jobs = JobRunner(
            store, writer, clock, zone(settings.timezone()),
            host_jobs(store, settings, writer, look_for_stale, stale), stale,
        )  # fmt: skip
        http: ApiProcess | None = None
        if http_socket is not None or settings.http_port:
            local = LocalHost(store, sweeper, settings, metrics, runtime=runtime, jobs_=jobs)
            if http_socket is None:
                http_socket = await anyio.to_thread.run_sync(bind, settings)
            http = ApiProcess(local, http_socket, settings)
        address = http.address if http else None
        async with AsyncExitStack() as stack:
            stack.callback(runtime.close)
            stack.callback(writer.close)
            if changes is not None:
                stack.callback(changes.close)
            # The API's process is supervised outside the host's task group: it keeps
            # answering (reads, and 503 for writes) while the host drains, and closes last.
            serving = await stack.enter_async_context(anyio.create_task_group())
            async with anyio.create_task_group() as starting:
                if http is not None:
                    stack.push_async_callback(_close_http, http, serving)
                    # The API's process starts (its imports, on the other core) while
                    # the host recovers; its socket already queues connections.
                    starting.start_soon(serving.start, http.run)
                await sweeper.recover()
            if isinstance(runtime, ProcessRuntime):
                # So that the first due task does not wait for the template's imports.
                serving.start_soon(anyio.to_thread.run_sync, runtime.warm)
            # Model gateways close after the runners they serve have drained.
            await serving.start(gateways.run)
            stack.callback(gateways.close)
            watcher = store.watch_changes()
            stack.callback(watcher.close)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(sweeper.run)
            await tg.start(jobs.run)
            tg.start_soon(_watch, store, sweeper, settings, watcher, writer, address, stale)
            tg.start_soon(_signals, sweeper, tg.cancel_scope, http)
            log.info(
                "cronbox host running on %s (runtime %s, pool %d%s)",
                settings.home, settings.runtime, settings.max_containers,
                f", API on {address}" if address else "",
            )  # fmt: skip
            if settings.runtime == "process":
                log.warning(PROCESS_TRUST)
            task_status.started(sweeper)
            try:
                await anyio.sleep_forever()
            finally:
                if http is not None:
                    http.stop_writes()
                sweeper.stop_accepting()
                log.info("shutting down: waiting for %d runners", len(sweeper.live))
                await sweeper.drain()
                with anyio.CancelScope(shield=True):
                    await webhook.aclose()
                    status = status_of(store, sweeper, settings, address, stale)
                    await anyio.to_thread.run_sync(write_status, store.home, status)
        # Only now: the HTTP server closed last, as the exit stack unwound.
        log.info("cronbox host stopped")


def ready_runtime(settings: Settings, clock: Clock) -> Runtime:
    """The configured runtime, checked ready: for docker, an engine and the agent image
    (EngineUnavailable or ImageMissing otherwise, each one sentence)."""
    if settings.runtime != "docker":
        return get_runtime(settings.runtime, clock=clock, fork=settings.fork_server)
    from host.runtimes.docker import DockerConfig, DockerRuntime, default_image

    defaults = ContainerLimits(
        network=settings.docker_network, memory=settings.docker_memory,
        cpus=settings.docker_cpus, pids=settings.docker_pids,
    )  # fmt: skip
    config = DockerConfig(
        image=settings.image or default_image(), defaults=check_limits(defaults),
        user=settings.docker_user,
    )  # fmt: skip
    runtime = DockerRuntime(config, clock=clock)
    runtime.check_ready()
    return runtime


async def _close_http(http: ApiProcess, serving: anyio.abc.TaskGroup) -> None:
    """Last stage: let open requests finish (briefly), then stop listening."""
    http.close()
    with anyio.move_on_after(HTTP_CLOSE_GRACE, shield=True) as waited:
        await http.closed.wait()
    if waited.cancelled_caught:
        log.warning("HTTP requests still open after %.0f s; closing them", HTTP_CLOSE_GRACE)
        http.close(force=True)
        with anyio.CancelScope(shield=True):
            await http.closed.wait()
    serving.cancel_scope.cancel()


async def _watch(
    store: Cronbox, sweeper: Sweeper, settings: Settings, watcher: ChangeFeed, writer: Writer,
    address: str | None = None, stale: list[dict[str, str]] | None = None,
) -> None:  # fmt: skip
    """Wake the sweep when another process commits to the store, rings a session's
    doorbell or writes a watched outbox; publish status.

    With change signals, the host's own commits are taken off the feed as the writer
    makes them (:class:`OutsideCommits`); one of another process that lands in the
    instant of a host write is taken with it, so the sweep is also woken when the
    store's next wake moved before the one it sleeps until.
    """
    last_status = ""
    changes = sweeper.changes
    outside = OutsideCommits(watcher)
    if changes is not None:
        outside.follow(writer)

    def changed() -> bool:
        if outside.changed():
            return True
        return changes is not None and sweeper.sleeps_past(store.next_wake())

    rechecks: list[float] = []
    # What the last wait saw change; None (the first pass, a fallback poll, a recheck)
    # looks at everything. An outbox's write alone (hundreds a second in a burst) asks
    # neither cronbox.db nor the doorbell again.
    tags: set[str] | None = None
    while True:
        if (tags is None or CENTRAL_CHANGED in tags) and await anyio.to_thread.run_sync(changed):
            sweeper.wake()
            rechecks = []
        if tags is None or BELL_RANG in tags:
            sweeper.rang(await anyio.to_thread.run_sync(store.rung_sessions))
        snapshot = repr(
            (sorted(sweeper.live), sorted(sweeper.waiting), sweeper.started_total,
             sorted(sweeper.problems.items()), sweeper.engine_down, stale)
        )  # fmt: skip
        if snapshot != last_status:
            status = status_of(store, sweeper, settings, address, stale)
            await anyio.to_thread.run_sync(write_status, store.home, status)
            last_status = snapshot
        if changes is None:
            await anyio.sleep(CHANGE_POLL)
            continue
        tags = None
        with anyio.move_on_after(rechecks.pop(0) if rechecks else sweeper.config.idle_poll):
            tags = await changes.wait()
            if written := outbox_sessions(tags):
                sweeper.outboxes_written(written)
            if CENTRAL_CHANGED in tags:
                # The WAL's write is signalled before its commit shows (SQLite makes it
                # visible after its fsync): look again a few times after it.
                rechecks = list(CENTRAL_RECHECKS)


def watch_home(home: Path) -> ChangeWatch | None:
    """A change signal on cronbox.db (commits of other processes) and the doorbell; the
    sweep adds the outboxes of its runners. None without inotify: the host then polls."""
    changes = ChangeWatch.open()
    if changes is None:
        return None
    if changes.add(home, (CENTRAL,), CENTRAL_CHANGED) and changes.add(
        home / sdb.DOORBELL, (), BELL_RANG
    ):
        return changes
    changes.close()
    return None


async def _signals(sweeper: Sweeper, scope: anyio.CancelScope, http: ApiProcess | None) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            if http is not None:
                http.stop_writes()
            sweeper.stop_accepting()
            scope.cancel()
            return
