"""Delivery loses nothing: a transient error leaves a row for the next pass (applied once),
and a failing channel leaves the reply undelivered for that channel alone."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import DeliveryStatus, MessageKind, OutboundMessage
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import ChannelRetry, ConsoleChannel, Delivery
from host.service import Cronbox
from host.store.records import Session

pytestmark = pytest.mark.anyio


@pytest.fixture
def session(app: Cronbox) -> Session:
    return app.create_session("target")


def write_outbound(
    app: Cronbox, session: Session, kind: MessageKind, content: dict[str, str]
) -> int:
    with sdb.outbound(app.session_dir(session.id)) as db:
        message_id = f"out-{secrets.token_hex(4)}"
        return sdb.insert_outbound(db, message_id, kind, content, fmt(app.now()))


@contextmanager
def inbox_locked(app: Cronbox, session: Session) -> Iterator[None]:
    """Another process holds the write lock on the session's inbound.db."""
    conn = sqlite3.connect(app.session_dir(session.id) / sdb.INBOUND, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


def deliveries(app: Cronbox, session: Session, seq: int) -> dict[str, sdb.DeliveryRow]:
    with sdb.inbound(app.session_dir(session.id), readonly=True) as db:
        return {d.channel: d for d in sdb.deliveries_of(db, seq)}


async def test_a_transient_write_error_leaves_the_action_for_the_next_pass_applied_once(
    app: Cronbox, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdb, "BUSY_TIMEOUT_MS", 50)
    action = {"action": "schedule_task", "taskId": "later", "prompt": "p", "processAfter": "+1h"}
    seq = write_outbound(app, session, MessageKind.SYSTEM, action)
    delivery = Delivery(app, [])

    with inbox_locked(app, session):
        handled = await delivery.deliver(session, app.undelivered(session.id))
    # Nothing was rejected, nothing was told to the agent, the row waits.
    assert handled == []
    assert [r["seq"] for r in app.undelivered(session.id)] == [seq]
    assert app.list_tasks(include_all=True) == []
    assert not [e for e in app.audit_entries(session.id) if e.action == "outbound.reject"]
    assert not [r for r in app.inbound_rows(session.id) if r.kind is MessageKind.SYSTEM]

    [done] = await delivery.deliver(session, app.undelivered(session.id))
    assert done.status is DeliveryStatus.APPLIED
    assert app.undelivered(session.id) == []
    assert await delivery.deliver(session, [*app.files.outbound_rows(session.id, [seq])]) == []
    assert [t.series_id for t in app.list_tasks()] == ["later"]
    assert [e.action for e in app.audit_entries(session.id)].count("task.schedule") == 1


async def test_rows_after_a_stuck_row_wait_so_order_holds(
    app: Cronbox, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdb, "BUSY_TIMEOUT_MS", 50)
    first = write_outbound(app, session, MessageKind.SYSTEM, {"action": "schedule_task",
                           "taskId": "a", "prompt": "p", "processAfter": "+1h"})  # fmt: skip
    write_outbound(app, session, MessageKind.SYSTEM, {"action": "cancel_task", "taskId": "a"})
    delivery = Delivery(app, [])
    with inbox_locked(app, session):
        assert await delivery.deliver(session, app.undelivered(session.id)) == []
    assert [r["seq"] for r in app.undelivered(session.id)] == [first, first + 2]
    statuses = [h.status for h in await delivery.deliver(session, app.undelivered(session.id))]
    assert statuses == [DeliveryStatus.APPLIED, DeliveryStatus.APPLIED]
    assert app.get_task("a").status.value == "cancelled"


class Recorder:
    """A channel that records what it delivered, failing its first ``failures`` sends."""

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.failures = failures
        self.sent: list[str] = []

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError(f"{self.name} is down")
        self.sent.append(text)


async def test_a_failing_channel_leaves_the_reply_undelivered_for_that_channel(
    app: Cronbox, session: Session, clock: ManualClock
) -> None:
    console, hook = Recorder("console"), Recorder("webhook", failures=1)
    delivery = Delivery(app, [console, hook], retry=ChannelRetry(max_attempts=3))
    seq = write_outbound(app, session, MessageKind.CHAT, {"text": "hello"})

    [handled] = await delivery.deliver(session, app.undelivered(session.id))
    assert handled.status is DeliveryStatus.PENDING
    state = deliveries(app, session, seq)
    assert state["console"].status is DeliveryStatus.DELIVERED
    assert state["webhook"].status is DeliveryStatus.PENDING
    assert (state["webhook"].attempts, state["webhook"].last_error) == (1, "webhook is down")
    with sdb.inbound(app.session_dir(session.id), readonly=True) as db:
        assert sdb.delivered_seqs(db, [seq]) == set()
    assert app.undelivered(session.id) == []  # taken in once; only the retry is left

    assert await delivery.retry_due(session) == 0  # its backoff has not passed yet
    clock.advance(5)
    assert await delivery.retry_due(session) == 1
    assert (console.sent, hook.sent) == (["hello"], ["hello"])
    assert deliveries(app, session, seq)["webhook"].status is DeliveryStatus.DELIVERED
    with sdb.inbound(app.session_dir(session.id), readonly=True) as db:
        assert sdb.delivered_seqs(db, [seq]) == {seq}
    assert await delivery.retry_due(session) == 0


async def test_a_channel_that_keeps_failing_gives_up_after_its_last_attempt(
    app: Cronbox, session: Session, clock: ManualClock
) -> None:
    dead = Recorder("webhook", failures=100)
    delivery = Delivery(app, [dead], retry=ChannelRetry(max_attempts=3))
    seq = write_outbound(app, session, MessageKind.CHAT, {"text": json.dumps({"n": 1})})
    await delivery.deliver(session, app.undelivered(session.id))
    for _ in range(5):
        clock.advance(3600)
        await delivery.retry_due(session)
    state = deliveries(app, session, seq)["webhook"]
    assert (state.status, state.attempts) == (DeliveryStatus.FAILED, 3)
    assert dead.sent == []


class Held:
    """A channel whose first send never finishes (until its caller is cancelled)."""

    name = "console"

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.sent: list[str] = []

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        if not self.entered.is_set():
            self.entered.set()
            await anyio.sleep_forever()
        self.sent.append(text)


async def test_a_reply_whose_send_was_cut_short_by_a_cancellation_is_sent_by_the_next_retry(
    app: Cronbox, session: Session
) -> None:
    channel = Held()
    delivery = Delivery(app, [channel])
    assert await delivery.retry_due(session) == 0  # nothing pending yet, and it knows it
    seq = write_outbound(app, session, MessageKind.CHAT, {"text": "hello"})
    async with anyio.create_task_group() as tg:  # a pass the host's shutdown cancels
        tg.start_soon(delivery.deliver, session, app.undelivered(session.id))
        await channel.entered.wait()
        tg.cancel_scope.cancel()
    assert deliveries(app, session, seq)["console"].status is DeliveryStatus.PENDING
    assert await delivery.retry_due(session) == 1
    assert channel.sent == ["hello"]


async def test_a_reply_whose_send_was_not_recorded_is_sent_again_by_the_retries(
    app: Cronbox, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = Recorder("console")
    delivery = Delivery(app, [console])
    write_outbound(app, session, MessageKind.CHAT, {"text": "first"})
    await delivery.deliver(session, app.undelivered(session.id))
    assert await delivery.retry_due(session) == 0  # everything final: not looked at again
    seq = write_outbound(app, session, MessageKind.CHAT, {"text": "second"})
    real = app.record_attempt
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database is locked")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "record_attempt", flaky)
    assert await delivery.deliver(session, app.undelivered(session.id)) == []
    assert deliveries(app, session, seq)["console"].status is DeliveryStatus.PENDING
    assert await delivery.retry_due(session) == 1
    assert console.sent == ["first", "second", "second"]
    assert deliveries(app, session, seq)["console"].status is DeliveryStatus.DELIVERED


async def test_a_runners_replies_are_taken_in_with_one_inbox_transaction_in_order(
    app: Cronbox, session: Session
) -> None:
    console = ConsoleChannel(logging.getLogger("cronbox.test.console"))
    hook = Recorder("webhook")
    delivery = Delivery(app, [console, hook])
    seqs = [write_outbound(app, session, MessageKind.CHAT, {"text": f"r{n}"}) for n in range(5)]
    inbound = app.session_dir(session.id) / sdb.INBOUND
    before = sdb.change_counter(inbound)
    handled = await delivery.deliver(session, app.undelivered(session.id))
    assert [h.seq for h in handled] == seqs
    assert all(h.status is DeliveryStatus.DELIVERED for h in handled)
    assert hook.sent == [f"r{n}" for n in range(5)]
    # One transaction took all five in (the console recorded in it); then one each for
    # the webhook's outcome, which is known only after its send.
    assert sdb.change_counter(inbound) == (before or 0) + 1 + 5
    assert all(deliveries(app, session, s)["console"].status is DeliveryStatus.DELIVERED
               for s in seqs)  # fmt: skip
    assert await delivery.deliver(session, [*app.files.outbound_rows(session.id, seqs)]) == []
    assert hook.sent == [f"r{n}" for n in range(5)]
