"""Schema and every SQL statement on a session's own files.

A session directory holds ``inbox/inbound.db`` (written by the host only, read by the
container; the docker runtime mounts ``inbox/`` read-only), ``outbox/outbound.db`` and
``outbox/.heartbeat`` (written by the container only; the host opens them read-only) and
``workspace/``. The host-only file has a directory of its own so nothing a runner writes
(a journal, a replaced file) can ever sit beside it.
Both use ``journal_mode=DELETE`` so a reader in another mount namespace sees the pages
once the writer closes. Seq numbers are even in ``messages_in`` and odd in
``messages_out``, so a seq alone names a message in either table.

The statements a runner's wake runs (its claims, acks, replies, state and history) live
in :mod:`cronbox_shared.outbox`, over plain ``sqlite3``, and are re-exported here; the
schema and its migrations stay here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import OutboxUnreadable, Rejected
from cronbox_shared.models import (
    MAX_CHAT_BYTES,
    Ack,
    DeliveryStatus,
    InboundMessage,
    MessageKind,
    MessageStatus,
    OutboundMessage,
)

# Everything a runner needs of a session's files lives in cronbox_shared.outbox (plain
# sqlite3, so a runner's wake imports no sqlite-utils); it is this module's too.
from cronbox_shared.outbox import APPROVED as APPROVED
from cronbox_shared.outbox import BUSY_TIMEOUT_MS as BUSY_TIMEOUT_MS
from cronbox_shared.outbox import DOORBELL as DOORBELL
from cronbox_shared.outbox import HEARTBEAT as HEARTBEAT
from cronbox_shared.outbox import INBOUND as INBOUND
from cronbox_shared.outbox import INBOX as INBOX
from cronbox_shared.outbox import OUTBOUND as OUTBOUND
from cronbox_shared.outbox import OUTBOX as OUTBOX
from cronbox_shared.outbox import SEQ_FLOOR as SEQ_FLOOR
from cronbox_shared.outbox import SESSIONS as SESSIONS
from cronbox_shared.outbox import WORKSPACE as WORKSPACE
from cronbox_shared.outbox import add_history as add_history
from cronbox_shared.outbox import claimable as claimable
from cronbox_shared.outbox import clear_processing_acks as clear_processing_acks
from cronbox_shared.outbox import connect as connect
from cronbox_shared.outbox import delete_ack as delete_ack
from cronbox_shared.outbox import forget_history as forget_history
from cronbox_shared.outbox import get_state as get_state
from cronbox_shared.outbox import history as history
from cronbox_shared.outbox import insert_outbound as _insert_outbound
from cronbox_shared.outbox import next_due_after as next_due_after
from cronbox_shared.outbox import set_ack as set_ack
from cronbox_shared.outbox import set_state as set_state
from cronbox_shared.outbox import trigger_waiting as trigger_waiting
from cronbox_shared.timeutil import Instant

GATEWAY = "gateway"
"""The directory of the session's model gateway socket (host/gateway.py)."""
GATEWAY_SOCKET = "model.sock"
GATEWAY_ROWS_HEADER = "x-cronbox-rows"
"""The header a runner names the inbox rows of a model call in (comma-separated ids):
the gateway charges the call's tokens to their runs. Never forwarded to the vendor."""
GATEWAY_ERROR_TYPE = "gateway_error"
"""The ``error.type`` of a call the gateway refused itself (its message is the reason)."""
# A read-only reader of an untrusted outbox waits this long for its writer's lock, then
# gives up for this pass: a lock held by one runner must never stall the host's sweep.
OUTBOX_BUSY_MS = 50

_DbT = TypeVar("_DbT", bound=Database)

inbound_migrations = Migrations("cronbox.inbound")
outbound_migrations = Migrations("cronbox.outbound")


@inbound_migrations()
def m001_inbound(db: Database) -> None:
    """messages_in, delivered and session_routing."""
    db.execute(
        """
        CREATE TABLE messages_in (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE CHECK (seq % 2 = 0),
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT,
            status TEXT NOT NULL,
            process_after TEXT,
            scheduled_for TEXT,
            recurrence TEXT,
            timezone TEXT NOT NULL,
            series_id TEXT,
            tries INTEGER NOT NULL DEFAULT 0,
            "trigger" INTEGER NOT NULL DEFAULT 1,
            content TEXT NOT NULL,
            misfire_grace INTEGER,
            timeout INTEGER,
            error TEXT
        )
        """
    )
    db.execute("CREATE INDEX messages_in_due ON messages_in (status, process_after)")
    db.execute("CREATE INDEX messages_in_series ON messages_in (series_id)")
    db.execute(
        """
        CREATE TABLE delivered (
            seq INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            delivered_at TEXT NOT NULL,
            status TEXT NOT NULL,
            detail TEXT
        )
        """
    )
    db.execute(
        """
        CREATE TABLE session_routing (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            channel TEXT NOT NULL,
            destination TEXT
        )
        """
    )


@inbound_migrations()
def m002_deliveries(db: Database) -> None:
    """Per-channel delivery state replaces one ``delivered`` row per seq; series index.

    A reply is recorded once per channel, so a channel that fails keeps its own
    attempts and next attempt while the others are done. Actions use channel "action".
    """
    db.execute(
        """
        CREATE TABLE deliveries (
            seq INTEGER NOT NULL,
            channel TEXT NOT NULL,
            message_id TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            detail TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (seq, channel)
        )
        """
    )
    db.execute("CREATE INDEX deliveries_pending ON deliveries (status, next_attempt_at)")
    db.execute(
        "INSERT INTO deliveries (seq, channel, message_id, status, attempts, detail, updated_at) "
        "SELECT seq, channel, message_id, status, 1, detail, delivered_at FROM delivered"
    )
    db.execute("DROP TABLE delivered")
    # The live (or newest) occurrence of a series is its newest scheduled row.
    db.execute("DROP INDEX messages_in_series")
    db.execute("CREATE INDEX messages_in_series ON messages_in (series_id, seq)")
    db.execute("CREATE INDEX messages_in_finished ON messages_in (status, updated_at)")


