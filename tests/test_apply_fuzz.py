"""Fuzz the host's apply path with random outbound rows: it rejects, never crashes.

A container is untrusted, so its ``outbound.db`` may hold anything: rows are written here
with raw SQL, as a hostile container would. Good rows mixed in must still apply, every
bad row must be rejected, audited and explained to the agent, and another session's task
must stay untouched.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import ACTION_NAMES as ACTIONS
from cronbox_shared.models import InboundMessage, MessageKind, MessageStatus
from host.delivery import Delivery, Handled
from host.service import Cronbox
from host.store.records import Session

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
# SQLite stores integers in 64 bits; a container cannot write a larger one.
INTEGERS = st.integers(-(2**63), 2**63 - 1)
NOT_A_STRING = st.none() | st.booleans() | INTEGERS | st.lists(TEXT, max_size=2)
OVERSIZE = 64 * 1024 + 1
TARGETED = ("cancel_task", "pause_task", "resume_task", "update_task")
# Names a schedule or update request may carry (by alias or by field name).
REQUEST_FIELDS = {
    "action", "taskId", "task_id", "id", "prompt", "processAfter", "process_after",
    "recurrence", "script", "timezone", "misfireGrace", "misfire_grace", "timeout",
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One outbound row: its kind and raw content, and whether the host must accept it."""

    kind: Any
    content: str
    good: bool
    fresh_task: str | None = None
    row_id: str | None = "row"


def system(content: dict[str, Any]) -> Row:
    return Row("system", json.dumps(content), good=False)


@st.composite
def good_rows(draw: st.DrawFn) -> Row:
    if draw(st.booleans()):
        return Row("chat", json.dumps({"text": "reply " + draw(TEXT)}), good=True)
    task_id = f"fuzz-{draw(st.uuids()).hex[:12]}"
    args: dict[str, Any] = {
        "action": "schedule_task", "taskId": task_id,
        "prompt": "do " + draw(TEXT),
    }  # fmt: skip
    when = draw(st.sampled_from(["processAfter", "recurrence", "both"]))
    if when != "recurrence":
        args["processAfter"] = f"+{draw(st.integers(1, 10_000))}m"
    if when != "processAfter":
        args["recurrence"] = draw(st.sampled_from(["@daily", "0 9 * * MON-FRI", "@every 2h"]))
    return Row("system", json.dumps(args), good=True, fresh_task=task_id)


@st.composite
def bad_rows(draw: st.DrawFn, foreign: str, own: str) -> Row:
    choice = draw(st.integers(0, 10))
    action = draw(st.sampled_from(ACTIONS))
    if choice == 0:  # not JSON at all
        return Row("system", "not json " + draw(TEXT), good=False)
    if choice == 1:  # JSON, but not an object
        value = draw(st.lists(JSON_VALUES, max_size=3) | st.integers() | TEXT | st.none())
        return Row(draw(st.sampled_from(["system", "chat"])), json.dumps(value), good=False)
    if choice == 2:  # an action the host does not know
        unknown = draw(TEXT.filter(lambda a: a not in ACTIONS) | NOT_A_STRING)
        extra = draw(st.dictionaries(TEXT.filter(lambda k: k != "action"), JSON_VALUES))
        return system({**extra, "action": unknown})
    if choice == 3:  # wrong types
        if action == "schedule_task":
            return system({"action": action, "prompt": draw(NOT_A_STRING), "processAfter": "+1h"})
        return system({"action": action, "taskId": draw(NOT_A_STRING), "prompt": "p"})
    if choice == 4:  # oversize fields
        field = draw(st.sampled_from(["prompt", "script"]))
        args = {"action": "schedule_task", "prompt": "p", "processAfter": "+1h"}
        return system({**args, field: "x" * OVERSIZE})
    if choice == 5:  # oversize values quoted back in errors
        field = draw(st.sampled_from(["processAfter", "recurrence", "timezone"]))
        return system({"action": "schedule_task", "prompt": "p", field: "9" * 200_000})
    if choice == 6:  # another session's task
        target = draw(st.sampled_from([foreign, foreign + "~1"]))
        if draw(st.booleans()):
            return system({"action": "schedule_task", "taskId": foreign, "prompt": "mine now",
                           "processAfter": "+1h"})  # fmt: skip
        verb = draw(st.sampled_from(TARGETED))
        extra = {"prompt": "hijacked"} if verb == "update_task" else {}
        return system({"action": verb, "taskId": target, **extra})
    if choice == 7:  # arguments the action does not take
        key = draw(TEXT.filter(lambda k: k not in REQUEST_FIELDS))
        return system({"action": action, "taskId": own, "prompt": "p", key: draw(JSON_VALUES)})
    if choice == 8:  # a kind the host does not accept
        other = TEXT.filter(lambda k: k not in ("chat", "system"))
        kind = draw(st.sampled_from(["task", "", "SYSTEM"]) | other | INTEGERS)
        return Row(kind, json.dumps({"text": "hi"}), good=False)
    if choice == 9:  # a chat reply without usable text
        text = draw(st.sampled_from(["", "   "]) | NOT_A_STRING | st.just("x" * OVERSIZE))
        return Row("chat", json.dumps({"text": text}), good=False)
    # Deep nesting, or a row without an id.
    if draw(st.booleans()):
        return Row("system", "[" * 50_000 + "]" * 50_000, good=False)
    return Row("system", json.dumps({"action": "cancel_task", "taskId": own}), good=False,
               row_id=None)  # fmt: skip


