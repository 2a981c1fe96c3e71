"""A session's files as its runner uses them, over the standard ``sqlite3`` module.

A runner's wake opens ``outbox/outbound.db`` for each unit of work (the inbox ATTACHed
read-only), claims rows, acks them and writes its replies. Everything that takes here is
plain SQL on a connection, so the wake imports neither sqlite-utils nor pydantic: the
outbound migrations (sqlite-utils ``Migrations``, in :mod:`cronbox_shared.sessiondb`) are
imported and applied only when the file's migrations table says some are pending. The
host's side of the same files, and the re-export of all of this, is
:mod:`cronbox_shared.sessiondb`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cronbox_shared.rows import AckStatus, InboxRow, MessageKind

INBOX = "inbox"
OUTBOX = "outbox"
WORKSPACE = "workspace"
# Paths relative to a session directory.
INBOUND = f"{INBOX}/inbound.db"
OUTBOUND = f"{OUTBOX}/outbound.db"
HEARTBEAT = f"{OUTBOX}/.heartbeat"
BUSY_TIMEOUT_MS = 10_000
# A cronbox home holds each session at ``sessions/<id>``, and the host's ``doorbell/``:
# a process outside the session's runner (an MCP server run by hand) that writes to an
# outbox leaves an empty file named by the session id there, so a running host takes the
# rows in within a second instead of at the session's next wake.
SESSIONS = "sessions"
DOORBELL = "doorbell"
# The session_state key that keeps a reset outbox's seqs above its predecessor's.
SEQ_FLOOR = "seq_floor"

OUTBOUND_MIGRATION_SET = "cronbox.outbound"
OUTBOUND_MIGRATIONS = ("m001_outbound", "m002_ack_started_at", "m003_history")
"""The names of ``sessiondb.outbound_migrations``, in order: a new outbound migration's
name goes here too (a test holds the two equal), so the runner knows a file lacks it."""
MIGRATIONS_TABLE = "_sqlite_migrations"

# A row a runner may take: not approval-gated, a run the operator asked for (``task run``,
# a backfill; a chained run is not one), or approved for this very occurrence (the
# decision names the occurrence, so a series' next occurrence asks again).
APPROVED = (
    "(approval = 0 OR (json_extract(content, '$.manual') IS NOT NULL "
    "AND json_extract(content, '$.chain') IS NULL) "
    "OR coalesce(json_extract(approval_state, '$.occurrence') = (id) "
    "AND json_extract(approval_state, '$.decision') = 'approved', 0))"
)


class Executes(Protocol):
    """An open session file: a ``sqlite3`` connection, or sqlite-utils' ``Database``."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> sqlite3.Cursor: ...


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection to a session file (``journal_mode=DELETE`` when it may write)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


class OutboxFile:
    """An open ``outbound.db`` of the runner: statements, and transactions around them."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    @contextmanager
    def atomic(self) -> Iterator[OutboxFile]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        self.conn.execute("BEGIN")
        try:
            yield self
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.execute("COMMIT")


def migrated(conn: sqlite3.Connection, migration_set: str, names: Sequence[str]) -> bool:
    """Whether every one of ``names`` of ``migration_set`` is applied to the file (read
    from sqlite-utils' migrations table with a plain query, importing nothing)."""
    try:
        rows = conn.execute(
            f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ?", [migration_set]
        ).fetchall()
    except sqlite3.OperationalError:  # no migrations table: a new file
        return False
    return set(names) <= {name for (name,) in rows}


@contextmanager
def open_outbox(session_dir: Path) -> Iterator[OutboxFile]:
    """``outbox/outbound.db`` read-write for one unit of work, then closed.

    A file with migrations pending (a new one, or one an older runner wrote) is migrated
    first, by the migrations of :mod:`cronbox_shared.sessiondb`, exactly as the host's
    writers migrate it.
    """
    path = session_dir / OUTBOUND
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, readonly=False)
    try:
        if not migrated(conn, OUTBOUND_MIGRATION_SET, OUTBOUND_MIGRATIONS):
            from cronbox_shared import sessiondb  # only to migrate

            conn.close()
            with sessiondb.outbound(session_dir):
                pass
            conn = connect(path, readonly=False)
        yield OutboxFile(conn)
    finally:
        conn.close()


def insert_outbound(
    db: Executes,
    message_id: str,
    kind: MessageKind,
    content: dict[str, Any],
    created_at: str,
    in_reply_to: str | None = None,
) -> int:
    """Append to ``messages_out`` with the next odd seq; returns the seq. The caller
    holds the transaction."""
    # After ``cronbox session reset`` the new file carries the old one's last seq, so
    # seqs keep growing across files and the host takes the new rows in.
    (max_seq,) = db.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM messages_out), -1), "
        "coalesce((SELECT CAST(value AS INTEGER) FROM session_state "
        f"WHERE key = '{SEQ_FLOOR}'), -1))"
    ).fetchone()
    seq = int(max_seq) + 2
    db.execute(
        "INSERT INTO messages_out (id, seq, kind, created_at, in_reply_to, content) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [message_id, seq, kind.value, created_at, in_reply_to, json.dumps(content)],
    )
    return seq