@inbound_migrations()
def m003_session_info(db: Database) -> None:
    """What the host tells a session's runner and MCP server about the session itself."""
    db.execute("CREATE TABLE session_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@inbound_migrations()
def m004_policies(db: Database) -> None:
    """Scheduling policies of a task (missed runs, failure streak and auto-pause, jitter).

    ``failures`` counts the failed occurrences in a row before this one, so it passes from
    occurrence to occurrence with the series; ``paused_reason`` says why a series was
    paused (by the failure rule, or the note given with ``task pause``).
    """
    for column in (
        "missed_policy TEXT",
        "catchup_limit INTEGER",
        "max_failures INTEGER",
        "failures INTEGER NOT NULL DEFAULT 0",
        "paused_reason TEXT",
        "jitter INTEGER",
    ):
        db.execute(f"ALTER TABLE messages_in ADD COLUMN {column}")


@inbound_migrations()
def m004_quiet_hours(db: Database) -> None:
    """A task that runs in its session's quiet hours anyway (``--ignore-quiet``)."""
    db.execute("ALTER TABLE messages_in ADD COLUMN ignore_quiet INTEGER NOT NULL DEFAULT 0")


@inbound_migrations()
def m005_delivery_attempts(db: Database) -> None:
    """Every attempt a channel made at a reply: when, what came of it, the error."""
    db.execute(
        """
        CREATE TABLE delivery_attempts (
            id INTEGER PRIMARY KEY,
            seq INTEGER NOT NULL,
            channel TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT
        )
        """
    )
    db.execute("CREATE INDEX delivery_attempts_seq ON delivery_attempts (seq, channel)")


@inbound_migrations()
def m006_run_journal(db: Database) -> None:
    """The run records of the last inbox transaction, until the central history has them."""
    db.execute("CREATE TABLE run_journal (id INTEGER PRIMARY KEY, record TEXT NOT NULL)")


@inbound_migrations()
def m008_isolated(db: Database) -> None:
    """A task that runs in a fresh conversation, without the session's history."""
    db.execute("ALTER TABLE messages_in ADD COLUMN isolated INTEGER NOT NULL DEFAULT 0")


@inbound_migrations()
def m009_chains(db: Database) -> None:
    """Chained tasks (a parent series, the outcomes and output that fire them, and the
    parent occurrence each run was fired by, unique per child) and approval gates."""
    for column in (
        "after_task TEXT",
        "after_outcome TEXT",
        "when_output TEXT",
        "chain_key TEXT",
        "approval INTEGER NOT NULL DEFAULT 0",
        "approval_timeout INTEGER",
        "on_timeout TEXT",
        "approval_state TEXT",
    ):
        db.execute(f"ALTER TABLE messages_in ADD COLUMN {column}")
    # A parent occurrence fires each child once: a repeated settlement cannot double it.
    db.execute(
        "CREATE UNIQUE INDEX messages_in_chain_key ON messages_in (series_id, chain_key) "
        "WHERE chain_key IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX messages_in_after ON messages_in (after_task) WHERE after_task IS NOT NULL"
    )


@outbound_migrations()
def m001_outbound(db: Database) -> None:
    """messages_out, processing_ack and session_state."""
    db.execute(
        """
        CREATE TABLE messages_out (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE CHECK (seq % 2 = 1),
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL,
            in_reply_to TEXT,
            content TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE processing_ack (
            message_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            error TEXT,
            output_preview TEXT,
            PRIMARY KEY (message_id, attempt)
        )
        """
    )
    db.execute("CREATE TABLE session_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@outbound_migrations()
def m002_ack_started_at(db: Database) -> None:
    """When an attempt started: kept when its ack moves on from ``processing``."""
    db.execute("ALTER TABLE processing_ack ADD COLUMN started_at TEXT")


@outbound_migrations()
def m003_history(db: Database) -> None:
    """The API providers' conversation: one row per answered wake (agent_runner.history)."""
    db.execute(
        """
        CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            dialect TEXT NOT NULL,
            created_at TEXT NOT NULL,
            messages TEXT NOT NULL
        )
        """
    )


def change_counter(path: Path) -> int | None:
    """SQLite's file change counter (header offset 24), None when the file is unreadable.

    In rollback-journal mode (``journal_mode=DELETE``, which session files use) every
    committed transaction increments it, so it tells whether a file changed without
    opening it as a database. A symbolic link, a pipe or a device is never opened (it is
    None: a reader that looks closer reports why).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        header = os.pread(fd, 28, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int.from_bytes(header[24:28], "big") if len(header) == 28 else None


def check_outbox(session_dir: Path, max_bytes: int = DEFAULTS.outbox_max_bytes) -> bool:
    """Whether ``outbox/outbound.db`` exists, after checking it may be read at all.

    The outbox is written by an untrusted runner: ``outbox/`` must be a real directory
    (no symbolic link) and ``outbound.db`` a regular file with one link, owned by the
    host or by the outbox's owner (the container's user), no larger than ``max_bytes``;
    its journal, when there is one, a regular file too. Raises OutboxUnreadable with the
    reason otherwise. Nothing is followed, so nothing of another session is looked at.
    """
    outbox = session_dir / OUTBOX
    try:
        box = os.lstat(outbox)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutboxUnreadable(f"outbox/ cannot be examined: {exc.strerror}") from None
    if stat.S_ISLNK(box.st_mode):
        raise OutboxUnreadable("outbox/ is a symbolic link")
    if not stat.S_ISDIR(box.st_mode):
        raise OutboxUnreadable("outbox/ is not a directory")
    owners = {os.geteuid(), box.st_uid}
    try:
        st = os.lstat(session_dir / OUTBOUND)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutboxUnreadable(f"outbound.db cannot be examined: {exc.strerror}") from None
    _check_file("outbound.db", st, owners)
    if st.st_size > max_bytes:
        raise OutboxUnreadable(
            f"outbound.db holds {st.st_size} bytes, over the {max_bytes}-byte cap "
            "(CRONBOX_OUTBOX_MAX_BYTES)"
        )
    try:
        journal = os.lstat(session_dir / f"{OUTBOUND}-journal")
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise OutboxUnreadable(f"outbound.db-journal cannot be examined: {exc.strerror}") from None
    _check_file("outbound.db-journal", journal, owners)
    if journal.st_size > max_bytes:
        raise OutboxUnreadable(f"outbound.db-journal holds {journal.st_size} bytes, over the cap")
    return True


def _check_file(name: str, st: os.stat_result, owners: set[int]) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise OutboxUnreadable(f"{name} is a symbolic link")
    if stat.S_ISDIR(st.st_mode):
        raise OutboxUnreadable(f"{name} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OutboxUnreadable(f"{name} is not a regular file")
    if st.st_nlink == 0:
        # Looked at in the instant its writer removed it (a journal at commit) or renamed
        # another file over it: what the path names next is looked at next time.
        raise OutboxUnreadable(f"{name} was being removed by its writer", transient=True)
    if st.st_nlink != 1:
        raise OutboxUnreadable(f"{name} has {st.st_nlink} hard links")
    if st.st_uid not in owners:
        raise OutboxUnreadable(f"{name} is owned by uid {st.st_uid}")


@contextmanager
def read_outbox(
    session_dir: Path,
    max_bytes: int = DEFAULTS.outbox_max_bytes,
    time_limit: float | None = None,
    busy_ms: int = BUSY_TIMEOUT_MS,
) -> Iterator[OutboundDb]:
    """``outbox/outbound.db`` opened read-only for one read, as untrusted input.

    After :func:`check_outbox`, the file is opened with ``O_NOFOLLOW`` and held open;
    SQLite must have opened that same path (no link followed) and the path must still
    name the same file when the read is over, else the read is discarded. A lock is
    waited for ``busy_ms`` (the host waits only briefly) and a read is interrupted after
    ``time_limit`` seconds (when given).
    Every failure raises OutboxUnreadable with a reason; a missing file raises
    FileNotFoundError.
    """
    path = session_dir / OUTBOUND
    if not check_outbox(session_dir, max_bytes):
        raise FileNotFoundError(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise OutboxUnreadable(f"outbound.db cannot be opened: {exc.strerror}") from None
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode):
            raise OutboxUnreadable("outbound.db is not a regular file")
        expected = os.path.join(os.path.realpath(session_dir / OUTBOX), "outbound.db")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_ms / 1000)
        try:
            if time_limit is not None:
                deadline = time.monotonic() + time_limit
                conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            try:
                conn.execute(f"PRAGMA busy_timeout={busy_ms}")
                opened = [r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"]
                # SQLite names the file it opened with links resolved; one that does not
                # resolve them names the path itself (the checks after the read apply).
                if opened not in ([expected], [os.path.abspath(path)]):
                    raise OutboxUnreadable("outbound.db was swapped for another file")
                yield OutboundDb(conn)
            except sqlite3.Error as exc:
                raise _unreadable(exc, time_limit or 0) from None
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                raise OutboxUnreadable("outbound.db was replaced while it was read")
        finally:
            conn.close()
    finally:
        os.close(fd)


def _unreadable(exc: sqlite3.Error, time_limit: float) -> OutboxUnreadable:
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", "") or ""
    if code == sqlite3.SQLITE_READONLY_ROLLBACK:
        return OutboxUnreadable(
            "outbound.db has a hot journal (its writer was killed mid-write)", hot_journal=True
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return OutboxUnreadable("outbound.db is locked by its writer", transient=True)
    if name == "SQLITE_INTERRUPT":
        return OutboxUnreadable(f"reading outbound.db took longer than {time_limit:g} s")
    return OutboxUnreadable(f"outbound.db is unreadable: {exc}")


def roll_back_journal(session_dir: Path, max_bytes: int = DEFAULTS.outbox_max_bytes) -> None:
    """Roll back the hot journal a killed writer left beside ``outbound.db``.

    Only for a session none of whose processes is running (the host calls it after its
    runner is gone): the one time the host opens the outbox for writing, after the same
    checks as every read, and without migrating or changing anything else.
    """
    if not check_outbox(session_dir, max_bytes):
        return
    conn = sqlite3.connect(session_dir / OUTBOUND, timeout=OUTBOX_BUSY_MS / 1000)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as exc:
        raise _unreadable(exc, DEFAULTS.outbox_read_limit) from None
    finally:
        conn.close()


def ring_doorbell(session_dir: Path) -> bool:
    """Tell the home's host that this session's outbox has new rows; False when it can't.

    Only a session directory inside a cronbox home has a doorbell: a container's mount
    has none, and the host watches a container's outbox while it runs and for a while
    after. The ring is a hint only; the session's next wake takes the rows in anyway.
    """
    session_dir = Path(session_dir).resolve()
    bell = session_dir.parent.parent / DOORBELL
    if session_dir.parent.name != SESSIONS or not bell.is_dir():
        return False
    try:
        os.close(os.open(bell / session_dir.name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    except OSError:
        return False
    return True


# The files of a session directory in the first layout (everything side by side).
_FLAT_LAYOUT = {
    "inbound.db": INBOUND,
    "outbound.db": OUTBOUND,
    "outbound.db-journal": f"{OUTBOUND}-journal",
    ".heartbeat": HEARTBEAT,
}


def migrate_layout(session_dir: Path) -> bool:
    """Move a session directory of the first layout into ``inbox/`` and ``outbox/``.

    ``inbound.db`` is opened where it lies first, so a journal the host left there by a
    crash is rolled back before the file moves without it. Idempotent: a directory
    already in the current layout is left alone. Returns whether anything moved.
    """
    old = session_dir / "inbound.db"
    if not old.is_file() or (session_dir / INBOUND).exists():
        return False
    conn = sqlite3.connect(old, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    finally:
        conn.close()
    (session_dir / INBOX).mkdir(exist_ok=True)
    (session_dir / OUTBOX).mkdir(exist_ok=True)
    (session_dir / WORKSPACE).mkdir(exist_ok=True)
    for name, new in _FLAT_LAYOUT.items():
        if (session_dir / name).exists() and not (session_dir / new).exists():
            (session_dir / name).rename(session_dir / new)
    (session_dir / "inbound.db-journal").unlink(missing_ok=True)
    return True


def _rolled_back(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """``conn`` (read-only), or a fresh one once the hot journal a writer killed mid-write
    left beside ``inbound.db`` is rolled back.

    A read-only connection cannot roll a journal back, so until the next write every
    reader would fail. inbound.db is the host's own file (not a runner's), so a reader
    that may write it (the host, the CLI) rolls it back; a container's read-only mount
    cannot, and waits for the host's next write.
    """
    try:
        conn.execute("PRAGMA schema_version").fetchone()
        return conn
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_READONLY_ROLLBACK:
            return conn  # the caller's first query reports it
        if not os.access(path, os.W_OK):
            return conn
    conn.close()
    healer = connect(path, readonly=False)
    try:
        healer.execute("PRAGMA schema_version").fetchone()
    finally:
        healer.close()
    return connect(path, readonly=True)


class InboundDb(Database):
    """An open ``inbound.db``: the functions here that read or write the inbox take one."""


class OutboundDb(Database):
    """An open ``outbound.db``: the functions here that read or write the outbox take one."""


@contextmanager
def open_db(kind: type[_DbT], path: Path, migrations: Migrations, readonly: bool) -> Iterator[_DbT]:
    """Open a session file for the span of one unit of work, then close it.

    Writers create its directory and apply ``migrations`` first; readers never write.
    """
    if not readonly:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, readonly)
    if readonly and kind is InboundDb:
        conn = _rolled_back(conn, path)
    try:
        db = kind(conn)
        if not readonly:
            migrations.apply(db)
        yield db
    finally:
        conn.close()


def inbound(session_dir: Path, readonly: bool = False) -> AbstractContextManager[InboundDb]:
    """Context manager over ``inbox/inbound.db`` (host: read-write; container: read-only)."""
    return open_db(InboundDb, session_dir / INBOUND, inbound_migrations, readonly)


def outbound(session_dir: Path, readonly: bool = False) -> AbstractContextManager[OutboundDb]:
    """Context manager over ``outbox/outbound.db`` (container: read-write; host: read-only).

    Read-only, it is :func:`read_outbox` with the default limits: every reader treats
    the file as untrusted.
    """
    if readonly:
        return read_outbox(session_dir)
    return open_db(OutboundDb, session_dir / OUTBOUND, outbound_migrations, readonly)


# --- messages_in -----------------------------------------------------------------------

_IN_COLUMNS = (
    "id, seq, kind, created_at, updated_at, status, process_after, scheduled_for, "
    'recurrence, timezone, series_id, tries, "trigger", content, misfire_grace, timeout, error, '
    "missed_policy, catchup_limit, max_failures, failures, paused_reason, jitter, ignore_quiet, "
    "after_task, after_outcome, when_output, chain_key, approval, approval_timeout, on_timeout, "
    "approval_state, "
    "isolated"
)


def _row_to_inbound(row: sqlite3.Row | tuple[Any, ...]) -> InboundMessage:
    keys = [c.strip().strip('"') for c in _IN_COLUMNS.split(",")]
    data = dict(zip(keys, row, strict=True))
    data["content"] = json.loads(data["content"])
    if data["approval_state"] is not None:
        data["approval_state"] = json.loads(data["approval_state"])
    return InboundMessage.model_validate(data)


def insert_inbound(db: InboundDb, row: dict[str, Any]) -> int:
    """Insert a ``messages_in`` row with the next even seq; the caller holds the transaction."""
    (max_seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM messages_in").fetchone()
    seq = int(max_seq) + 2 if int(max_seq) % 2 == 0 else int(max_seq) + 1
    values = {**row, "seq": seq, "content": json.dumps(row["content"])}
    if values.get("approval_state") is not None:
        values["approval_state"] = json.dumps(values["approval_state"])
    cols = ", ".join(f'"{k}"' for k in values)
    marks = ", ".join("?" for _ in values)
    db.execute(f"INSERT INTO messages_in ({cols}) VALUES ({marks})", list(values.values()))
    return seq


def update_inbound(db: InboundDb, message_id: str, **fields: Any) -> None:
    """Set columns of one ``messages_in`` row."""
    if "content" in fields:
        fields["content"] = json.dumps(fields["content"])
    if fields.get("approval_state") is not None:
        fields["approval_state"] = json.dumps(fields["approval_state"])
    assign = ", ".join(f'"{k}" = ?' for k in fields)
    db.execute(f"UPDATE messages_in SET {assign} WHERE id = ?", [*fields.values(), message_id])


def carry_run_journal(db: InboundDb, records: Sequence[str]) -> list[str]:
    """Replace the run journal with ``records`` (JSON); returns what it held before.

    Runs inside the caller's transaction: the inbox keeps the run records of its last
    transaction, so a crash before they reach ``cronbox.db`` loses none of them.
    """
    held = run_journal(db)
    if held:
        db.execute("DELETE FROM run_journal")
    if records:
        db.conn.executemany("INSERT INTO run_journal (record) VALUES (?)", [(r,) for r in records])
    return held


def run_journal(db: InboundDb) -> list[str]:
    """The run records (JSON) the inbox's last transaction kept, oldest first."""
    return [r[0] for r in db.execute("SELECT record FROM run_journal ORDER BY id")]


