"""The store: the one place that owns ``cronbox.db`` and writes every ``inbound.db``.

All SQL of the host lives here (the per-session statements are in
``cronbox_shared.sessiondb``). Each public method is one unit of work: a change to a
session's inbound.db is one transaction there, followed by one transaction on the
central DB that brings its due index (``sessions.next_due_at``) and task mirror up to
date. If the host dies between the two, ``reindex`` re-derives the central view from
the session files at the next start, so the files are the truth.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import (
    InvalidInput,
    SessionExists,
    SessionNotFound,
    TaskNotFound,
    TaskStateError,
    TooManyTasks,
)
from cronbox_shared.models import (
    MAX_CHAT_BYTES,
    AckStatus,
    InboundMessage,
    MessageKind,
    MessageStatus,
    Record,
    RunOutcome,
    preview,
)
from cronbox_shared.recurrence import next_fire, plan_due, stored_recurrence
from cronbox_shared.tasks import (
    ScheduleRequest,
    UpdateRequest,
    ValidTask,
    resume_at,
    validate_schedule,
    validate_update,
)
from cronbox_shared.timeutil import Clock, SystemClock, fmt, parse_utc, zone
from host.config import Settings
from host.liveness import Claim

CENTRAL = "cronbox.db"
SESSIONS = "sessions"
OCCURRENCE_SEP = "~"

central_migrations = Migrations("cronbox.central")


@central_migrations()
def m001_central(db: Database) -> None:
    """The central schema: sessions (with the due index), task mirror, runs, audit log."""
    db.execute(
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            agent TEXT NOT NULL,
            timezone TEXT NOT NULL,
            container TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            last_active_at TEXT,
            next_due_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX sessions_next_due ON sessions (next_due_at)")
    db.execute(
        """
        CREATE TABLE tasks (
            series_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (id),
            live_id TEXT NOT NULL,
            status TEXT NOT NULL,
            next_run TEXT,
            recurrence TEXT,
            timezone TEXT NOT NULL,
            prompt TEXT NOT NULL,
            has_script INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX tasks_session ON tasks (session_id)")
    db.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            series_id TEXT,
            scheduled_for TEXT,
            started_at TEXT,
            finished_at TEXT,
            outcome TEXT,
            tries INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            output_preview TEXT,
            UNIQUE (session_id, message_id)
        )
        """
    )
    db.execute("CREATE INDEX runs_series ON runs (series_id, id)")
    db.execute(
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            session_id TEXT,
            target TEXT,
            detail TEXT
        )
        """
    )


@central_migrations()
def m002_inbound_version(db: Database) -> None:
    """The inbound.db change counter the central view was last derived from."""
    db.execute("ALTER TABLE sessions ADD COLUMN inbound_version INTEGER")


