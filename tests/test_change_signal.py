"""Change signals: an idle runner and the host wait on inotify, not on polls.

Every fallback poll here is set an hour long, so anything that happens within the tests'
hang guard happened because of a change signal (or a row's own due time).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from agent_runner.runner import run_runner
from cronbox_shared import sessiondb as sdb
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import SystemClock
from host.runtimes import RunnerHandle
from host.service import Cronbox
from host.store.records import Session
from host.sweep import LiveRunner, SweepConfig, live_delay
from host.writer import OutsideCommits, Writer
from tests.hosting import fast_sweep, make_settings, replies, running_host, wait_for

pytestmark = pytest.mark.anyio

NEVER = 3600.0  # a fallback poll no test outlives


@pytest.fixture
def store(tmp_path: Path) -> Cronbox:
    return Cronbox(tmp_path / "home", clock=SystemClock())


@pytest.fixture
async def idle_runner(anyio_backend: str, store: Cronbox) -> AsyncIterator[str]:
    """A session whose runner (in this process) polls once an hour at most."""
    session = store.create_session("watcher")
    settings = RunnerSettings(
        session_dir=store.session_dir(session.id),
        idle_timeout=NEVER,
        poll_interval=NEVER,
        idle_poll=NEVER,
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_runner, settings, SystemClock(), stop)
        try:
            yield session.id
        finally:
            stop.set()


def replied_to(store: Cronbox, session_id: str, message_id: str) -> bool:
    return any(r["in_reply_to"] == message_id for r in replies(store, session_id))


async def test_an_idle_runner_claims_a_row_sent_while_it_waits(
    store: Cronbox, idle_runner: str
) -> None:
    first = store.send_message(idle_runner, "one")
    await wait_for(lambda: replied_to(store, idle_runner, first.id))
    # The runner is idle again, waiting on its inbox.
    second = store.send_message(idle_runner, "two")
    await wait_for(lambda: replied_to(store, idle_runner, second.id))


async def test_an_idle_runner_wakes_when_a_row_comes_due(store: Cronbox, idle_runner: str) -> None:
    task = store.schedule_task(idle_runner, {"prompt": "later", "processAfter": "+1s"})
    await wait_for(lambda: replied_to(store, idle_runner, task.id))


async def test_the_host_starts_and_settles_a_task_another_process_scheduled_without_polling(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    settings = make_settings(home, sweep_interval=NEVER, idle_poll=NEVER, idle_timeout=NEVER)
    # The CLI's view of the same home: another connection, as another process has.
    cli = Cronbox.from_settings(settings)
    session = cli.create_session("signalled")
    async with running_host(settings, fast_sweep(settings, live_poll=NEVER)):
        task = cli.schedule_task(session.id, {"prompt": "now", "processAfter": "now"})
        await wait_for(lambda: [r for r in cli.runs_for(task.id) if r.outcome])
        # The runner idles; a chat reaches it, and its reply the host, by signals alone.
        chat = cli.send_message(session.id, "and now?")
        await wait_for(lambda: replied_to(cli, session.id, chat.id))


async def test_a_commit_of_another_process_just_before_a_host_write_is_not_taken_for_the_hosts(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    host, cli = Cronbox(home, clock=SystemClock()), Cronbox(home, clock=SystemClock())
    feed = host.watch_changes()
    writer = Writer(home)
    outside = OutsideCommits(feed)
    outside.follow(writer)
    try:
        outside.changed()
        await writer(host.create_session, "the-hosts-own")
        assert not outside.changed()
        cli.create_session("the-clis")  # the host has not looked yet when it writes again
        await writer(host.create_session, "the-hosts-next")
        assert outside.changed()
        assert not outside.changed()
    finally:
        writer.close()
        feed.close()


async def test_a_look_in_the_middle_of_a_host_write_does_not_take_its_commit_for_another_s(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    host = Cronbox(home, clock=SystemClock())
    feed = host.watch_changes()
    writer = Writer(home)
    outside = OutsideCommits(feed)
    outside.follow(writer)
    looked: list[bool] = []
    watcher = threading.Thread(target=lambda: looked.append(outside.changed()))

    def write_and_look_meanwhile() -> None:
        host.create_session("the-hosts-own")  # committed: the change signal fires now
        # Another thread looks before the write returns. It waits for the write's end
        # (a look that did not would answer at once, and wrongly).
        watcher.start()
        watcher.join(timeout=0.5)

    try:
        outside.changed()
        await writer(write_and_look_meanwhile)
        watcher.join()
        assert looked == [False]
    finally:
        writer.close()
        feed.close()


async def test_a_write_in_progress_when_the_host_starts_following_its_writes_completes(
    tmp_path: Path,
) -> None:
    """The host follows its writer once its watch starts, perhaps in the middle of a
    write: that write is not followed (it took no lock the end would release)."""
    home = tmp_path / "home"
    host = Cronbox(home, clock=SystemClock())
    feed = host.watch_changes()
    writer = Writer(home)
    outside = OutsideCommits(feed)
    started, go_on = threading.Event(), threading.Event()

    def slow_write() -> str:
        started.set()
        go_on.wait()
        return host.create_session("in-progress").id

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, slow_write)
            await anyio.to_thread.run_sync(started.wait)
            outside.follow(writer)
            go_on.set()
        outside.changed()
        await writer(host.create_session, "followed")
        assert not outside.changed()
    finally:
        writer.close()
        feed.close()


async def test_a_task_committed_in_the_instant_of_a_host_write_still_wakes_the_sweep(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    settings = make_settings(home, sweep_interval=NEVER, idle_poll=NEVER, idle_timeout=NEVER)
    cli = Cronbox.from_settings(settings)
    session = cli.create_session("in-the-instant")
    async with running_host(settings, fast_sweep(settings, live_poll=NEVER)) as sweeper:
        await wait_for(lambda: sweeper.asleep_until)
        # Another process commits while the host's writer holds the write: its commit is
        # taken off the feed with the host's own, so only the next wake's check is left.
        # (Due a second later: a pass something else woke plans by it as well.)
        task = await sweeper.writer(
            cli.schedule_task, session.id, {"prompt": "soon", "processAfter": "+1s"}
        )
        await wait_for(lambda: [r for r in cli.runs_for(task.id) if r.outcome])


def test_a_watch_reports_only_the_files_it_was_asked_for(tmp_path: Path) -> None:
    watch = ChangeWatch.open()
    assert watch is not None, "inotify is available on Linux"
    try:
        outbox = tmp_path / sdb.OUTBOX
        outbox.mkdir()
        assert watch.add(outbox, ("outbound.db",), "outbox")
        (outbox / ".heartbeat").touch()
        assert watch.take() == set()
        (outbox / "outbound.db").write_bytes(b"x")
        assert watch.take() == {"outbox"}
        watch.remove(outbox)
        (outbox / "outbound.db").write_bytes(b"y")
        assert watch.take() == set()
    finally:
        watch.close()


def _runner(busy: bool, idle_for: float | None = None) -> LiveRunner:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    session = Session(
        id="s-1", name="s", agent="echo", timezone="UTC", container={},
        created_at="2026-01-01T00:00:00.000Z", last_active_at=None, next_due_at=None,
    )  # fmt: skip
    handle = RunnerHandle("s-1", "1", now)
    since = now - timedelta(seconds=idle_for) if idle_for is not None else None
    return LiveRunner(handle, session, busy=busy, idle_since=since)


@pytest.mark.parametrize(
    ("runners", "waiting", "watching", "expected"),
    [
        ([_runner(busy=True)], False, True, 0.25),  # work in progress: the live rate
        ([_runner(busy=False, idle_for=1)], True, True, 0.25),  # a session waits for a slot
        ([_runner(busy=False, idle_for=1)], False, False, 0.25),  # no signal: poll
        ([_runner(busy=False, idle_for=1)], False, True, 10.0),  # the fallback poll
        ([_runner(busy=False, idle_for=25)], False, True, 5.0),  # its idle time runs out
        ([_runner(busy=False, idle_for=40)], False, True, 0.25),  # overdue: the live rate
        ([], False, True, 10.0),  # only watched outboxes, all taken in
    ],
)
def test_live_delay_polls_only_for_working_runners_when_outboxes_are_watched(
    runners: list[LiveRunner], waiting: bool, watching: bool, expected: float
) -> None:
    config = SweepConfig(live_poll=0.25, idle_poll=10.0, idle_timeout=30.0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert live_delay(runners, waiting, config, watching, now) == pytest.approx(expected)
    # An outbox with more than a pass took in (a flood, a channel to retry): the live rate.
    assert live_delay(runners, waiting, config, watching, now, more_to_read=True) == 0.25