def unread_rejection_note(db: InboundDb) -> InboundMessage | None:
    """The newest rejection note the agent has not been handed yet (None if there is none)."""
    row = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE kind = 'system' AND status = 'pending' "
        "AND json_extract(content, '$.rejections') IS NOT NULL ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return _row_to_inbound(row) if row else None


def get_inbound(db: InboundDb, message_id: str) -> InboundMessage | None:
    """One row by id."""
    row = db.execute(f"SELECT {_IN_COLUMNS} FROM messages_in WHERE id = ?", [message_id]).fetchone()
    return _row_to_inbound(row) if row else None


# Manual runs ("task run") belong to a series' history, never to its schedule.
_SCHEDULED = "json_extract(content, '$.manual') IS NULL"


def series_of_ref(db: InboundDb, ref: str) -> str:
    """The series a task id, occurrence id or series id names (``ref`` itself if unknown)."""
    row = db.execute("SELECT series_id FROM messages_in WHERE id = ?", [ref]).fetchone()
    return str(row[0]) if row and row[0] else ref


def series_current(db: InboundDb, series_id: str) -> InboundMessage | None:
    """The newest scheduled row of a series: its live occurrence, if it has one.

    A series' next occurrence is inserted only once the previous one finished, so the
    newest scheduled row is live exactly when the series is; one indexed lookup
    whatever the length of its history.
    """
    row = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE series_id = ? AND kind = 'task' "
        f"AND {_SCHEDULED} ORDER BY seq DESC LIMIT 1",
        [series_id],
    ).fetchone()
    return _row_to_inbound(row) if row else None


