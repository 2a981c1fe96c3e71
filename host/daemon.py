"""``cronbox run``: the host process — one per home, composed in one task group.

Start-up re-derives every session's state from the files and adopts or reaps runners
a previous host left behind. Shutdown is staged: stop waking sessions, let running
runners finish within a grace period, then stop them; rows they leave claimed go back
to ``pending`` with a retry.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from cronbox_shared.errors import HostAlreadyRunning
from cronbox_shared.policies import parse_quiet, quiet_end
from cronbox_shared.timeutil import Clock, SystemClock, fmt, zone
from host.config import Settings
from host.delivery import ConsoleChannel, Delivery
from host.limits import ContainerLimits, check_limits
from host.runtimes import Runtime, get_runtime
from host.service import Cronbox
from host.store.base import ChangeFeed
from host.sweep import SweepConfig, Sweeper
from host.writer import Writer

log = logging.getLogger("cronbox.host")
LOCK = "host.lock"
STATUS = "host.json"
CHANGE_POLL = 0.2


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


def sweep_config(settings: Settings) -> SweepConfig:
    return SweepConfig(
        sweep_interval=settings.sweep_interval,
        max_containers=settings.max_containers,
        idle_timeout=settings.idle_timeout,
        task_timeout=settings.task_timeout,
        keep_finished=settings.keep_finished,
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


def write_status(store: Cronbox, sweeper: Sweeper, settings: Settings) -> None:
    """Publish the pool's state for ``cronbox status`` (written atomically)."""
    status = {
        "pid": os.getpid(),
        "updated_at": fmt(store.now()),
        "runtime": settings.runtime,
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
    }
    tmp = store.home / (STATUS + ".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(store.home / STATUS)


async def run_host(
    settings: Settings,
    *,
    clock: Clock | None = None,
    demo: bool = False,
    sweep: SweepConfig | None = None,
    task_status: TaskStatus[Sweeper] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the host until SIGINT/SIGTERM (or cancellation), then shut down in stages."""
    clock = clock or SystemClock()
    with home_lock(settings.home):
        store = await anyio.to_thread.run_sync(
            partial(Cronbox.from_settings, settings, clock=clock)
        )
        if demo:
            await anyio.to_thread.run_sync(seed_demo, store)
        runtime = await anyio.to_thread.run_sync(ready_runtime, settings, clock)
        async with AsyncExitStack() as stack:
            stack.callback(runtime.close)
            writer = Writer()
            sweeper = Sweeper(
                store,
                runtime,
                Delivery(store, [ConsoleChannel()], writer),
                sweep or sweep_config(settings),
                clock,
            )
            await sweeper.recover()
            watcher = store.watch_changes()
            stack.callback(watcher.close)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(sweeper.run)
            tg.start_soon(_watch, store, sweeper, settings, watcher)
            tg.start_soon(_signals, sweeper, tg.cancel_scope)
            log.info(
                "cronbox host running on %s (runtime %s, pool %d)",
                settings.home, settings.runtime, settings.max_containers,
            )  # fmt: skip
            task_status.started(sweeper)
            try:
                await anyio.sleep_forever()
            finally:
                sweeper.stop_accepting()
                log.info("shutting down: waiting for %d runners", len(sweeper.live))
                await sweeper.drain()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(write_status, store, sweeper, settings)
                log.info("cronbox host stopped")


def ready_runtime(settings: Settings, clock: Clock) -> Runtime:
    """The configured runtime, checked ready: for docker, an engine and the agent image
    (EngineUnavailable or ImageMissing otherwise, each one sentence)."""
    if settings.runtime != "docker":
        return get_runtime(settings.runtime, clock=clock)
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


async def _watch(store: Cronbox, sweeper: Sweeper, settings: Settings, watcher: ChangeFeed) -> None:
    """Wake the sweep when another process commits to the store or rings a session's
    doorbell; publish status."""
    last_status = ""
    while True:
        if await anyio.to_thread.run_sync(watcher.changed):
            sweeper.wake()
        sweeper.rang(await anyio.to_thread.run_sync(store.rung_sessions))
        snapshot = repr(
            (sorted(sweeper.live), sorted(sweeper.waiting), sweeper.started_total,
             sorted(sweeper.problems.items()), sweeper.engine_down)
        )  # fmt: skip
        if snapshot != last_status:
            await anyio.to_thread.run_sync(write_status, store, sweeper, settings)
            last_status = snapshot
        await anyio.sleep(CHANGE_POLL)


async def _signals(sweeper: Sweeper, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            sweeper.stop_accepting()
            scope.cancel()
            return


def host_status(store: Cronbox, max_containers: int) -> dict[str, Any]:
    """What ``cronbox status`` shows: the host's published pool state plus due counts."""
    published: dict[str, Any] | None = None
    path = store.home / STATUS
    try:
        published = json.loads(path.read_text())
    except (OSError, ValueError):
        published = None
    if published is not None and not host_alive(store.home):
        published = None
    now = store.now()
    nxt = store.next_wake()
    return {
        "host": published
        and {
            "pid": published.get("pid"),
            "runtime": published.get("runtime"),
            "max_containers": published.get("max_containers", max_containers),
            "updated_at": published.get("updated_at"),
            "engine_down": published.get("engine_down"),
        },
        "live": (published or {}).get("live", []),
        "waiting": (published or {}).get("waiting", []),
        "problems": (published or {}).get("problems", []),
        "sessions": store.central.session_count(),
        "due_now": len(store.due_sessions(now)),
        "live_tasks": store.live_task_count(),
        "next_wake": fmt(nxt) if nxt else None,
        "quiet": [
            {"session": s.name, "window": s.quiet, "timezone": s.timezone,
             "until": _quiet_until(s.quiet, s.timezone, now)}
            for s in store.list_sessions() if s.quiet
        ],
    }  # fmt: skip


def _quiet_until(window: str, timezone: str, now: datetime) -> str | None:
    """When the quiet window ``now`` falls in ends, or None outside it."""
    end = quiet_end(parse_quiet(window), zone(timezone), now)
    return fmt(end) if end else None


def host_alive(home: Path) -> bool:
    """Whether a host holds the home's lock right now."""
    path = home / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
