"""A home made by the first layout (session files side by side) migrates losing nothing.

``data/home-flat-layout.tar.gz`` was made by the code of commit 48b7f1a: one session
in Europe/Berlin with a daily task that ran once (its next occurrence pending), a
one-time task that failed, a paused task, and a chat message the runner answered; both
replies were delivered.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import MessageStatus, RunOutcome
from host.service import Cronbox

DATA = Path(__file__).parent / "data" / "home-flat-layout.tar.gz"


@pytest.fixture
def old_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    with tarfile.open(DATA) as tar:
        tar.extractall(home, filter="data")
    return home


def test_flat_layout_home_migrates_with_every_task_run_and_reply(old_home: Path) -> None:
    (session_dir,) = (old_home / "sessions").iterdir()
    assert (session_dir / "inbound.db").is_file()

    store = Cronbox(old_home)

    assert not (session_dir / "inbound.db").exists()
    assert not (session_dir / "outbound.db").exists()
    assert (session_dir / sdb.INBOUND).is_file()
    assert (session_dir / sdb.OUTBOUND).is_file()
    assert (session_dir / sdb.HEARTBEAT).is_file()
    (session,) = store.list_sessions()
    assert session.name == "legacy"

    tasks = {t.series_id: t for t in store.list_tasks(include_all=True)}
    assert tasks["daily-brief"].status is MessageStatus.PENDING
    assert tasks["daily-brief"].id == "daily-brief~1"
    assert tasks["call-bank"].status is MessageStatus.FAILED
    assert tasks["paused-one"].status is MessageStatus.PAUSED
    assert [r.outcome for r in store.runs_for("daily-brief")] == [RunOutcome.OK]
    (failed,) = store.runs_for("call-bank")
    assert (failed.outcome, failed.error) == (RunOutcome.ERROR, "the bank is closed")

    rows = store.inbound_rows(session.id)
    assert [r.status for r in rows if r.kind.value == "chat"] == [MessageStatus.COMPLETED]
    with sdb.outbound(session_dir, readonly=True) as db:
        replies = [r["content"] for r in sdb.outbound_after(db, 0) if r["kind"] == "chat"]
    assert len(replies) == 2
    # Both replies were delivered before the move and are not delivered again.
    assert store.undelivered(session.id) == []


def test_migrated_home_is_left_alone_when_opened_again(old_home: Path) -> None:
    Cronbox(old_home)
    (session_dir,) = (old_home / "sessions").iterdir()
    before = sorted(p.relative_to(session_dir) for p in session_dir.rglob("*"))
    assert sdb.migrate_layout(session_dir) is False
    Cronbox(old_home)
    assert sorted(p.relative_to(session_dir) for p in session_dir.rglob("*")) == before