def live_tasks(db: InboundDb, statuses: Sequence[MessageStatus]) -> list[InboundMessage]:
    """Live task occurrences (one per series), earliest run first."""
    marks = ", ".join("?" for _ in statuses)
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE kind = 'task' AND {_SCHEDULED} "
        f"AND status IN ({marks}) "
        "ORDER BY coalesce(process_after, created_at), seq",
        [s.value for s in statuses],
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def pending_manual_runs(db: InboundDb, series_id: str) -> list[str]:
    """Ids of a series' manual runs (``task run``) that have not started yet."""
    rows = db.execute(
        "SELECT id FROM messages_in WHERE series_id = ? AND status = 'pending' "
        "AND json_extract(content, '$.manual') IS NOT NULL",
        [series_id],
    ).fetchall()
    return [str(r[0]) for r in rows]


def all_tasks(db: InboundDb) -> list[InboundMessage]:
    """The newest scheduled row of every task series, live or finished (full re-derive)."""
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE seq IN "
        f"(SELECT max(seq) FROM messages_in WHERE kind = 'task' AND {_SCHEDULED} "
        "GROUP BY series_id) "
        "ORDER BY seq"
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def count_live_tasks(db: InboundDb) -> int:
    """How many task occurrences are pending or paused."""
    (n,) = db.execute(
        "SELECT count(*) FROM messages_in WHERE kind = 'task' "
        "AND status IN ('pending', 'paused', 'waiting', 'awaiting_approval')"
    ).fetchone()
    return int(n)


