"""Helpers for tests that run a real host: in-process with real runner subprocesses."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import OutboxUnreadable
from cronbox_shared.timeutil import Clock
from host.config import Settings
from host.daemon import run_host
from host.service import Cronbox
from host.store.records import Session
from host.sweep import SweepConfig, Sweeper

T = TypeVar("T")


def make_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "runtime": "process",
        "sweep_interval": 60.0,
        "idle_timeout": 1.0,
        "min_interval": 1.0,
        "max_containers": 5,
        # Tests that use the HTTP API hand the host a socket on an ephemeral port.
        "http_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


def fast_sweep(settings: Settings, **overrides: Any) -> SweepConfig:
    values: dict[str, Any] = {
        "sweep_interval": settings.sweep_interval,
        "max_containers": settings.max_containers,
        "idle_timeout": settings.idle_timeout,
        "task_timeout": settings.task_timeout,
        "live_poll": 0.05,
        "runner_poll": 0.05,
        "stop_grace": 5.0,
        "retry_base": 0.05,
        "change_signal": settings.change_signal,
        "idle_poll": settings.idle_poll,
    }
    values.update(overrides)
    return SweepConfig(**values)


def ephemeral_socket() -> socket.socket:
    """A socket bound to a free loopback port, for a host's HTTP API."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@asynccontextmanager
async def running_host(
    settings: Settings,
    sweep: SweepConfig | None = None,
    *,
    http_socket: socket.socket | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Sweeper]:
    """Run ``run_host`` in this event loop; cancelling it performs the staged shutdown."""
    async with anyio.create_task_group() as tg:
        sweeper: Sweeper = await tg.start(
            partial(
                run_host,
                settings,
                sweep=sweep or fast_sweep(settings),
                http_socket=http_socket,
                clock=clock,
            )
        )
        try:
            yield sweeper
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def sweep_held(sweeper: Sweeper, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Hold the sweep inside a pass, as a stuck pass is, for the block; when it ends the
    held pass goes on and later ones run as usual."""
    entered, release, tick = anyio.Event(), anyio.Event(), sweeper.tick

    async def held() -> None:
        entered.set()
        await release.wait()
        await tick()

    monkeypatch.setattr(sweeper, "tick", held)
    sweeper.wake()
    with anyio.fail_after(30):
        await entered.wait()
    try:
        yield
    finally:
        monkeypatch.setattr(sweeper, "tick", tick)
        release.set()


def quarantines(sweeper: Sweeper, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """Every quarantine the sweep puts a session in from now on, as it happens:
    (session id, reason, whether its runner was still live). A quarantine can lift on the
    very next pass (a lock freed by killing its holder), too soon for a poll of
    ``sweeper.sick`` to see it."""
    seen: list[tuple[str, str, bool]] = []
    quarantine = sweeper._quarantine

    async def recorded(session: Session, reason: str, *args: Any, **kwargs: Any) -> None:
        seen.append((session.id, reason, session.id in sweeper.live))
        await quarantine(session, reason, *args, **kwargs)

    monkeypatch.setattr(sweeper, "_quarantine", recorded)
    return seen


async def wait_for(check: Callable[[], T | None], limit: float = 30.0) -> T:
    """Poll ``check`` (run in a thread) until it returns something truthy."""
    with anyio.fail_after(limit):
        while True:
            value = await anyio.to_thread.run_sync(check)
            if value:
                return value
            await anyio.sleep(0.05)


def unless_locked(read: Callable[[], T]) -> T | None:
    """``read()``, or None while the runner holds its outbox's write lock: the host's
    untrusted read waits for it only briefly, and a poll of :func:`wait_for` asks again."""
    try:
        return read()
    except OutboxUnreadable as exc:
        if "locked" not in str(exc):
            raise
        return None


def replies_to(store: Cronbox, session_id: str, message_id: str) -> list[str]:
    """The replies to one message so far; none while the runner holds the outbox's lock
    (a state the host itself waits out), so a poll just looks again."""
    try:
        return store.replies(session_id, message_id)
    except OutboxUnreadable as exc:
        if exc.transient:
            return []
        raise


def replies(store: Cronbox, session_id: str) -> list[dict[str, Any]]:
    """The chat replies a session's runner wrote."""
    directory = store.session_dir(session_id)
    if not (directory / sdb.OUTBOUND).exists():
        return []
    with sdb.outbound(directory, readonly=True) as db:
        if not sdb.outbound_ready(db):
            return []
        return [r for r in sdb.outbound_after(db, 0, 10_000) if r["kind"] == "chat"]


def delivered_seqs(store: Cronbox, session_id: str) -> list[int]:
    with sdb.inbound(store.session_dir(session_id), readonly=True) as db:
        return sorted(sdb.delivered_seqs(db, list(range(1, 20_001, 2))))


def acks(store: Cronbox, session_id: str, message_id: str) -> list[dict[str, Any]]:
    directory = store.session_dir(session_id)
    if not (directory / sdb.OUTBOUND).exists():
        return []
    with sdb.outbound(directory, readonly=True) as db:
        return sdb.acks_for(db, [message_id]) if sdb.outbound_ready(db) else []


def runner_pids(home: Path) -> list[int]:
    """Live processes whose environment names this home (runners of any host)."""
    pids = []
    needle = f"CRONBOX_HOST_HOME={home.resolve()}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def api_processes(parent: int) -> list[int]:
    """Live HTTP API processes (``host.api_process``) whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[1]) == parent and b"host.api_process" in command:
            found.append(int(entry.name))
    return found


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as gone)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True