@central_migrations()
def m003_session_layout(db: Database) -> None:
    """Move every session directory into the ``inbox/`` / ``outbox/`` layout."""
    (path,) = [row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"]
    for session_dir in sorted((Path(path).parent / SESSIONS).glob("*/")):
        sdb.migrate_layout(session_dir)


class Session(Record):
    """A row of the central ``sessions`` table."""

    id: str
    name: str
    agent: str
    timezone: str
    container: dict[str, Any]
    created_at: str
    last_active_at: str | None
    next_due_at: str | None


class TaskView(Record):
    """One task series as shown by ``task list``: its live (or newest) occurrence."""

    id: str
    series_id: str
    session_id: str
    session: str
    status: MessageStatus
    next_run: str | None
    recurrence: str | None
    timezone: str
    prompt: str
    has_script: bool
    last_run_at: str | None = None
    last_outcome: RunOutcome | None = None


class Run(Record):
    """One occurrence that started, from the central ``runs`` table."""

    id: int
    session_id: str
    message_id: str
    series_id: str | None
    scheduled_for: str | None
    started_at: str | None
    finished_at: str | None
    outcome: RunOutcome | None
    tries: int
    error: str | None
    output_preview: str | None


class AuditEntry(Record):
    id: int
    at: str
    actor: str
    action: str
    session_id: str | None
    target: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class Limits:
    """Validation limits applied to every task request, whoever sends it."""

    min_interval: timedelta = timedelta(seconds=60)
    max_tasks_per_session: int = 1000


def task_row(valid: ValidTask, now: str) -> dict[str, Any]:
    """The ``messages_in`` row of a new task: the first occurrence of its own series."""
    first = fmt(valid.first_run)
    return {
        "id": valid.id, "kind": MessageKind.TASK.value, "created_at": now,
        "updated_at": now, "status": MessageStatus.PENDING.value,
        "process_after": first, "scheduled_for": first,
        "recurrence": valid.recurrence.expr if valid.recurrence else None,
        "timezone": valid.timezone, "series_id": valid.id, "trigger": 1,
        "content": valid.content, "misfire_grace": valid.misfire_grace,
        "timeout": valid.timeout,
    }  # fmt: skip


def series_of(ref: str) -> str:
    """The series id an occurrence id belongs to (occurrence ids are ``<series>~<n>``)."""
    return ref.split(OCCURRENCE_SEP, 1)[0]


def next_occurrence_id(row: InboundMessage) -> str:
    """The id of the occurrence after ``row`` in its series (``<series>~<n+1>``)."""
    series = row.series_id or row.id
    n = int(row.id.rsplit(OCCURRENCE_SEP, 1)[1]) + 1 if OCCURRENCE_SEP in row.id else 1
    return f"{series}{OCCURRENCE_SEP}{n}"


class ChangeWatcher:
    """Holds one connection open so ``PRAGMA data_version`` reveals other writers' commits.

    The host polls it to notice changes made by other processes (CLI, HTTP handlers).
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(
            path, timeout=sdb.BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        self._version = self._read()

    def _read(self) -> int:
        (version,) = self._conn.execute("PRAGMA data_version").fetchone()
        return int(version)

    def changed(self) -> bool:
        """True once for every batch of commits by another connection since the last call."""
        version = self._read()
        changed, self._version = version != self._version, version
        return changed

    def close(self) -> None:
        """Release the watcher's connection."""
        self._conn.close()


class Store:
    """Named operations on cronbox's state under one ``CRONBOX_HOME``."""

    def __init__(
        self,
        home: Path,
        *,
        clock: Clock | None = None,
        default_timezone: str = "UTC",
        limits: Limits | None = None,
    ) -> None:
        self.home = Path(home)
        self.clock: Clock = clock or SystemClock()
        self.default_timezone = zone(default_timezone, "the host timezone").key
        self.limits = limits or Limits()
        self.sessions_dir = self.home / SESSIONS
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        with self.central() as db:
            central_migrations.apply(db)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None) -> Store:
        """The store under ``settings.home`` with the configured zone and limits."""
        return cls(
            settings.home,
            clock=clock,
            default_timezone=settings.timezone(),
            limits=Limits(
                min_interval=timedelta(seconds=settings.min_interval),
                max_tasks_per_session=settings.max_tasks_per_session,
            ),
        )

    # --- plumbing --------------------------------------------------------------------

    @contextmanager
    def central(self) -> Iterator[Database]:
        """Open ``cronbox.db`` for one unit of work."""
        conn = sqlite3.connect(self.home / CENTRAL, timeout=sdb.BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={sdb.BUSY_TIMEOUT_MS}")
            yield Database(conn)
        finally:
            conn.close()

    @contextmanager
    def _inbound_tx(self, session_id: str) -> Iterator[sdb.InboundDb]:
        """A write transaction on a session's inbound.db (taken at once, so seqs never race)."""
        with sdb.inbound(self.session_dir(session_id)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.conn.rollback()
                raise
            db.conn.commit()

    def session_dir(self, session_id: str) -> Path:
        """The directory holding a session's files."""
        return self.sessions_dir / session_id

    def now(self) -> datetime:
        """The current instant from the injected clock."""
        return self.clock.now()

    def watch_changes(self) -> ChangeWatcher:
        """A watcher that notices commits to ``cronbox.db`` made by other connections."""
        return ChangeWatcher(self.home / CENTRAL)

    def audit(
        self,
        db: Database,
        actor: str,
        action: str,
        session_id: str | None,
        target: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append to the audit log inside the caller's central transaction."""
        db.execute(
            "INSERT INTO audit_log (at, actor, action, session_id, target, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [fmt(self.now()), actor, action, session_id, target,
             json.dumps(detail) if detail is not None else None],
        )  # fmt: skip

    def record_audit(
        self,
        actor: str,
        action: str,
        session_id: str | None,
        target: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one audit entry in its own transaction."""
        with self.central() as db, db.atomic():
            self.audit(db, actor, action, session_id, target, detail)

    def audit_entries(self, session_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries, newest first."""
        where, args = ("WHERE session_id = ?", [session_id]) if session_id else ("", [])
        with self.central() as db:
            cur = db.execute(
                "SELECT id, at, actor, action, session_id, target, detail FROM audit_log "
                f"{where} ORDER BY id DESC LIMIT ?",
                [*args, limit],
            )
            rows = cur.fetchall()
        return [
            AuditEntry(
                id=r[0], at=r[1], actor=r[2], action=r[3], session_id=r[4], target=r[5],
                detail=json.loads(r[6]) if r[6] else None,
            )
            for r in rows
        ]  # fmt: skip

    # --- sessions --------------------------------------------------------------------

    def create_session(
        self, name: str, *, agent: str = "echo", timezone: str | None = None
    ) -> Session:
        """Register a session and create its directory and inbound.db."""
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise InvalidInput(
                f'session name "{name[:80]}" is not valid; use 1-64 characters without spaces'
            )
        tz = zone(timezone, "--timezone").key if timezone else self.default_timezone
        session_id = "s-" + secrets.token_hex(6)
        now = fmt(self.now())
        with self.central() as db:
            if db.execute("SELECT 1 FROM sessions WHERE name = ?", [name]).fetchone():
                raise SessionExists(name)
        directory = self.session_dir(session_id)
        for sub in (sdb.WORKSPACE, sdb.OUTBOX):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        with sdb.inbound(directory):
            pass
        with self.central() as db, db.atomic():
            try:
                db.execute(
                    "INSERT INTO sessions (id, name, agent, timezone, container, created_at) "
                    "VALUES (?, ?, ?, ?, '{}', ?)",
                    [session_id, name, agent, tz, now],
                )
            except sqlite3.IntegrityError:
                raise SessionExists(name) from None
            self.audit(db, "cli", "session.create", session_id, name, {"agent": agent, "tz": tz})
        return self.get_session(session_id)

    _SESSION_COLS = "id, name, agent, timezone, container, created_at, last_active_at, next_due_at"

    def _session(self, row: tuple[Any, ...]) -> Session:
        cols = [c.strip() for c in self._SESSION_COLS.split(",")]
        data = dict(zip(cols, row, strict=True))
        data["container"] = json.loads(data["container"] or "{}")
        return Session.model_validate(data)

    def get_session(self, ref: str) -> Session:
        """A session by id or name."""
        with self.central() as db:
            row = db.execute(
                f"SELECT {self._SESSION_COLS} FROM sessions WHERE id = ? OR name = ? "
                "ORDER BY id = ? DESC LIMIT 1",
                [ref, ref, ref],
            ).fetchone()
        if row is None:
            raise SessionNotFound(ref)
        return self._session(row)

    def list_sessions(self) -> list[Session]:
        """Every session, oldest first."""
        with self.central() as db:
            rows = db.execute(
                f"SELECT {self._SESSION_COLS} FROM sessions ORDER BY created_at, id"
            ).fetchall()
        return [self._session(r) for r in rows]

    def due_sessions(self, now: datetime, limit: int = 1000) -> list[tuple[str, str]]:
        """(session id, next_due_at) of sessions with due work, earliest first (index only)."""
        with self.central() as db:
            rows = db.execute(
                "SELECT id, next_due_at FROM sessions WHERE next_due_at IS NOT NULL "
                "AND next_due_at <= ? ORDER BY next_due_at LIMIT ?",
                [fmt(now), limit],
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def next_wake(self) -> datetime | None:
        """The earliest ``next_due_at`` over all sessions."""
        with self.central() as db:
            (value,) = db.execute("SELECT min(next_due_at) FROM sessions").fetchone()
        return parse_utc(value) if value else None

    # --- the central view of one session ----------------------------------------------

    def _sync_central(
        self, db: Database, session_id: str, inbound_db: sdb.InboundDb, series: Sequence[str] | None
    ) -> None:
        """Bring ``next_due_at`` and the task mirror of ``series`` (None: all) up to date.

        Runs inside the caller's central transaction, reading the session's inbound.db.
        """
        db.execute(
            "UPDATE sessions SET next_due_at = ?, inbound_version = ? WHERE id = ?",
            [sdb.next_due(inbound_db), self._inbound_version(session_id), session_id],
        )
        if series is None:
            rows = sdb.all_tasks(inbound_db)
            db.execute("DELETE FROM tasks WHERE session_id = ?", [session_id])
        else:
            rows = []
            for ref in series:
                found = sdb.series_rows(inbound_db, ref)
                if found:
                    rows.append(found[0])
        now = fmt(self.now())
        for row in rows:
            db.execute(
                "INSERT INTO tasks (series_id, session_id, live_id, status, next_run, recurrence, "
                "timezone, prompt, has_script, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series_id) DO UPDATE SET "
                "live_id = excluded.live_id, status = excluded.status, "
                "next_run = excluded.next_run, recurrence = excluded.recurrence, "
                "timezone = excluded.timezone, prompt = excluded.prompt, "
                "has_script = excluded.has_script, updated_at = excluded.updated_at",
                [
                    row.series_id or row.id, session_id, row.id, row.status.value,
                    row.process_after if row.status.live else None, row.recurrence,
                    row.timezone, preview(row.prompt, 200) or "", int(bool(row.script)),
                    row.created_at, now,
                ],
            )  # fmt: skip

    def sync_session(
        self,
        session_id: str,
        series: Sequence[str] | None = None,
        audit: tuple[str, str, str | None, dict[str, Any] | None] | None = None,
    ) -> None:
        """Re-derive the central view of one session from its inbound.db."""
        directory = self.session_dir(session_id)
        with sdb.inbound(directory) as inbound_db, self.central() as db, db.atomic():
            self._sync_central(db, session_id, inbound_db, series)
            if audit is not None:
                actor, action, target, detail = audit
                self.audit(db, actor, action, session_id, target, detail)

    def _inbound_version(self, session_id: str) -> int | None:
        return sdb.change_counter(self.session_dir(session_id) / sdb.INBOUND)

    def stale_sessions(self) -> list[str]:
        """Sessions whose inbound.db changed after their central view was derived.

        Every write derives the view right after committing to inbound.db, so only a
        crash between the two leaves a session here; a restarted host re-derives just
        those instead of opening every session's database.
        """
        with self.central() as db:
            rows = db.execute("SELECT id, inbound_version FROM sessions").fetchall()
        return [sid for sid, seen in rows if seen is None or seen != self._inbound_version(sid)]

    def reindex(self) -> int:
        """Re-derive every session's central state from its files (host start)."""
        sessions = self.list_sessions()
        for session in sessions:
            self.sync_session(session.id)
        return len(sessions)

    # --- inbound rows ----------------------------------------------------------------

    def send_message(
        self, session_ref: str, text: str, *, sender: str = "user", trigger: bool = True
    ) -> InboundMessage:
        """Append a chat message to a session's inbox, due at once."""
        session = self.get_session(session_ref)
        if not text.strip():
            raise InvalidInput("the message is empty; give the text to send")
        if len(text.encode("utf-8")) > MAX_CHAT_BYTES:
            raise InvalidInput(
                f"the message is over {MAX_CHAT_BYTES // 1024} KiB; shorten it "
                "or put the bulk in a workspace file"
            )
        return self._insert_simple(
            session, MessageKind.CHAT, {"text": text, "sender": sender}, trigger, "cli", "chat.send"
        )

    def post_system_note(self, session_id: str, text: str, *, trigger: bool = False) -> None:
        """Tell the agent something (e.g. why its request was rejected) on its next turn."""
        session = self.get_session(session_id)
        self._insert_simple(
            session, MessageKind.SYSTEM, {"text": text, "sender": "cronbox"}, trigger, None, None
        )

    def _insert_simple(
        self,
        session: Session,
        kind: MessageKind,
        content: dict[str, Any],
        trigger: bool,
        actor: str | None,
        action: str | None,
    ) -> InboundMessage:
        now = fmt(self.now())
        message_id = f"{kind.value}-{secrets.token_hex(6)}"
        with self._inbound_tx(session.id) as db:
            sdb.insert_inbound(
                db,
                {
                    "id": message_id, "kind": kind.value, "created_at": now, "updated_at": now,
                    "status": MessageStatus.PENDING.value, "process_after": now,
                    "scheduled_for": now, "timezone": session.timezone, "trigger": int(trigger),
                    "content": content,
                },
            )  # fmt: skip
            row = sdb.get_inbound(db, message_id)
        audit = (actor, action, message_id, None) if actor and action else None
        self.sync_session(session.id, series=(), audit=audit)
        assert row is not None
        return row

    # --- tasks -----------------------------------------------------------------------

    def schedule_task(
        self, session_ref: str, request: ScheduleRequest | dict[str, Any], *, actor: str = "cli"
    ) -> TaskView:
        """Validate and schedule a task; scheduling an existing id returns that task."""
        session = self.get_session(session_ref)
        req = request if isinstance(request, ScheduleRequest) else ScheduleRequest.parse(request)
        valid = validate_schedule(
            req,
            default_tz=session.timezone,
            now=self.now(),
            min_interval=self.limits.min_interval,
        )
        return self.insert_task(session, valid, actor=actor)

    def insert_task(self, session: Session, valid: ValidTask, *, actor: str) -> TaskView:
        """Write an already validated task (idempotent on its id)."""
        with self.central() as db:
            owner = db.execute(
                "SELECT session_id FROM tasks WHERE series_id = ?", [valid.id]
            ).fetchone()
        if owner is not None and owner[0] != session.id:
            raise InvalidInput(
                f'task id "{valid.id}" is already used by another session; choose another id'
            )
        now = fmt(self.now())
        with self._inbound_tx(session.id) as db:
            existing = sdb.series_rows(db, valid.id)
            if not existing:
                if sdb.count_live_tasks(db) >= self.limits.max_tasks_per_session:
                    raise TooManyTasks(session.name, self.limits.max_tasks_per_session)
                sdb.insert_inbound(db, task_row(valid, now))
        audit = None
        if not existing:
            detail = {"recurrence": valid.recurrence.expr if valid.recurrence else None,
                      "first_run": fmt(valid.first_run)}  # fmt: skip
            audit = (actor, "task.schedule", valid.id, detail)
        self.sync_session(session.id, series=[valid.id], audit=audit)
        return self.get_task(valid.id, session_id=session.id)

    def _locate(self, ref: str, session_id: str | None) -> tuple[str, str]:
        """(session id, series id) for a task id, occurrence id or series id."""
        series = series_of(ref)
        with self.central() as db:
            row = db.execute(
                "SELECT session_id, series_id FROM tasks WHERE series_id = ? OR live_id = ?",
                [series, ref],
            ).fetchone()
        if row is None or (session_id is not None and row[0] != session_id):
            raise TaskNotFound(ref)
        return str(row[0]), str(row[1])

    def get_task(self, ref: str, *, session_id: str | None = None) -> TaskView:
        """One task series by id, occurrence id or series id."""
        _, series = self._locate(ref, session_id)
        views = self._task_views("WHERE t.series_id = ?", [series])
        if not views:
            raise TaskNotFound(ref)
        return views[0]

    def list_tasks(
        self, session_ref: str | None = None, *, include_all: bool = False
    ) -> list[TaskView]:
        """Task series, live ones by default, soonest next run first."""
        where, args = [], []
        if session_ref is not None:
            where.append("t.session_id = ?")
            args.append(self.get_session(session_ref).id)
        if not include_all:
            where.append("t.status IN ('pending', 'paused')")
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._task_views(clause, args)

    def _task_views(self, clause: str, args: list[Any]) -> list[TaskView]:
        with self.central() as db:
            rows = db.execute(
                "SELECT t.live_id, t.series_id, t.session_id, s.name, t.status, t.next_run, "
                "t.recurrence, t.timezone, t.prompt, t.has_script, r.started_at, r.outcome "
                "FROM tasks t JOIN sessions s ON s.id = t.session_id "
                "LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs "
                "WHERE series_id = t.series_id "
                f"AND session_id = t.session_id) {clause} "
                "ORDER BY t.next_run IS NULL, t.next_run, t.created_at",
                args,
            ).fetchall()
        return [
            TaskView(
                id=r[0], series_id=r[1], session_id=r[2], session=r[3], status=r[4],
                next_run=r[5], recurrence=r[6], timezone=r[7], prompt=r[8],
                has_script=bool(r[9]), last_run_at=r[10], last_outcome=r[11],
            )
            for r in rows
        ]  # fmt: skip

    def _live(self, db: sdb.InboundDb, ref: str) -> InboundMessage:
        rows = sdb.series_rows(db, series_of(ref))
        live = [r for r in rows if r.status.live]
        if not rows:
            raise TaskNotFound(ref)
        if not live:
            raise TaskStateError(
                f'task "{ref}" has no live occurrence (last one is {rows[0].status.value}); '
                "schedule a new task instead"
            )
        return live[0]

    def _change_status(
        self, ref: str, to: MessageStatus, allowed: set[MessageStatus], action: str,
        actor: str, session_id: str | None,
    ) -> TaskView:  # fmt: skip
        session, series = self._locate(ref, session_id)
        now = fmt(self.now())
        with self._inbound_tx(session) as db:
            live = self._live(db, series)
            if live.status not in allowed:
                raise TaskStateError(
                    f'task "{ref}" is {live.status.value}, so it cannot be {action}d'
                    if action != "cancel"
                    else f'task "{ref}" is {live.status.value} and cannot be cancelled'
                )
            fields: dict[str, Any] = {"status": to.value, "updated_at": now}
            resumed = resume_at(live, self.now()) if to is MessageStatus.PENDING else None
            if resumed is not None and live.recurrence:
                fields.update(process_after=fmt(resumed), scheduled_for=fmt(resumed))
            sdb.update_inbound(db, live.id, **fields)
        self.sync_session(session, series=[series], audit=(actor, f"task.{action}", series, None))
        return self.get_task(series)

    def cancel_task(
        self, ref: str, *, actor: str = "cli", session_id: str | None = None
    ) -> TaskView:
        """Cancel a task's live occurrence (by id or series id); it ends ``cancelled``."""
        live = {MessageStatus.PENDING, MessageStatus.PAUSED}
        return self._change_status(ref, MessageStatus.CANCELLED, live, "cancel", actor, session_id)

    def pause_task(
        self, ref: str, *, actor: str = "cli", session_id: str | None = None
    ) -> TaskView:
        """Pause a pending task; it keeps its place but never fires until resumed."""
        return self._change_status(
            ref, MessageStatus.PAUSED, {MessageStatus.PENDING}, "pause", actor, session_id
        )

    def resume_task(
        self, ref: str, *, actor: str = "cli", session_id: str | None = None
    ) -> TaskView:
        """Resume a paused task; a recurring one continues from its next slot."""
        return self._change_status(
            ref, MessageStatus.PENDING, {MessageStatus.PAUSED}, "resume", actor, session_id
        )

    def update_task(
        self, request: UpdateRequest | dict[str, Any], *, actor: str = "cli",
        session_id: str | None = None,
    ) -> TaskView:  # fmt: skip
        """Change a task's prompt, script, time or recurrence; reschedules the live occurrence."""
        req = request if isinstance(request, UpdateRequest) else UpdateRequest.parse(request)
        session, series = self._locate(req.task_id, session_id)
        now = fmt(self.now())
        with self._inbound_tx(session) as db:
            live = self._live(db, series)
            changes = validate_update(
                req, live, now=self.now(), min_interval=self.limits.min_interval
            )
            fields: dict[str, Any] = {"updated_at": now}
            if changes.content is not None:
                fields["content"] = changes.content
            if changes.recurrence_changed:
                fields["recurrence"] = changes.recurrence
            if changes.process_after is not None:
                when = fmt(changes.process_after)
                fields.update(process_after=when, scheduled_for=when)
            sdb.update_inbound(db, live.id, **fields)
        detail = {k: v for k, v in fields.items() if k in ("recurrence", "process_after")}
        self.sync_session(session, series=[series], audit=(actor, "task.update", series, detail))
        return self.get_task(series)

    # --- runs ------------------------------------------------------------------------

    def runs_for(self, ref: str, limit: int = 50) -> list[Run]:
        """Past runs of a task series, newest first."""
        session, series = self._locate(ref, None)
        with self.central() as db:
            cur = db.execute(
                "SELECT id, session_id, message_id, series_id, scheduled_for, started_at, "
                "finished_at, outcome, tries, error, output_preview FROM runs "
                "WHERE session_id = ? AND series_id = ? ORDER BY id DESC LIMIT ?",
                [session, series, limit],
            )
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [Run.model_validate(dict(zip(cols, r, strict=True))) for r in rows]

    # --- settlement: acks, retries, fan-out, catch-up ---------------------------------

    def settle_acks(self, session_id: str, default_timeout: timedelta) -> Settlement:
        """Apply the runner's acks to ``messages_in`` and the run history (sweep step 1, 5).

        Acks are untrusted: malformed ones, or ones for another try, are ignored. A
        finished recurring occurrence gets its next occurrence in the same inbound
        transaction that settles it. Returns the rows still claimed (``processing``) and
        the occurrences this pass finished.
        """
        directory = self.session_dir(session_id)
        if not (directory / sdb.OUTBOUND).exists():
            return Settlement([], [])
        now = self.now()
        claims: list[Claim] = []
        finished: list[Finished] = []
        runs: list[dict[str, Any]] = []
        touched: set[str] = set()
        with self._inbound_tx(session_id) as db:
            # Only due rows can have been claimed; future ones are never read here.
            pending = {r.id: r for r in sdb.due_rows(db, fmt(now))}
            with sdb.outbound(directory, readonly=True) as out:
                raw_acks = sdb.acks_for(out, list(pending)) if sdb.outbound_ready(out) else []
            for raw in raw_acks:
                try:
                    ack = sdb.ack_from_row(raw)
                except ValueError:
                    continue
                row = pending.get(ack.message_id)
                if row is None or ack.attempt != row.tries:
                    continue
                at = _clamp_time(ack.started_at or ack.updated_at, row, now)
                run = {"message_id": row.id, "series_id": row.series_id,
                       "scheduled_for": row.scheduled_for or row.process_after,
                       "tries": row.tries + 1, "started_at": fmt(at)}  # fmt: skip
                if ack.status is AckStatus.PROCESSING:
                    timeout = timedelta(seconds=row.timeout) if row.timeout else default_timeout
                    claims.append(Claim(row.id, at, timeout))
                    runs.append(run)
                    continue
                status, outcome = _ACK_FATE[ack.status]
                error = _cap(ack.error, 2000)
                self._finish(db, row, status, error, now)
                ended = _clamp_time(ack.updated_at, row, now)
                run.update(finished_at=fmt(ended), outcome=outcome.value,
                           error=error, output_preview=_cap(ack.output_preview, 500))  # fmt: skip
                runs.append(run)
                touched.add(row.series_id or row.id)
                finished.append(Finished(row.id, row.series_id, outcome, error))
        if runs or touched:
            self._record_runs(session_id, runs, sorted(touched))
        return Settlement(claims, finished)

    def requeue(self, session_id: str, fates: Sequence[RowFate]) -> None:
        """Apply the sweep's verdict on rows a dead or killed runner left claimed.

        ``pending`` puts the row back with its new tries and backoff; ``failed`` ends it
        (a recurring series still gets its next occurrence).
        """
        if not fates:
            return
        now = self.now()
        runs: list[dict[str, Any]] = []
        touched: list[str] = []
        with self._inbound_tx(session_id) as db:
            rows = sdb.rows_by_ids(db, [f.message_id for f in fates])
            for fate in fates:
                row = rows.get(fate.message_id)
                if row is None or row.status is not MessageStatus.PENDING:
                    continue
                run = {"message_id": row.id, "series_id": row.series_id,
                       "scheduled_for": row.scheduled_for or row.process_after,
                       "tries": fate.tries, "error": fate.error}  # fmt: skip
                if fate.status is MessageStatus.PENDING:
                    when = fmt(fate.process_after or now)
                    sdb.update_inbound(db, row.id, tries=fate.tries, process_after=when,
                                       error=fate.error, updated_at=fmt(now))  # fmt: skip
                else:
                    sdb.update_inbound(db, row.id, tries=fate.tries)
                    self._finish(db, row, MessageStatus.FAILED, fate.error, now)
                    run.update(finished_at=fmt(now), outcome=fate.outcome.value)
                runs.append(run)
                touched.append(row.series_id or row.id)
        self._record_runs(session_id, runs, touched)

    def prepare_due(self, session_id: str) -> int:
        """Apply the catch-up rule to a session's due rows before its runner is woken.

        A recurring occurrence whose later slots have also passed (the host was down)
        is coalesced onto the latest slot; one later than its ``misfire_grace`` is
        recorded ``missed`` and the series moves on. Returns the rows changed.
        """
        now = self.now()
        changed = 0
        runs: list[dict[str, Any]] = []
        touched: list[str] = []
        with self._inbound_tx(session_id) as db:
            for row in sdb.due_rows(db, fmt(now)):
                if row.kind is not MessageKind.TASK or row.tries > 0:
                    continue
                scheduled = parse_utc(row.scheduled_for or row.process_after or row.created_at)
                rec = stored_recurrence(row.recurrence) if row.recurrence else None
                grace = (
                    timedelta(seconds=row.misfire_grace) if row.misfire_grace is not None else None
                )
                decision = plan_due(rec, zone(row.timezone), scheduled, now, grace)
                slot = fmt(decision.scheduled_for)
                if decision.action == "missed":
                    sdb.update_inbound(db, row.id, scheduled_for=slot, process_after=slot)
                    missed = row.model_copy(update={"scheduled_for": slot, "process_after": slot})
                    late = _seconds_words(now - decision.scheduled_for)
                    self._finish(db, missed, MessageStatus.SKIPPED, f"missed: {late} late", now)
                    runs.append({"message_id": row.id, "series_id": row.series_id,
                                 "scheduled_for": slot, "tries": 0, "finished_at": fmt(now),
                                 "outcome": RunOutcome.MISSED.value,
                                 "error": f"missed: {late} late, past its grace"})  # fmt: skip
                elif slot != row.scheduled_for:
                    sdb.update_inbound(db, row.id, scheduled_for=slot, process_after=slot)
                else:
                    continue
                changed += 1
                touched.append(row.series_id or row.id)
        if changed:
            self._record_runs(session_id, runs, touched)
        return changed

    def run_now(self, ref: str, *, actor: str = "cli") -> InboundMessage:
        """Fire a task once now, outside its schedule; the series is left as it is."""
        session, series = self._locate(ref, None)
        now = fmt(self.now())
        with self._inbound_tx(session) as db:
            live = self._live(db, series)
            run_id = f"{series}{OCCURRENCE_SEP}run-{secrets.token_hex(4)}"
            sdb.insert_inbound(
                db,
                {
                    "id": run_id, "kind": MessageKind.TASK.value, "created_at": now,
                    "updated_at": now, "status": MessageStatus.PENDING.value,
                    "process_after": now, "scheduled_for": now, "recurrence": None,
                    "timezone": live.timezone, "series_id": series, "trigger": 1,
                    "content": {**live.content, "manual": True}, "timeout": live.timeout,
                },
            )  # fmt: skip
            row = sdb.get_inbound(db, run_id)
        self.sync_session(session, series=(), audit=(actor, "task.run", series, None))
        assert row is not None
        return row

    def _finish(
        self, db: sdb.InboundDb, row: InboundMessage, status: MessageStatus, error: str | None,
        now: datetime,
    ) -> None:  # fmt: skip
        """End an occurrence and, for a recurring one, insert the next in the same transaction.

        Clearing the old row's recurrence in that transaction is what makes a crash
        between the two steps unable to leave two live occurrences.
        """
        sdb.update_inbound(db, row.id, status=status.value, error=error, updated_at=fmt(now))
        if not row.recurrence:
            return
        rec = stored_recurrence(row.recurrence)
        base = parse_utc(row.scheduled_for or row.process_after or row.created_at)
        nxt = fmt(next_fire(rec, zone(row.timezone), base))
        new_id = next_occurrence_id(row)
        if sdb.get_inbound(db, new_id) is None:
            sdb.insert_inbound(
                db,
                {
                    "id": new_id, "kind": row.kind.value, "created_at": fmt(now),
                    "updated_at": fmt(now), "status": MessageStatus.PENDING.value,
                    "process_after": nxt, "scheduled_for": nxt, "recurrence": row.recurrence,
                    "timezone": row.timezone, "series_id": row.series_id or row.id,
                    "trigger": row.trigger, "content": row.content,
                    "misfire_grace": row.misfire_grace, "timeout": row.timeout,
                },
            )  # fmt: skip
        sdb.update_inbound(db, row.id, recurrence=None)

    def _record_runs(
        self, session_id: str, runs: Sequence[dict[str, Any]], series: Sequence[str]
    ) -> None:
        """Upsert run history rows and refresh the central view, in one transaction."""
        directory = self.session_dir(session_id)
        with sdb.inbound(directory) as inbound_db, self.central() as db, db.atomic():
            for run in runs:
                db.execute(
                    "INSERT INTO runs (session_id, message_id, series_id, scheduled_for, "
                    "started_at, finished_at, outcome, tries, error, output_preview) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (session_id, message_id) DO UPDATE SET "
                    "started_at = coalesce(runs.started_at, excluded.started_at), "
                    "finished_at = coalesce(excluded.finished_at, runs.finished_at), "
                    "outcome = coalesce(excluded.outcome, runs.outcome), "
                    "tries = max(runs.tries, excluded.tries), "
                    "error = coalesce(excluded.error, runs.error), "
                    "output_preview = coalesce(excluded.output_preview, runs.output_preview)",
                    [
                        session_id, run["message_id"], run.get("series_id"),
                        run.get("scheduled_for"), run.get("started_at"),
                        run.get("finished_at"), run.get("outcome"), run.get("tries", 0),
                        run.get("error"), run.get("output_preview"),
                    ],
                )  # fmt: skip
            self._sync_central(db, session_id, inbound_db, series)
            db.execute(
                "UPDATE sessions SET last_active_at = ? WHERE id = ?",
                [fmt(self.now()), session_id],
            )

    def inbound_rows(self, session_id: str) -> list[InboundMessage]:
        """Every row of a session's inbox, oldest first (for status views and tests)."""
        with sdb.inbound(self.session_dir(session_id), readonly=True) as db:
            return sdb.all_rows(db)

    # --- outbound: replies and agent actions -------------------------------------------

    def undelivered(self, session_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Raw ``messages_out`` rows the host has not handled yet, oldest first (untrusted)."""
        return sdb.undelivered(self.session_dir(session_id), limit)

    def mark_delivered(
        self, session_id: str, seq: int, message_id: str, channel: str, status: str,
        detail: str | None = None,
    ) -> bool:  # fmt: skip
        """Record that outbound ``seq`` was handled; False if it already was."""
        with self._inbound_tx(session_id) as db:
            return sdb.mark_delivered(
                db, seq, message_id[:200], channel, fmt(self.now()), status, _cap(detail, 2000)
            )


@dataclass(frozen=True)
class Finished:
    """An occurrence a settlement pass ended."""

    message_id: str
    series_id: str | None
    outcome: RunOutcome
    error: str | None


@dataclass(frozen=True)
class Settlement:
    """What one pass over a runner's acks found: rows still claimed, and rows finished."""

    claims: list[Claim]
    finished: list[Finished]


@dataclass(frozen=True)
class RowFate:
    """The sweep's verdict on a row left claimed by a runner that is gone."""

    message_id: str
    status: MessageStatus
    tries: int
    process_after: datetime | None
    error: str
    outcome: RunOutcome = RunOutcome.ERROR


_ACK_FATE = {
    AckStatus.COMPLETED: (MessageStatus.COMPLETED, RunOutcome.OK),
    AckStatus.FAILED: (MessageStatus.FAILED, RunOutcome.ERROR),
    AckStatus.SKIPPED: (MessageStatus.SKIPPED, RunOutcome.SKIPPED),
}


def _cap(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def _clamp_time(claimed: str, row: InboundMessage, now: datetime) -> datetime:
    """A container's timestamp, kept within what is possible (it is untrusted)."""
    floor = parse_utc(row.process_after or row.created_at)
    try:
        when = parse_utc(claimed)
    except ValueError:
        return now
    return min(max(when, floor), now)


def _seconds_words(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def describe_recurrence(expr: str | None) -> str:
    """The recurrence in words, or "once"."""
    return stored_recurrence(expr).describe() if expr else "once"