def next_due(db: InboundDb, kind: MessageKind | None = None) -> Instant | None:
    """Earliest ``process_after`` of pending rows that wake the agent (the due index),
    of one ``kind`` when given; an occurrence awaiting approval counts at its deadline
    (the host applies its timeout then)."""
    (value,) = db.execute(
        "SELECT min(coalesce(process_after, created_at)) FROM messages_in "
        "WHERE ((status = 'pending' AND \"trigger\" = 1) OR (status = 'awaiting_approval' "
        "AND process_after IS NOT NULL)) AND coalesce(kind = ?, 1)",
        [kind.value if kind else None],
    ).fetchone()
    return str(value) if value is not None else None


def due_rows(db: InboundDb, now: Instant) -> list[InboundMessage]:
    """Pending rows due at ``now`` (host side: for catch-up planning)."""
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE status = 'pending' "
        "AND (process_after IS NULL OR process_after <= ?) ORDER BY seq",
        [now],
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def waiting_children(db: InboundDb, series_ids: Sequence[str]) -> list[InboundMessage]:
    """The chained tasks waiting for any of these parent series, oldest first."""
    if not series_ids:
        return []
    marks = ", ".join("?" for _ in series_ids)
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE after_task IN ({marks}) "
        "AND status = 'waiting' ORDER BY seq",
        list(series_ids),
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def chain_parent(db: InboundDb, series_id: str) -> str | None:
    """The parent series a chained task waits for (None: it is no chained task)."""
    row = db.execute(
        "SELECT after_task FROM messages_in WHERE id = ? AND after_task IS NOT NULL", [series_id]
    ).fetchone()
    return str(row[0]) if row else None