@dataclass
class World:
    store: Cronbox
    session: Session
    other: Session
    foreign: str
    foreign_rows: list[InboundMessage]
    own: str


def make_world(home: Path) -> World:
    store = Cronbox(home)
    session = store.create_session("target")
    other = store.create_session("other")
    foreign = store.schedule_task(other.id, {"prompt": "theirs", "recurrence": "@daily"}).id
    own = store.schedule_task(session.id, {"prompt": "mine", "processAfter": "+1h"}).id
    return World(store, session, other, foreign, store.inbound_rows(other.id), own)


def write_raw(session_dir: Path, rows: list[Row]) -> list[int]:
    """Insert rows exactly as given (any kind, any content), with odd seqs."""
    with sdb.outbound(session_dir) as db, db.atomic():
        seqs = []
        for i, row in enumerate(rows):
            seq = 2 * i + 1
            db.execute(
                "INSERT INTO messages_out (id, seq, kind, created_at, in_reply_to, content) "
                "VALUES (?, ?, ?, ?, NULL, ?)",
                [None if row.row_id is None else f"{row.row_id}-{seq}", seq, row.kind,
                 "2026-01-01T00:00:00.000Z", row.content],
            )  # fmt: skip
            seqs.append(seq)
    return seqs


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_outbound_rows_never_crash_the_host_and_bad_ones_are_rejected(
    data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = make_world(Path(tmp) / "home")
        store, session = world.store, world.session
        bad = bad_rows(world.foreign, world.own)
        rows = data.draw(st.lists(good_rows() | bad, min_size=1, max_size=10))
        seqs = write_raw(store.session_dir(session.id), rows)

        raw = store.undelivered(session.id)
        assert [r["seq"] for r in raw] == seqs
        handled: list[Handled] = anyio.run(Delivery(store, []).deliver, session, raw)

        # Every row was handled exactly once: nothing is left to deliver.
        assert store.undelivered(session.id) == []
        for row, outcome in zip(rows, handled, strict=True):
            if row.good:
                assert outcome.status in ("applied", "delivered"), (row, outcome)
            else:
                assert outcome.status == "rejected", (row, outcome)
        for row in rows:
            if row.fresh_task:
                task = store.get_task(row.fresh_task, session_id=session.id)
                assert task.status is MessageStatus.PENDING

        # Each rejection is audited and told to the agent, briefly, on its next turn: the
        # rejections between two turns share one note that counts them all.
        n_bad = sum(not row.good for row in rows)
        rejects = [
            e for e in store.audit_entries(session.id, 1000) if e.action == "outbound.reject"
        ]
        assert len(rejects) == n_bad
        assert all(e.actor == f"agent:{session.id}" for e in rejects)
        notes = [r for r in store.inbound_rows(session.id) if r.kind is MessageKind.SYSTEM]
        assert len(notes) == min(n_bad, 1)
        assert sum(n.content["rejections"] for n in notes) == n_bad
        assert all("was rejected" in n.prompt and len(n.prompt) < 1000 for n in notes)
        assert all(n.trigger == 0 for n in notes)

        # The other session's task is exactly as it was.
        assert store.inbound_rows(world.other.id) == world.foreign_rows
        assert store.get_task(world.foreign).status is MessageStatus.PENDING
