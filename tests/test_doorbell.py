"""The home's doorbell: an outbox written outside its runner is taken in within a pass."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import MessageKind, MessageStatus
from cronbox_shared.timeutil import fmt
from host.service import Cronbox
from tests.hosting import make_settings, running_host, sweep_held, wait_for

pytestmark = pytest.mark.anyio
# Bounds that turn a hang into a failure; never a statement about how long things take.
SUBPROCESS_GUARD = 60


@pytest.fixture
def store(tmp_path: Path) -> Cronbox:
    return Cronbox(tmp_path / "home")


def test_a_session_in_a_home_rings_once_until_the_ring_is_taken(store: Cronbox) -> None:
    first, second = store.create_session("a"), store.create_session("b")
    assert sdb.ring_doorbell(store.session_dir(first.id))
    assert sdb.ring_doorbell(store.session_dir(first.id))  # rung again before it was taken
    assert sdb.ring_doorbell(store.session_dir(second.id))
    assert sorted(s.name for s in store.rung_sessions()) == ["a", "b"]
    assert store.rung_sessions() == []


def test_a_directory_outside_a_home_has_no_doorbell_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "session"  # how a container sees its session
    (mount / sdb.OUTBOX).mkdir(parents=True)
    (tmp_path / sdb.DOORBELL).mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert not sdb.ring_doorbell(mount)
    assert sorted(tmp_path.rglob("*")) == before


def test_rings_that_name_no_session_are_removed_and_never_returned(store: Cronbox) -> None:
    bell = store.home / sdb.DOORBELL
    for junk in ("notes.txt", "s-000000000000", "../s-1"):
        (bell / Path(junk).name).touch()
    (bell / "s-abcdefabcdef").mkdir()  # a directory cannot be taken; it is left alone
    assert store.rung_sessions() == []
    assert [p.name for p in bell.iterdir()] == ["s-abcdefabcdef"]


def test_a_full_doorbell_is_read_a_batch_at_a_time(store: Cronbox) -> None:
    bell = store.home / sdb.DOORBELL
    for n in range(5):
        (bell / f"s-{n:012x}").touch()
    assert len(store.files.rung(2)) == 2
    assert len(store.files.rung(2)) == 2
    assert len(store.files.rung(2)) == 1
    assert store.files.rung(2) == []


async def test_a_hand_run_mcp_server_is_applied_without_waking_a_runner(tmp_path: Path) -> None:
    """Nobody woke this session: its requests reach the host through the doorbell, not at
    its next wake (item 7(d) of the user trial)."""
    settings = make_settings(tmp_path / "home", sweep_interval=3600.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("by-hand", timezone="Asia/Tokyo")
    env = {"CRONBOX_SESSION_DIR": str(store.session_dir(session.id))}
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_tools"], env=env)
    async with running_host(settings) as sweeper:
        assert session.id not in sweeper.watched
        with anyio.fail_after(SUBPROCESS_GUARD):
            async with Client(params) as client:
                result = await client.call_tool(
                    "schedule_task", {"prompt": "stretch", "processAfter": "2099-01-01T09:00:00"}
                )
                assert not result.is_error, result.content
                (task,) = await wait_for(store.list_tasks, 20)
                # Read in the session's own zone, which the server took from its inbox.
                assert task.next_run == "2099-01-01T00:00:00.000Z"
                result = await client.call_tool("pause_task", {"taskId": task.series_id})
                assert not result.is_error, result.content
                await wait_for(lambda: store.list_tasks()[0].status == "paused", 20)
        assert sweeper.started_total == 0


async def test_a_ring_for_a_live_runner_leaves_it_to_the_live_tending(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", idle_timeout=3600.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("busy")
    store.send_message(session.id, "hello")
    async with running_host(settings) as sweeper:
        # Live, and past opening (and migrating) its outbox, which this test writes to.
        heartbeat = store.session_dir(session.id) / sdb.HEARTBEAT
        await wait_for(lambda: session.id in sweeper.live and heartbeat.exists())
        action = {"action": "schedule_task", "taskId": "rung", "prompt": "p",
                  "processAfter": fmt(store.now() + timedelta(hours=1))}  # fmt: skip
        # The write lock taken first: a deferred transaction that has read cannot wait
        # for a write of the runner's in progress (SQLite refuses it at once, a deadlock).
        with sdb.outbound(store.session_dir(session.id)) as db:
            db.execute("BEGIN IMMEDIATE")
            sdb.insert_outbound(db, "rung-action", MessageKind.SYSTEM, action, fmt(store.now()))
            db.conn.commit()
        sweeper.rang([session])
        assert session.id not in sweeper.watched
        await wait_for(lambda: [t.series_id for t in store.list_tasks()] == ["rung"], 20)


async def test_due_work_starts_only_after_what_its_outbox_holds_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass starts due work before it tends the live runners, but not a session whose
    outbox holds requests not taken in yet: a pause written by hand wins over the run."""
    settings = make_settings(tmp_path / "home", idle_timeout=3600.0)
    store = Cronbox.from_settings(settings)
    other, held = store.create_session("other"), store.create_session("held")
    store.send_message(other.id, "stay a while")
    async with running_host(settings) as sweeper:
        await wait_for(lambda: other.id in sweeper.live)  # so due work starts before tending
        # Hold the sweep while the task comes due and its pause waits in the outbox.
        async with sweep_held(sweeper, monkeypatch):
            task = store.schedule_task(
                held.id, {"taskId": "now", "prompt": "p", "processAfter": "now"}
            )
            pause = {"action": "pause_task", "taskId": task.id}
            with sdb.outbound(store.session_dir(held.id)) as db:
                sdb.insert_outbound(db, "pause-it", MessageKind.SYSTEM, pause, fmt(store.now()))
            sweeper.rang([held])
        await wait_for(lambda: store.get_task(task.id).status is MessageStatus.PAUSED, 20)
        assert held.id not in {start.session_id for start in sweeper.starts}
        assert store.runs_for(task.id) == []