def chain_fired(db: InboundDb, series_id: str) -> bool:
    """Whether a chained task was ever fired by its parent."""
    row = db.execute(
        "SELECT 1 FROM messages_in WHERE series_id = ? AND chain_key IS NOT NULL LIMIT 1",
        [series_id],
    ).fetchone()
    return row is not None


def gated_due(db: InboundDb, now: Instant) -> list[InboundMessage]:
    """Due pending rows of approval-gated tasks not approved yet (the host gates them)."""
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE status = 'pending' AND approval = 1 "
        f"AND (process_after IS NULL OR process_after <= ?) AND NOT {APPROVED} ORDER BY seq",
        [now],
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def awaiting(db: InboundDb, series_id: str | None = None, expired_at: Instant | None = None
             ) -> list[InboundMessage]:  # fmt: skip
    """Occurrences awaiting approval, oldest first: of one series, or those whose
    deadline passed at ``expired_at``, or all."""
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE status = 'awaiting_approval' "
        "AND coalesce(series_id = ?, 1) AND (? IS NULL OR process_after <= ?) ORDER BY seq",
        [series_id, expired_at, expired_at],
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def count_awaiting(db: InboundDb) -> int:
    """How many occurrences await approval."""
    (n,) = db.execute(
        "SELECT count(*) FROM messages_in WHERE status = 'awaiting_approval'"
    ).fetchone()
    return int(n)


def notices_by_seqs(db: InboundDb, seqs: Sequence[int]) -> list[InboundMessage]:
    """The host's notes with these (inbound) seqs, for a channel to deliver.

    A note the host sends on a channel (an approval request) is recorded in
    ``deliveries`` under its seq negated, so it never mixes with the runner's odd seqs.
    """
    if not seqs:
        return []
    marks = ", ".join("?" for _ in seqs)
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE seq IN ({marks})", list(seqs)
    ).fetchall()
    return [_row_to_inbound(r) for r in rows]


def rows_by_ids(db: InboundDb, ids: Sequence[str]) -> dict[str, InboundMessage]:
    """The ``messages_in`` rows with the given ids, by id."""
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE id IN ({marks})", list(ids)
    ).fetchall()
    return {m.id: m for m in map(_row_to_inbound, rows)}


def prune_finished(db: InboundDb, before: Instant, limit: int) -> int:
    """Delete up to ``limit`` finished rows last changed before ``before``.

    The newest scheduled row of each series stays, so an ended series keeps its place
    in ``task list --all``; the run history in cronbox.db stays the record of the rest.
    """
    cur = db.execute(
        "DELETE FROM messages_in WHERE id IN (SELECT m.id FROM messages_in m "
        "WHERE m.status IN ('completed', 'failed', 'cancelled', 'skipped') "
        "AND coalesce(m.updated_at, m.created_at) < ? "
        "AND NOT (m.kind = 'task' AND m.series_id IS NOT NULL AND m.seq = "
        "(SELECT max(n.seq) FROM messages_in n WHERE n.series_id = m.series_id "
        f"AND n.kind = 'task' AND {_SCHEDULED.replace('content', 'n.content')})) "
        "LIMIT ?)",
        [before, limit],
    )
    return int(cur.rowcount)


@dataclass(frozen=True)
class DeliveryRow:
    """The host's state of one outbound row on one channel."""

    seq: int
    channel: str
    message_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: Instant | None
    last_error: str | None


def accept_outbound(
    db: InboundDb, seq: int, message_id: str, channels: Sequence[str], status: DeliveryStatus,
    at: Instant, detail: str | None = None,
) -> bool:  # fmt: skip
    """Record an outbound row as taken in: one delivery row per channel, all in ``status``.

    False (and nothing written) when ``seq`` was taken in already, so each row is
    handled exactly once. Runs inside the caller's transaction.
    """
    if db.execute("SELECT 1 FROM deliveries WHERE seq = ? LIMIT 1", [seq]).fetchone():
        return False
    db.conn.executemany(
        "INSERT INTO deliveries (seq, channel, message_id, status, attempts, next_attempt_at, "
        "detail, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
        [(seq, ch, message_id, status.value, at, detail, at) for ch in channels],
    )
    return True


def record_attempt(
    db: InboundDb, seq: int, channel: str, status: DeliveryStatus, at: Instant,
    next_attempt_at: Instant | None, error: str | None,
) -> None:  # fmt: skip
    """Record one attempt of a channel at a reply: its new status, error and next try,
    and the attempt itself in ``delivery_attempts``."""
    db.execute(
        "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, "
        "last_error = coalesce(?, last_error), updated_at = ? WHERE seq = ? AND channel = ?",
        [status.value, next_attempt_at, error, at, seq, channel],
    )
    db.execute(
        "INSERT INTO delivery_attempts (seq, channel, attempt, at, status, error) "
        "SELECT seq, channel, attempts, ?, ?, ? FROM deliveries WHERE seq = ? AND channel = ?",
        [at, status.value, error, seq, channel],
    )


def defer_delivery(
    db: InboundDb, seq: int, channel: str, at: Instant, next_attempt_at: Instant, reason: str
) -> None:
    """Put a pending delivery off without an attempt (its channel's circuit is open)."""
    db.execute(
        "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, updated_at = ? "
        "WHERE seq = ? AND channel = ? AND status = 'pending'",
        [next_attempt_at, reason, at, seq, channel],
    )


@dataclass(frozen=True)
class DeliveryAttempt:
    """One recorded attempt of a channel at a reply."""

    seq: int
    channel: str
    attempt: int
    at: Instant
    status: DeliveryStatus
    error: str | None


