"""Sequence discipline: a runner that rebuilt its ``messages_out`` without constraints
writes duplicate, backwards, even or non-integer seqs; each such row is rejected and
audited, never applied twice and never skipped silently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.service import Cronbox
from host.store.records import Session

pytestmark = pytest.mark.anyio


def unconstrained(store: Cronbox, session_id: str) -> None:
    """Rebuild messages_out as a hostile runner could: no UNIQUE, no CHECK on seq."""
    with sdb.outbound(store.session_dir(session_id)) as db, db.atomic():
        db.execute("DROP TABLE messages_out")
        db.execute(
            "CREATE TABLE messages_out (id TEXT, seq, kind TEXT, created_at TEXT, "
            "in_reply_to TEXT, content TEXT)"
        )


def write(store: Cronbox, session_id: str, seq: Any, message_id: str, task: str) -> None:
    content = json.dumps({"action": "schedule_task", "taskId": task, "prompt": "p",
                          "processAfter": "+1h"})  # fmt: skip
    with sdb.outbound(store.session_dir(session_id)) as db, db.atomic():
        db.execute(
            "INSERT INTO messages_out (id, seq, kind, created_at, content) VALUES (?, ?, ?, ?, ?)",
            [message_id, seq, "system", fmt(store.now()), content],
        )


async def take_in(store: Cronbox, delivery: Delivery, session: Session) -> None:
    await delivery.deliver(session, store.undelivered(session.id))
    await delivery.refuse_strays(session)


def rejections(store: Cronbox, session_id: str) -> list[str]:
    return [
        str((e.detail or {}).get("reason"))
        for e in store.audit_entries(session_id, 1000)
        if e.action == "outbound.reject"
    ]


@pytest.fixture
def store(tmp_path: Path) -> Cronbox:
    return Cronbox(tmp_path / "home", clock=ManualClock("2026-01-15T08:00:00Z"))


async def test_two_actions_sharing_a_seq_are_applied_once_and_the_other_rejected(
    store: Cronbox,
) -> None:
    session = store.create_session("dup")
    unconstrained(store, session.id)
    write(store, session.id, 1, "a", "first")
    write(store, session.id, 1, "b", "second")
    delivery = Delivery(store, [])
    await take_in(store, delivery, session)
    await take_in(store, delivery, session)
    assert [t.series_id for t in store.list_tasks(include_all=True)] == ["first"]
    [reason] = rejections(store, session.id)
    assert "seq 1" in reason


async def test_a_row_written_below_the_delivered_maximum_is_rejected_and_audited(
    store: Cronbox,
) -> None:
    session = store.create_session("backwards")
    unconstrained(store, session.id)
    write(store, session.id, 5, "five", "five")
    delivery = Delivery(store, [])
    await take_in(store, delivery, session)
    write(store, session.id, 3, "three", "three")
    await take_in(store, delivery, session)
    await take_in(store, delivery, session)
    assert [t.series_id for t in store.list_tasks(include_all=True)] == ["five"]
    [reason] = rejections(store, session.id)
    assert "not above" in reason
    notes = [r for r in store.inbound_rows(session.id) if r.kind.value == "system"]
    assert len(notes) == 1


@pytest.mark.parametrize(("seq", "why"), [(4, "even"), ("7", "not an integer"),
                                          (7.5, "not an integer")])  # fmt: skip
async def test_an_even_or_non_integer_seq_is_rejected_and_audited(
    store: Cronbox, seq: Any, why: str
) -> None:
    session = store.create_session("odd")
    unconstrained(store, session.id)
    write(store, session.id, seq, "x", "never")
    write(store, session.id, 9, "y", "later")
    delivery = Delivery(store, [])
    await take_in(store, delivery, session)
    await take_in(store, delivery, session)
    assert [t.series_id for t in store.list_tasks(include_all=True)] == ["later"]
    [reason] = rejections(store, session.id)
    assert why in reason


async def test_a_flood_of_invalid_rows_becomes_one_note_to_the_agent(store: Cronbox) -> None:
    session = store.create_session("flood")
    with sdb.outbound(store.session_dir(session.id)) as db, db.atomic():
        db.conn.executemany(
            "INSERT INTO messages_out (id, seq, kind, created_at, content) VALUES (?, ?, ?, ?, ?)",
            [(f"bad-{i}", 2 * i + 1, "system", fmt(store.now()), "{not json")
             for i in range(300)],
        )  # fmt: skip
    delivery = Delivery(store, [])
    while rows := store.undelivered(session.id):
        await delivery.deliver(session, rows)
    assert len(rejections(store, session.id)) == 300
    [note] = [r for r in store.inbound_rows(session.id) if r.kind.value == "system"]
    assert note.content["rejections"] == 300
    assert note.content["text"].startswith("300 of your requests were rejected")
