"""Agent actions that once slipped past validation into the catch-all: each is now
rejected with a reason the agent can act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.service import Cronbox

pytestmark = pytest.mark.anyio


def write_raw(store: Cronbox, session_id: str, seq: int, content: str) -> None:
    """Write a messages_out row as an untrusted container could (content verbatim)."""
    with sdb.outbound(store.session_dir(session_id)) as db, db.atomic():
        db.execute(
            "INSERT INTO messages_out (id, seq, kind, created_at, content) VALUES (?, ?, ?, ?, ?)",
            [f"out-{seq}", seq, "system", fmt(store.now()), content],
        )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        (
            json.dumps({"action": "schedule_task", "prompt": "p", "processAfter": "+1h",
                        "misfireGrace": 10**30}),
            "misfireGrace",
        ),
        (
            json.dumps({"action": "schedule_task", "prompt": "bad \ud800 text",
                        "processAfter": "+1h"}),
            "not valid Unicode",
        ),
        (
            json.dumps({"action": "schedule_task", "prompt": "p",
                        "processAfter": "+99999999999d"}),
            "too far ahead",
        ),
    ],
)  # fmt: skip
async def test_hostile_action_is_rejected_with_a_reason(
    tmp_path: Path, content: str, reason: str
) -> None:
    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-15T08:00:00Z"))
    session = store.create_session("target")
    write_raw(store, session.id, 1, content)
    [handled] = await Delivery(store, []).deliver(session, store.undelivered(session.id))
    assert handled.status == "rejected"
    assert reason in (handled.detail or "")
    assert "could not be handled" not in (handled.detail or "")
    assert store.list_tasks(include_all=True) == []
    [note] = [r for r in store.inbound_rows(session.id) if r.kind.value == "system"]
    assert reason in note.content["text"]
    assert note.trigger == 0
