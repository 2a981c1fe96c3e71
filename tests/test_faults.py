"""Fault injection: a hostile or broken outbox, done from outside as an attacker or a crash
would, never hurts another session. Real host, real runner subprocesses, real files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import OutboxUnreadable
from cronbox_shared.models import RunOutcome
from cronbox_shared.timeutil import fmt, parse_utc
from host.service import Cronbox
from host.sweep import Sweeper
from tests.cli_harness import cli_for, ok
from tests.hosting import (
    fast_sweep,
    kill_group,
    make_settings,
    replies,
    runner_pids,
    running_host,
    wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CAP = 256 * 1024


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


def answered(store: Cronbox, session_id: str, n: int = 1) -> bool:
    """Whether ``n`` of the session's chats were answered (their runs finished)."""
    rows = [r for r in store.inbound_rows(session_id) if r.kind.value == "chat"]
    return sum(r.status.value == "completed" for r in rows) >= n


def printed(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "cronbox.reply" and r.getMessage().startswith(f"[{name}]")
    ]  # fmt: skip


def _garbage(outbox: Path, home: Path, victim: Path) -> None:
    (outbox / "outbound.db").write_bytes(b"\x00garbage\xff" * 4096)


def _directory(outbox: Path, home: Path, victim: Path) -> None:
    (outbox / "outbound.db").unlink()
    (outbox / "outbound.db").mkdir()


def _symlink_to_victim(outbox: Path, home: Path, victim: Path) -> None:
    (outbox / "outbound.db").unlink()
    os.symlink(os.path.relpath(victim / sdb.OUTBOUND, outbox), outbox / "outbound.db")


def _symlink_to_central(outbox: Path, home: Path, victim: Path) -> None:
    (outbox / "outbound.db").unlink()
    os.symlink(home / "cronbox.db", outbox / "outbound.db")


def _outbox_symlink(outbox: Path, home: Path, victim: Path) -> None:
    shutil.rmtree(outbox)
    os.symlink(victim / sdb.OUTBOX, outbox)


def _oversize(outbox: Path, home: Path, victim: Path) -> None:
    with sqlite3.connect(outbox / "outbound.db") as conn:
        conn.execute(
            "INSERT INTO session_state (key, value) VALUES ('bulk', hex(randomblob(?)))", [CAP]
        )