def delivery_attempts(db: InboundDb, seq: int | None = None) -> list[DeliveryAttempt]:
    """The recorded attempts (of one reply, or all), in the order they were made."""
    where, args = ("WHERE seq = ?", [seq]) if seq is not None else ("", [])
    rows = db.execute(
        f"SELECT seq, channel, attempt, at, status, error FROM delivery_attempts {where} "
        "ORDER BY id",
        args,
    ).fetchall()
    return [
        DeliveryAttempt(int(r[0]), r[1], int(r[2]), r[3], DeliveryStatus(r[4]), r[5]) for r in rows
    ]


def _delivery_rows(
    db: InboundDb, where: str, args: Sequence[Any], limit: int = -1
) -> list[DeliveryRow]:
    rows = db.execute(
        "SELECT seq, channel, message_id, status, attempts, next_attempt_at, last_error "
        f"FROM deliveries WHERE {where} ORDER BY seq, channel LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [
        DeliveryRow(int(r[0]), r[1], r[2], DeliveryStatus(r[3]), int(r[4]), r[5], r[6])
        for r in rows
    ]


def pending_deliveries(db: InboundDb, limit: int = 200) -> list[DeliveryRow]:
    """Channel deliveries still to be made (due or waiting for their backoff), oldest first."""
    return _delivery_rows(db, "status = 'pending'", [], limit)


def deliveries_of(db: InboundDb, seq: int) -> list[DeliveryRow]:
    """Every channel's state for one outbound seq."""
    return _delivery_rows(db, "seq = ?", [seq])


def delivered_max_seq(db: InboundDb) -> int:
    """The highest outbound seq the host has taken in (0 if none)."""
    (value,) = db.execute("SELECT coalesce(max(seq), 0) FROM deliveries").fetchone()
    return int(value)


def delivered_seqs(db: InboundDb, seqs: Sequence[int]) -> set[int]:
    """Which of ``seqs`` the host has finished with on every channel."""
    if not seqs:
        return set()
    marks = ", ".join("?" for _ in seqs)
    rows = db.execute(
        f"SELECT seq FROM deliveries WHERE seq IN ({marks}) GROUP BY seq "
        "HAVING sum(status = 'pending') = 0",
        list(seqs),
    )
    return {int(r[0]) for r in rows}


# --- messages_out, processing_ack, session_state (container side) ----------------------


def insert_outbound(
    db: OutboundDb,
    message_id: str,
    kind: MessageKind,
    content: dict[str, Any],
    created_at: Instant,
    in_reply_to: str | None = None,
) -> int:
    """Append to ``messages_out`` with the next odd seq; returns the seq."""
    with db.atomic():
        return _insert_outbound(db, message_id, kind, content, created_at, in_reply_to)


def fresh_outbox(session_dir: Path, seq_floor: int) -> None:
    """A new, empty ``outbound.db`` whose seqs continue above ``seq_floor`` (an odd seq,
    or 0); ``outbox/`` must not hold one."""
    with outbound(session_dir) as db, db.atomic():
        if seq_floor > 0:
            set_state(db, SEQ_FLOOR, str(seq_floor))