def set_ack(
    db: Executes,
    message_id: str,
    attempt: int,
    status: AckStatus,
    at: str,
    error: str | None = None,
    output_preview: str | None = None,
) -> None:
    """Record the container's state for one attempt at an inbound row.

    The attempt's ``started_at`` is the time of its first ack and is kept when the ack
    later becomes ``completed`` or ``failed``, so the host learns when work started even
    if it never saw the ``processing`` state.
    """
    db.execute(
        "INSERT INTO processing_ack (message_id, attempt, status, updated_at, error, "
        "output_preview, started_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (message_id, attempt) DO UPDATE "
        "SET status = excluded.status, updated_at = excluded.updated_at, "
        "error = excluded.error, output_preview = excluded.output_preview, "
        "started_at = coalesce(processing_ack.started_at, excluded.started_at)",
        [message_id, attempt, status.value, at, error, output_preview, at],
    )


def clear_processing_acks(db: Executes) -> int:
    """Drop this container's stale ``processing`` acks (at runner start)."""
    cur = db.execute("DELETE FROM processing_ack WHERE status = 'processing'")
    return cur.rowcount


def delete_ack(db: Executes, message_id: str, attempt: int) -> None:
    """Forget the container's ack of one attempt, so the row is claimable again."""
    db.execute(
        "DELETE FROM processing_ack WHERE message_id = ? AND attempt = ?", [message_id, attempt]
    )


# A row of the attached inbox that is due and has no ack for its current try (and, for
# an approval-gated task, was approved: the host gates it before any runner sees it).
_DUE_UNACKED = (
    "m.status = 'pending' AND (m.process_after IS NULL OR m.process_after <= ?) "
    f"AND {APPROVED.replace('approval', 'm.approval').replace('(id)', '(m.id)')} "
    "AND NOT EXISTS (SELECT 1 FROM processing_ack a WHERE a.message_id = m.id "
    "AND a.attempt = m.tries)"
)
_ROW_COLUMNS = (
    "id", "seq", "kind", "created_at", "tries", "trigger", "content", "process_after",
    "scheduled_for", "recurrence", "timezone", "series_id", "isolated",
)  # fmt: skip


def _attach_inbound(db: Executes, inbound_path: Path) -> None:
    attached = {r[1] for r in db.execute("PRAGMA database_list")}
    if "inb" not in attached:
        db.execute("ATTACH DATABASE ? AS inb", [f"file:{inbound_path}?mode=ro"])


def claimable(db: Executes, inbound_path: Path, now: str, limit: int) -> list[InboxRow]:
    """Due pending rows of the attached inbound DB that have no ack for their current try.

    The ack filter is applied before the limit so claimed rows never hide new work.
    """
    _attach_inbound(db, inbound_path)
    cols = ", ".join(f'm."{c}"' for c in _ROW_COLUMNS)
    rows = db.execute(
        f"SELECT {cols} FROM inb.messages_in m WHERE {_DUE_UNACKED} "
        "ORDER BY coalesce(m.process_after, m.created_at), m.seq LIMIT ?",
        [now, limit],
    ).fetchall()
    return [InboxRow.from_columns(dict(zip(_ROW_COLUMNS, r, strict=True))) for r in rows]


def next_due_after(db: Executes, inbound_path: Path, now: str) -> str | None:
    """The earliest ``process_after`` of a pending row of the attached inbound DB that is
    later than ``now``; None when no pending row waits for a time."""
    _attach_inbound(db, inbound_path)
    row = db.execute(
        "SELECT min(m.process_after) FROM inb.messages_in m "
        "WHERE m.status = 'pending' AND m.process_after > ?",
        [now],
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def trigger_waiting(db: Executes, inbound_path: Path, now: str) -> bool:
    """Whether a due, unacked ``trigger=1`` row waits in the attached inbound DB.

    The runner asks this when a full batch holds only context rows: the row that
    should wake the agent may sit behind them, past the batch limit.
    """
    _attach_inbound(db, inbound_path)
    row = db.execute(
        f'SELECT 1 FROM inb.messages_in m WHERE m."trigger" = 1 AND {_DUE_UNACKED} LIMIT 1',
        [now],
    ).fetchone()
    return row is not None


def get_state(db: Executes, key: str) -> str | None:
    """A value from the container's key/value store."""
    row = db.execute("SELECT value FROM session_state WHERE key = ?", [key]).fetchone()
    return str(row[0]) if row else None


def set_state(db: Executes, key: str, value: str) -> None:
    """Set a value in the container's key/value store."""
    db.execute(
        "INSERT INTO session_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def history(db: Executes, dialect: str) -> list[tuple[int, list[Any]]]:
    """The stored exchanges of ``dialect``, oldest first, as (id, messages); a row whose
    messages are not a JSON list is left out."""
    rows = db.execute(
        "SELECT id, messages FROM history WHERE dialect = ? ORDER BY id", [dialect]
    ).fetchall()
    kept = []
    for row_id, text in rows:
        try:
            messages = json.loads(text)
        except ValueError:
            continue
        if isinstance(messages, list) and messages:
            kept.append((int(row_id), messages))
    return kept


def add_history(db: Executes, dialect: str, at: str, messages: Sequence[Any]) -> int:
    """Store one exchange; returns its id."""
    cursor = db.execute(
        "INSERT INTO history (dialect, created_at, messages) VALUES (?, ?, ?)",
        [dialect, at, json.dumps(list(messages), ensure_ascii=False)],
    )
    return int(cursor.lastrowid or 0)


def forget_history(db: Executes, dialect: str, keep_from: int | None) -> None:
    """Drop the exchanges of other dialects and those of ``dialect`` older than
    ``keep_from`` (every one when None)."""
    db.execute(
        "DELETE FROM history WHERE dialect != ? OR id < ?",
        [dialect, keep_from if keep_from is not None else 2**62],
    )
