"""The runner's mailbox: the contract every backend keeps, checked on the SQLite one, and a
runner that reaches its session through nothing else."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest
from sqlite_utils import Database

from agent_runner.history import Exchange, Remember
from agent_runner.mailbox import Mailbox, Settlement
from agent_runner.mailbox.sqlite import SqliteMailbox
from agent_runner.runner import run_runner
from cronbox_shared import outbox
from cronbox_shared import sessiondb as sdb
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.errors import RunnerConfigError
from cronbox_shared.models import AckStatus, MessageKind
from cronbox_shared.rows import InboxRow
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import ManualClock, fmt
from host.service import Cronbox

pytestmark = pytest.mark.anyio

# Bounds that turn a hang into a failure; never a statement about how long things take.
HANG_GUARD = 20


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock("2026-01-15T09:00:00Z")


@pytest.fixture
def store(app: Cronbox) -> Cronbox:
    """The conftest's service, on this module's clock."""
    return app


@pytest.fixture
def session_id(store: Cronbox) -> str:
    return store.create_session("mailbox").id


@pytest.fixture
def mailbox(store: Cronbox, session_id: str) -> Mailbox:
    return SqliteMailbox(store.session_dir(session_id))


def acks(store: Cronbox, session_id: str, *ids: str) -> dict[str, str]:
    with sdb.outbound(store.session_dir(session_id), readonly=True) as db:
        return {a["message_id"]: a["status"] for a in sdb.acks_for(db, ids)}


async def test_open_refuses_a_directory_without_an_inbox_and_writes_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(RunnerConfigError, match=r"has no inbox/inbound\.db"):
        await SqliteMailbox(tmp_path).open()
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_open_clears_only_the_claims_an_earlier_runner_left(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    stale = store.send_message(session_id, "stale").id
    done = store.send_message(session_id, "done").id
    [first, second] = await mailbox.claim(clock.now(), 10)
    await mailbox.settle(clock.now(), [Settlement(second, AckStatus.COMPLETED)])
    assert (first.id, second.id) == (stale, done)
    assert await SqliteMailbox(store.session_dir(session_id)).open() == 1
    assert acks(store, session_id, stale, done) == {done: "completed"}


def test_the_runners_list_of_outbound_migrations_is_the_migrations_themselves() -> None:
    with sqlite3.connect(":memory:") as conn:
        pending = sdb.outbound_migrations.pending(Database(conn))
    # A new outbound migration's name goes into outbox.OUTBOUND_MIGRATIONS too, or the
    # runner would take a file that lacks it for migrated.
    assert tuple(m.name for m in pending) == outbox.OUTBOUND_MIGRATIONS


async def test_an_outbox_an_older_runner_wrote_is_migrated_before_the_runner_uses_it(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    session_dir = store.session_dir(session_id)
    path = session_dir / sdb.OUTBOUND
    # Sessions are made with their outbox now; an older release's runner made its own.
    path.unlink()
    with sqlite3.connect(path) as conn:  # as a runner before ``started_at`` left it
        sdb.outbound_migrations.apply(Database(conn), stop_before="m002_ack_started_at")
        conn.execute("INSERT INTO processing_ack VALUES ('old', 0, 'processing', 'x', NULL, NULL)")
    conn.close()
    chat = store.send_message(session_id, "after the upgrade").id

    assert await mailbox.open() == 1  # the old runner's claim is dropped
    [row] = await mailbox.claim(clock.now(), 10)
    await mailbox.settle(clock.now(), [Settlement(row, AckStatus.COMPLETED, reply="done")])

    with sdb.outbound(session_dir, readonly=True) as db:
        assert sdb.outbound_ready(db)
        [ack] = sdb.acks_for(db, [chat])
    assert (ack["status"], ack["started_at"]) == ("completed", fmt(clock.now()))
    assert store.replies(session_id, chat) == ["done"]


async def test_claim_takes_due_rows_oldest_first_and_marks_them_processing(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    later = store.schedule_task(session_id, {"prompt": "later", "processAfter": "+1h"}).id
    first = store.send_message(session_id, "first").id
    clock.advance(1)
    second = store.send_message(session_id, "second").id
    claimed = await mailbox.claim(clock.now(), 10)
    assert [r.id for r in claimed] == [first, second]
    assert acks(store, session_id, first, second, later) == {
        first: "processing", second: "processing",
    }  # fmt: skip
    assert await mailbox.claim(clock.now(), 10) == []
    assert [r.id for r in await mailbox.claim(clock.now() + timedelta(hours=1), 10)] == [later]


async def test_claimed_rows_never_hide_new_work_behind_the_limit(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    ids = [store.send_message(session_id, f"m{i}").id for i in range(3)]
    assert [r.id for r in await mailbox.claim(clock.now(), 2)] == ids[:2]
    assert [r.id for r in await mailbox.claim(clock.now(), 2)] == ids[2:]


async def test_context_rows_alone_are_not_claimed(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    store.post_system_note(session_id, "fyi")
    assert await mailbox.claim(clock.now(), 10) == []
    assert acks(store, session_id, *[r.id for r in store.inbound_rows(session_id)]) == {}


async def test_a_full_batch_of_context_rows_is_claimed_when_a_trigger_row_waits_behind(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    store.post_system_note(session_id, "one")
    store.post_system_note(session_id, "two")
    clock.advance(1)
    chat = store.send_message(session_id, "wake up").id
    claimed = await mailbox.claim(clock.now(), 2)
    assert [r.trigger for r in claimed] == [0, 0]
    await mailbox.release(claimed)
    assert [r.id for r in await mailbox.claim(clock.now(), 3)][-1] == chat


async def test_settle_writes_each_ack_with_its_reply(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    ok = store.send_message(session_id, "hi").id
    bad = store.send_message(session_id, "boom").id
    rows = {r.id: r for r in await mailbox.claim(clock.now(), 10)}
    await mailbox.settle(
        clock.now(),
        [Settlement(rows[ok], AckStatus.COMPLETED, preview="hello", reply="hello"),
         Settlement(rows[bad], AckStatus.FAILED, error="it broke")],
    )  # fmt: skip
    assert acks(store, session_id, ok, bad) == {ok: "completed", bad: "failed"}
    with sdb.outbound(store.session_dir(session_id), readonly=True) as db:
        [reply] = [sdb.outbound_from_row(r) for r in sdb.outbound_after(db, 0)]
        [failed] = [a for a in sdb.acks_for(db, [bad])]
    assert (reply.kind, reply.in_reply_to, reply.content) == (
        MessageKind.CHAT,
        ok,
        {"text": "hello"},
    )
    assert failed["error"] == "it broke" and failed["updated_at"] == fmt(clock.now())


async def test_a_released_row_can_be_claimed_again(
    store: Cronbox, session_id: str, mailbox: Mailbox, clock: ManualClock
) -> None:
    chat = store.send_message(session_id, "again").id
    rows = await mailbox.claim(clock.now(), 10)
    await mailbox.release(rows)
    assert acks(store, session_id, chat) == {}
    assert [r.id for r in await mailbox.claim(clock.now(), 10)] == [chat]


async def test_state_outlives_the_runner_that_stored_it(
    store: Cronbox, session_id: str, mailbox: Mailbox
) -> None:
    assert await mailbox.get_state("conversation") is None
    await mailbox.set_state("conversation", "c-1")
    await mailbox.set_state("conversation", "c-2")
    assert await SqliteMailbox(store.session_dir(session_id)).get_state("conversation") == "c-2"


async def test_beat_touches_the_heartbeat_the_host_reads(
    store: Cronbox, session_id: str, mailbox: Mailbox
) -> None:
    heartbeat = anyio.Path(store.session_dir(session_id) / sdb.HEARTBEAT)
    await mailbox.open()
    await mailbox.beat()
    assert await heartbeat.is_file()


class MemoryMailbox:
    """A mailbox that is nothing but Python lists: no file, no SQL."""

    def __init__(self, rows: Sequence[InboxRow]) -> None:
        self.rows = list(rows)
        self.settled: list[Settlement] = []
        self.beats = 0
        self.state: dict[str, str] = {}
        self.history: list[Exchange] = []

    async def open(self) -> int:
        return 0

    async def beat(self) -> None:
        self.beats += 1

    async def claim(self, now: datetime, limit: int) -> list[InboxRow]:
        claimed, self.rows = self.rows[:limit], self.rows[limit:]
        return claimed

    async def settle(
        self, at: datetime, settled: Sequence[Settlement], remember: Remember | None = None
    ) -> None:
        self.settled += settled
        if remember is not None:
            self.history.append(remember.exchange)

    async def load_history(self, dialect: str) -> list[Exchange]:
        return [e for e in self.history if e.dialect == dialect]

    async def release(self, rows: Sequence[InboxRow]) -> None:
        self.rows[:0] = rows

    async def next_due(self, now: datetime) -> datetime | None:
        return None

    def inbox_changes(self) -> ChangeWatch | None:
        return None  # nothing to watch: the runner polls

    async def get_state(self, key: str) -> str | None:
        return self.state.get(key)

    async def set_state(self, key: str, value: str) -> None:
        self.state[key] = value


async def test_the_runner_reaches_its_session_only_through_its_mailbox(tmp_path: Path) -> None:
    row = InboxRow(
        id="chat-1", seq=2, kind=MessageKind.CHAT, created_at="2026-01-15T09:00:00.000Z",
        process_after=None, scheduled_for=None, recurrence=None,
        timezone="UTC", series_id=None, tries=0, trigger=1, content={"text": "ping"},
    )  # fmt: skip
    mailbox = MemoryMailbox([row])
    settings = RunnerSettings(session_dir=tmp_path, idle_timeout=0.2, poll_interval=0.05)
    with anyio.fail_after(HANG_GUARD):
        assert await run_runner(settings, ManualClock("2026-01-15T09:00:00Z"), mailbox=mailbox) == 0
    [settled] = mailbox.settled
    assert (settled.message.id, settled.status, settled.reply) == (
        "chat-1", AckStatus.COMPLETED, "echo: ping",
    )  # fmt: skip
    assert mailbox.beats >= 2
    assert [p.name async for p in anyio.Path(tmp_path).iterdir()] == [sdb.WORKSPACE]