def _raw_rows(db: Database, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows as plain dicts keyed by column, values as stored (for untrusted content)."""
    cur = db.execute(sql, list(args))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


_OUT_SELECT = "SELECT id, seq, kind, created_at, in_reply_to, content FROM messages_out"


def outbound_after(db: OutboundDb, after_seq: int, limit: int = 500) -> list[dict[str, Any]]:
    """Raw ``messages_out`` rows with seq > ``after_seq``, oldest first.

    Returned as plain dicts with the content still a JSON string: the host must
    validate them as untrusted input.
    """
    return _raw_rows(db, f"{_OUT_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?", [after_seq, limit])


def recent_outbound(db: OutboundDb, kind: MessageKind, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` raw ``messages_out`` rows of one kind, oldest first (untrusted)."""
    rows = _raw_rows(db, f"{_OUT_SELECT} WHERE kind = ? ORDER BY seq DESC LIMIT ?",
                     [kind.value, limit])  # fmt: skip
    return rows[::-1]


def replies_to(db: OutboundDb, message_id: str) -> list[dict[str, Any]]:
    """Raw chat rows the runner wrote in reply to one inbound row, oldest first."""
    return _raw_rows(
        db, f"{_OUT_SELECT} WHERE kind = 'chat' AND in_reply_to = ? ORDER BY seq", [message_id]
    )


def outbound_by_seqs(db: OutboundDb, seqs: Sequence[int]) -> list[dict[str, Any]]:
    """Raw ``messages_out`` rows with these seqs, oldest first (untrusted)."""
    marks = ", ".join("?" for _ in seqs)
    return _raw_rows(db, f"{_OUT_SELECT} WHERE seq IN ({marks}) ORDER BY seq", seqs)


def acks_for(db: OutboundDb, message_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Raw ack rows for the given inbound ids (untrusted; the host validates)."""
    if not message_ids:
        return []
    marks = ", ".join("?" for _ in message_ids)
    return _raw_rows(
        db,
        "SELECT message_id, attempt, status, updated_at, error, output_preview, started_at "
        f"FROM processing_ack WHERE message_id IN ({marks})",
        message_ids,
    )


def ack_from_row(row: dict[str, Any]) -> Ack:
    """Validate one raw ack row (raises pydantic.ValidationError when malformed)."""
    return Ack.model_validate(row)


def outbound_from_row(row: dict[str, Any]) -> OutboundMessage:
    """Validate one raw outbound row (raises ValueError when malformed)."""
    data = dict(row)
    try:
        content = json.loads(data["content"]) if isinstance(data["content"], str) else None
    except RecursionError:
        raise ValueError("content is nested too deeply") from None
    if not isinstance(content, dict):
        raise ValueError("content is not a JSON object")
    data["content"] = content
    return OutboundMessage.model_validate(data)


def chat_text(message: OutboundMessage) -> str:
    """The text of a chat reply, or Rejected with the reason (the row is untrusted)."""
    text = message.content.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Rejected("a chat reply needs a non-empty string in content.text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise Rejected("a chat reply is not valid Unicode text") from None
    if size > MAX_CHAT_BYTES:
        raise Rejected(f"a chat reply is over {MAX_CHAT_BYTES // 1024} KiB")
    return text


def recent_rows(db: InboundDb, now: Instant, limit: int) -> list[InboundMessage]:
    """The newest ``limit`` rows that have come due (future tasks are not shown), oldest first."""
    rows = db.execute(
        f"SELECT {_IN_COLUMNS} FROM messages_in WHERE "
        "coalesce(process_after, created_at) <= ? OR status NOT IN ('pending', 'paused') "
        "ORDER BY seq DESC LIMIT ?",
        [now, limit],
    ).fetchall()
    return [_row_to_inbound(r) for r in reversed(rows)]


def set_session_info(db: InboundDb, key: str, value: str) -> None:
    """Record one fact about the session (host only), e.g. its ``timezone``."""
    db.execute(
        "INSERT INTO session_info (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def session_info(db: InboundDb, key: str) -> str | None:
    """One fact the host recorded about the session (``set_session_info``), or None."""
    row = db.execute("SELECT value FROM session_info WHERE key = ?", [key]).fetchone()
    return str(row[0]) if row else None


def session_zone(db: InboundDb) -> str | None:
    """The session's zone as the host last recorded it, else the zone of its newest chat
    or system row (the host writes those in the session's zone); None if neither."""
    row = db.execute("SELECT value FROM session_info WHERE key = 'timezone'").fetchone()
    if row is None:
        row = db.execute(
            "SELECT timezone FROM messages_in WHERE kind IN ('chat', 'system') "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return str(row[0]) if row else None


def all_rows(db: InboundDb) -> list[InboundMessage]:
    """Every ``messages_in`` row, oldest first."""
    rows = db.execute(f"SELECT {_IN_COLUMNS} FROM messages_in ORDER BY seq").fetchall()
    return [_row_to_inbound(r) for r in rows]


def outbound_ready(db: OutboundDb) -> bool:
    """Whether the container has applied every outbound migration yet.

    The file exists before its tables do, and its migrations commit one by one, so a
    reader must not query it in between.
    """
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if outbound_migrations.migrations_table not in names:
        return False
    return not outbound_migrations.pending(db)


def strays(
    session_dir: Path,
    limit: int = 100,
    max_bytes: int = DEFAULTS.outbox_max_bytes,
    time_limit: float | None = None,
    busy_ms: int = BUSY_TIMEOUT_MS,
) -> list[dict[str, Any]]:
    """Raw ``messages_out`` rows at or below the highest seq taken in that were never
    taken in themselves (written "backwards", or sharing a seq with another row).

    The host reads rows above that seq only, so without this such a row would be
    skipped silently. Costs two counts unless the counts disagree.
    """
    if not check_outbox(session_dir, max_bytes):
        return []
    with inbound(session_dir, readonly=True) as inbound_db:
        after = delivered_max_seq(inbound_db)
        # Negative seqs are the host's own notices (see ``notices_by_seqs``), no outbound row.
        (known,) = inbound_db.execute(
            "SELECT count(DISTINCT seq) FROM deliveries WHERE seq <= ? AND seq > 0", [after]
        ).fetchone()
        with read_outbox(session_dir, max_bytes, time_limit, busy_ms) as out:
            if not outbound_ready(out):
                return []
            (written,) = out.execute(
                "SELECT count(*) FROM messages_out WHERE seq <= ?", [after]
            ).fetchone()
            if int(written) <= int(known):
                return []
            pairs = out.execute(
                "SELECT seq, id FROM messages_out WHERE seq <= ? ORDER BY seq", [after]
            ).fetchall()
            taken = dict(
                inbound_db.execute(
                    "SELECT seq, message_id FROM deliveries WHERE seq <= ? GROUP BY seq", [after]
                ).fetchall()
            )
            odd = [
                (seq, mid) for seq, mid in pairs
                if taken.get(seq) != (str(mid)[:200] if mid is not None else None)
            ][:limit]  # fmt: skip
            if not odd:
                return []
            values = ", ".join("(?, ?)" for _ in odd)
            return _raw_rows(
                out, f"{_OUT_SELECT} WHERE (seq, id) IN (VALUES {values}) ORDER BY seq",
                [v for pair in odd for v in pair],
            )  # fmt: skip


def undelivered(
    session_dir: Path,
    limit: int = 500,
    max_bytes: int = DEFAULTS.outbox_max_bytes,
    time_limit: float | None = None,
    busy_ms: int = BUSY_TIMEOUT_MS,
) -> list[dict[str, Any]]:
    """Raw ``messages_out`` rows the host has not handled yet, oldest first (untrusted).

    Read-only on both files: the host uses it to deliver, the MCP server to see which
    of the agent's requests are still on their way.
    """
    if not check_outbox(session_dir, max_bytes):
        return []
    with inbound(session_dir, readonly=True) as inbound_db:
        after = delivered_max_seq(inbound_db)
    with read_outbox(session_dir, max_bytes, time_limit, busy_ms) as out:
        return outbound_after(out, after, limit) if outbound_ready(out) else []