def _restore(saved: Path) -> Callable[[Path], None]:
    def heal(outbox: Path) -> None:
        """Put the saved file back, without the journal a writer killed mid-write left
        (rolled back into the saved file, it would make it another file)."""
        target = outbox / "outbound.db"
        Path(f"{target}-journal").unlink(missing_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        shutil.copy(saved, target)
        box = outbox.stat()  # the outbox's writer (a container's user) owns it again
        os.chown(target, box.st_uid, box.st_gid)

    return heal


HOSTILE = {
    "garbage": (_garbage, "unreadable"),
    "directory": (_directory, "is a directory"),
    "symlink to another session": (_symlink_to_victim, "symbolic link"),
    "symlink to cronbox.db": (_symlink_to_central, "symbolic link"),
    "oversize": (_oversize, "over the"),
}


@contextmanager
def three_sessions(
    tmp_path: Path, **settings_overrides: object
) -> Iterator[tuple[Cronbox, Path, dict[str, str]]]:
    settings = make_settings(tmp_path / "home", outbox_max_bytes=CAP, **settings_overrides)
    store = Cronbox.from_settings(settings)
    ids = {n: store.create_session(n).id for n in ("victim", "hostile", "bystander")}
    yield store, settings.home, ids


async def _bystander_served(sweeper: Sweeper, store: Cronbox, bystander: str) -> None:
    """A task of the bystander falls due during the fault and runs, never early. How late
    it starts is measured by scripts/bench/faults.py, not asserted here."""
    due = store.now() + timedelta(seconds=1)
    task = store.schedule_task(bystander, {"prompt": "on time", "processAfter": fmt(due)})
    await wait_for(
        lambda: any(r.outcome is RunOutcome.OK for r in store.runs_for(task.id)), limit=60
    )
    starts = [
        s for s in sweeper.starts if s.session_id == bystander and s.due_at == parse_utc(fmt(due))
    ]
    assert starts and starts[0].lateness >= 0


async def _victim_and_hostile_answered(
    sweeper: Sweeper, store: Cronbox, ids: dict[str, str]
) -> None:
    """The victim and the hostile session each answer once, then their runners go idle."""
    store.send_message(ids["victim"], "VICTIM-PRIVATE-1")
    store.send_message(ids["hostile"], "hello")
    await wait_for(lambda: answered(store, ids["victim"]) and answered(store, ids["hostile"]))
    await wait_for(lambda: not sweeper.live)


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_hostile_outbox_quarantines_only_its_own_session(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    inject, reason = HOSTILE[kind]
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    with three_sessions(tmp_path) as (store, home, ids):
        victim_dir, hostile_dir = (
            store.session_dir(ids["victim"]),
            store.session_dir(ids["hostile"]),
        )
        async with running_host(make_settings(home, outbox_max_bytes=CAP)) as sweeper:
            await _victim_and_hostile_answered(sweeper, store, ids)
            saved = tmp_path / "saved.db"
            shutil.copy(hostile_dir / sdb.OUTBOUND, saved)
            inject(hostile_dir / sdb.OUTBOX, home, victim_dir)
            sdb.ring_doorbell(hostile_dir)
            store.send_message(ids["hostile"], "second")
            await wait_for(lambda: ids["hostile"] in sweeper.sick)
            assert reason in sweeper.sick[ids["hostile"]].reason
            assert "quarantined" in sweeper.problems[ids["hostile"]].reason
            assert ids["hostile"] not in sweeper.live
            await _bystander_served(sweeper, store, ids["bystander"])
            assert ids["hostile"] in sweeper.sick  # served while the fault lasted
            # Nothing of another session was read as the hostile one's.
            assert not [m for m in printed(caplog, "hostile") if "VICTIM" in m]
            _restore(saved)(hostile_dir / sdb.OUTBOX)
            await wait_for(lambda: ids["hostile"] not in sweeper.sick)
            await wait_for(lambda: answered(store, ids["hostile"], 2))
    actions = [e.action for e in store.audit_entries(ids["hostile"], 100)]
    assert "session.quarantine" in actions and "session.release" in actions
    assert not [m for m in printed(caplog, "hostile") if "VICTIM" in m]
    assert len(printed(caplog, "victim")) == 1


async def test_a_symlinked_outbox_directory_is_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    with three_sessions(tmp_path) as (store, home, ids):
        victim_dir, hostile_dir = (
            store.session_dir(ids["victim"]),
            store.session_dir(ids["hostile"]),
        )
        async with running_host(make_settings(home, outbox_max_bytes=CAP)) as sweeper:
            await _victim_and_hostile_answered(sweeper, store, ids)
            _outbox_symlink(hostile_dir / sdb.OUTBOX, home, victim_dir)
            sdb.ring_doorbell(hostile_dir)
            await wait_for(lambda: ids["hostile"] in sweeper.sick)
            assert "outbox/ is a symbolic link" in sweeper.sick[ids["hostile"]].reason
            await _bystander_served(sweeper, store, ids["bystander"])
    assert not [m for m in printed(caplog, "hostile") if "VICTIM" in m]


def _hold_lock(path: Path) -> subprocess.Popen[bytes]:
    """Another process takes the outbox's exclusive lock and keeps it."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "c.execute(\"INSERT INTO session_state VALUES ('held', 'x')\")\n"
        "print('held', flush=True)\n"
        "time.sleep(3600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    return holder


async def test_a_lock_held_by_a_stopped_writer_delays_no_one_and_quarantines_its_session(
    tmp_path: Path,
) -> None:
    with three_sessions(tmp_path) as (store, home, ids):
        hostile_dir = store.session_dir(ids["hostile"])
        settings = make_settings(home, outbox_max_bytes=CAP)
        async with running_host(settings, fast_sweep(settings, outbox_stall=1.0)) as sweeper:
            store.send_message(ids["hostile"], "hello")
            await wait_for(lambda: answered(store, ids["hostile"]))
            await wait_for(lambda: not sweeper.live)
            holder = _hold_lock(hostile_dir / sdb.OUTBOUND)
            try:
                os.kill(holder.pid, signal.SIGSTOP)
                store.send_message(ids["hostile"], "second")
                await _bystander_served(sweeper, store, ids["bystander"])
                await wait_for(lambda: ids["hostile"] in sweeper.sick)
                assert "locked" in sweeper.sick[ids["hostile"]].reason
                assert ids["hostile"] not in sweeper.live
            finally:
                holder.kill()
                holder.wait()
                assert holder.stdout is not None
                holder.stdout.close()
            await wait_for(lambda: ids["hostile"] not in sweeper.sick)
            await wait_for(lambda: answered(store, ids["hostile"], 2))


def _killed_mid_write(path: Path) -> None:
    """A writer SIGKILLed in the middle of a large transaction leaves a hot journal."""
    code = (
        "import sqlite3, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA cache_size=2')\n"
        "c.execute('BEGIN')\n"
        "c.execute('CREATE TABLE junk (k, v)')\n"
        "for i in range(30):\n"
        "    c.execute('INSERT INTO junk VALUES (?, hex(randomblob(1000)))', [f'k{i}'])\n"
        "print('writing', flush=True)\n"
        "time.sleep(3600)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"writing\n"
    writer.kill()
    writer.wait()
    writer.stdout.close()
    assert Path(f"{path}-journal").stat().st_size > 0


async def test_a_hot_journal_left_by_a_killed_writer_is_recovered_without_a_restart(
    tmp_path: Path,
) -> None:
    with three_sessions(tmp_path) as (store, home, ids):
        hostile_dir = store.session_dir(ids["hostile"])
        async with running_host(make_settings(home, outbox_max_bytes=CAP)) as sweeper:
            store.send_message(ids["hostile"], "hello")
            await wait_for(lambda: answered(store, ids["hostile"]))
            await wait_for(lambda: not sweeper.live)
            _killed_mid_write(hostile_dir / sdb.OUTBOUND)
            sdb.ring_doorbell(hostile_dir)
            await _bystander_served(sweeper, store, ids["bystander"])
            store.send_message(ids["hostile"], "second")
            await wait_for(lambda: answered(store, ids["hostile"], 2))
            assert not await anyio.Path(f"{hostile_dir / sdb.OUTBOUND}-journal").exists()
            assert ids["hostile"] not in sweeper.sick


def test_reading_an_outbox_follows_no_link_and_names_why(tmp_path: Path) -> None:
    session = tmp_path / "sessions" / "s-000000000001"
    other = tmp_path / "sessions" / "s-000000000002"
    for d in (session, other):
        with sdb.outbound(d) as db, db.atomic():
            sdb.set_state(db, "who", d.name)
    (session / sdb.OUTBOUND).unlink()
    os.symlink(other / sdb.OUTBOUND, session / sdb.OUTBOUND)
    with pytest.raises(OutboxUnreadable, match="symbolic link"), sdb.read_outbox(session):
        pass
    (session / sdb.OUTBOUND).unlink()
    os.mkfifo(session / sdb.OUTBOUND)
    assert sdb.change_counter(session / sdb.OUTBOUND) is None
    with pytest.raises(OutboxUnreadable, match="not a regular file"), sdb.read_outbox(session):
        pass


def test_a_journal_seen_as_its_writer_removes_it_is_looked_at_again_and_a_linked_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = tmp_path / "sessions" / "s-000000000001"
    with sdb.outbound(session) as db, db.atomic():
        sdb.set_state(db, "who", session.name)
    journal = session / f"{sdb.OUTBOUND}-journal"
    journal.write_bytes(b"")
    os.link(journal, tmp_path / "elsewhere")
    with pytest.raises(OutboxUnreadable, match="has 2 hard links") as linked:
        sdb.check_outbox(session)
    assert not linked.value.transient
    (tmp_path / "elsewhere").unlink()
    real = os.lstat

    def mid_unlink(path: os.PathLike[str] | str) -> os.stat_result:
        # The path looked up in the instant before SQLite removed the journal at commit.
        st = real(path)
        return os.stat_result((*st[:3], 0, *st[4:])) if Path(path) == journal else st

    monkeypatch.setattr(os, "lstat", mid_unlink)
    with pytest.raises(OutboxUnreadable, match="being removed by its writer") as removed:
        sdb.check_outbox(session)
    assert removed.value.transient


async def test_session_reset_moves_a_bad_outbox_aside_and_the_session_is_served_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    cli = cli_for(tmp_path / "home")
    with three_sessions(tmp_path) as (store, home, ids):
        hostile_dir = store.session_dir(ids["hostile"])
        async with running_host(make_settings(home, outbox_max_bytes=CAP)) as sweeper:
            store.send_message(ids["hostile"], "first")
            await wait_for(lambda: answered(store, ids["hostile"]))
            await wait_for(lambda: not sweeper.live)
            _garbage(hostile_dir / sdb.OUTBOX, home, hostile_dir)
            store.send_message(ids["hostile"], "after reset")
            sdb.ring_doorbell(hostile_dir)
            await wait_for(lambda: ids["hostile"] in sweeper.sick)
            result = await anyio.to_thread.run_sync(
                lambda: ok(cli("session", "reset", "hostile", "--json"))
            )
            kept = Path(json.loads(result.stdout)["kept"])
            await wait_for(lambda: ids["hostile"] not in sweeper.sick)
            await wait_for(lambda: answered(store, ids["hostile"], 2))
    assert (kept / "outbound.db").read_bytes().startswith(b"\x00garbage")
    # The new outbox's seqs continue above the old one's, so its reply was delivered.
    assert [m for m in printed(caplog, "hostile") if "after reset" in m]
    assert "session.reset" in [e.action for e in store.audit_entries(ids["hostile"], 100)]


async def test_the_process_runtime_states_its_trust_model_once_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cronbox")
    async with running_host(make_settings(tmp_path / "home")):
        pass
    said = [r for r in caplog.records if "gives no isolation" in r.getMessage()]
    assert len(said) == 1


async def test_no_gate_script_outlives_its_killed_runner(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("gated")
    marker = tmp_path / "gate-started"
    script = f"touch {marker}; sleep 600; echo '{{\"wakeAgent\": false}}'"
    store.schedule_task(session.id, {"prompt": "p", "processAfter": "+1s", "script": script})
    async with running_host(settings) as sweeper:
        await wait_for(marker.exists)
        [runner] = list(sweeper.live.values())
        gates = [p for p in runner_pids(settings.home) if p != int(runner.handle.ref)]
        assert gates, "the gate script runs beside its runner"
        kill_group(int(runner.handle.ref))  # the runner's group only, as a crash would
        await wait_for(lambda: session.id not in sweeper.live)
        await wait_for(lambda: not runner_pids(settings.home))


FLOOD = 10_000


async def test_a_flood_of_invalid_rows_is_rejected_without_hurting_a_bystander(
    tmp_path: Path,
) -> None:
    with three_sessions(tmp_path) as (store, home, ids):
        hostile_dir = store.session_dir(ids["hostile"])
        async with running_host(make_settings(home, outbox_max_bytes=16 * CAP)) as sweeper:
            store.send_message(ids["hostile"], "hello")
            await wait_for(lambda: answered(store, ids["hostile"]))
            await wait_for(lambda: not sweeper.live)
            flood(hostile_dir, FLOOD)
            sdb.ring_doorbell(hostile_dir)
            await _bystander_served(sweeper, store, ids["bystander"])
            await wait_for(lambda: len(rejected(store, ids["hostile"])) >= FLOOD, limit=120)
    assert len(rejected(store, ids["hostile"])) == FLOOD
    notes = [r for r in store.inbound_rows(ids["hostile"]) if r.kind.value == "system"]
    assert 1 <= len(notes) <= 5
    assert sum(n.content["rejections"] for n in notes) == FLOOD
    assert ids["hostile"] not in sweeper.sick


def flood(session_dir: Path, n: int) -> None:
    """Append ``n`` rows no host may accept, as a runner gone wrong could."""
    with sdb.outbound(session_dir) as db, db.atomic():
        (top,) = db.execute("SELECT coalesce(max(seq), -1) FROM messages_out").fetchone()
        db.conn.executemany(
            "INSERT INTO messages_out (id, seq, kind, created_at, content) VALUES (?, ?, ?, ?, ?)",
            [(f"flood-{i}", top + 2 * (i + 1), "system", "2026-01-01T00:00:00Z", "{not json")
             for i in range(n)],
        )  # fmt: skip


def rejected(store: Cronbox, session_id: str) -> list[int]:
    with sdb.inbound(store.session_dir(session_id), readonly=True) as db:
        rows = db.execute("SELECT seq FROM deliveries WHERE status = 'rejected'").fetchall()
    return [int(r[0]) for r in rows]


BIG_REPLY = 60_000


def big_writer(home: Path) -> None:
    """An agent profile whose every reply is ``BIG_REPLY`` bytes: one large write."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "agents.toml").write_text(
        '[agents.big]\nprovider = "command"\n'
        f'command = ["sh", "-c", "head -c {BIG_REPLY} /dev/zero | tr \\"\\\\\\\\0\\" x"]\n'
    )


@contextmanager
def reader_holding(path: Path) -> Iterator[None]:
    """Another process's open read transaction: a writer's commit waits for it, its
    journal written. (Another process: closing any descriptor of a file drops every
    lock this process holds on it, and the in-process host opens the outbox too.)"""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN')\n"
        "c.execute('SELECT count(*) FROM messages_out').fetchone()\n"
        "print('reading', flush=True)\n"
        "sys.stdin.read()\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert reader.stdin is not None and reader.stdout is not None
    try:
        assert reader.stdout.readline() == b"reading\n"
        yield
    finally:
        reader.stdin.close()
        reader.wait()
        reader.stdout.close()


def hot(path: Path) -> bool:
    journal = Path(f"{path}-journal")
    return journal.exists() and journal.stat().st_size > 0


async def kill_runner_mid_write(
    sweeper: Sweeper, store: Cronbox, session_id: str, home: Path
) -> list[int]:
    """SIGKILL the session's real runner while it commits a large reply (its journal
    written, beside outbound.db); returns the pids of the gate scripts it had running."""
    outbox = store.session_dir(session_id) / sdb.OUTBOUND
    runner = sweeper.live[session_id]
    gates = [p for p in runner_pids(home) if p != int(runner.handle.ref)]
    with reader_holding(outbox):
        store.send_message(session_id, "write something big")
        await wait_for(lambda: hot(outbox))
        kill_group(int(runner.handle.ref))
    assert hot(outbox), "the killed runner left its journal"
    return gates


def gone(pids: list[int]) -> bool:
    alive = set(pids)
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            state = "Z"
        if state == "Z":
            alive.discard(pid)
    return not alive


async def test_a_runner_killed_in_the_middle_of_a_large_write_recovers_on_the_next_pass(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    big_writer(home)
    settings = make_settings(home)
    store = Cronbox.from_settings(settings)
    session = store.create_session("big", agent="big")
    marker = tmp_path / "gate-started"
    script = f"touch {marker}; sleep 600; echo '{{\"wakeAgent\": false}}'"
    store.schedule_task(session.id, {"prompt": "p", "processAfter": "now", "script": script})
    async with running_host(settings) as sweeper:
        await wait_for(marker.exists)
        first = sweeper.live[session.id].handle.ref
        gates = await kill_runner_mid_write(sweeper, store, session.id, home)
        assert gates, "a gate script ran beside the runner"
        await wait_for(lambda: gone(gates))
        # Recovered by the same host: the journal rolled back, the chat answered by a new
        # runner, the session never quarantined.
        await wait_for(lambda: answered(store, session.id))
        assert sweeper.live[session.id].handle.ref != first
        assert not hot(store.session_dir(session.id) / sdb.OUTBOUND)
        assert session.id not in sweeper.sick
    [reply] = [r for r in replies(store, session.id) if r["in_reply_to"] is not None]
    assert len(json.loads(reply["content"])["text"]) >= BIG_REPLY
