"""``cronbox.db`` on SQLite: the sessions registry with the due index, the task mirror,
run history, the audit log and runner leases.

Named queries only: every method is one read or one transaction, and decides nothing.
The session files are the truth; this file is derived from them (and re-derived at
start-up when a crash left it behind), except for the run history and the audit log.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cronbox_shared import outbox as box
from cronbox_shared.errors import HomeNotFound, SessionExists, SessionNotFound, TaskNotFound
from cronbox_shared.models import MessageStatus, preview
from cronbox_shared.timeutil import Instant
from host.store.records import (
    LIVE_STATES,
    AuditEntry,
    ChargedRun,
    JobRecord,
    Lease,
    Run,
    RunRecord,
    Session,
    SessionView,
    TaskQuery,
    TaskView,
    TokenCount,
)

CENTRAL = "cronbox.db"
CENTRAL_MIGRATION_SET = "cronbox.central"
CENTRAL_MIGRATIONS = (
    "m001_central", "m002_inbound_version", "m003_session_layout", "m004_leases",
    "m005_inbound_schema", "m006_session_zone", "m008_policies", "m008_quiet_hours",
    "m008_wake_budget", "m009_webhooks", "m009_jobs", "m010_tokens", "m012_chains",
    "m013_counts",
)  # fmt: skip
"""The names of ``central_schema.central_migrations``, in order: a new migration's name
goes here too (a test holds the two equal), so an up-to-date file is seen as such
without importing the migrations."""
# The task states a live series is in; the same text in the partial index and its queries,
# so SQLite can use the index.
LIVE_TASK = f"status IN ({', '.join(repr(s.value) for s in LIVE_STATES)})"

_SESSION_COLS = ("id", "name", "agent", "timezone", "container", "created_at",
                 "last_active_at", "next_due_at", "quiet", "max_wakes_per_day",
                 "webhook_url", "webhook_secret_env")  # fmt: skip
_RUN_COLS = ("id", "session_id", "message_id", "series_id", "scheduled_for", "started_at",
             "finished_at", "outcome", "tries", "error", "output_preview", "input_tokens",
             "output_tokens", "decision", "decided_by", "decided_at",
             "decision_note")  # fmt: skip


_TASK_VIEW = (
    "SELECT t.live_id, t.series_id, t.session_id, s.name, t.status, t.next_run, "
    "t.recurrence, t.timezone, t.prompt, t.has_script, r.started_at, r.outcome, "
    "t.paused_reason, t.after_task, t.after_outcome, t.when_output, t.approval "
    "FROM tasks t JOIN sessions s ON s.id = t.session_id "
    "LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs "
    "WHERE series_id = t.series_id AND session_id = t.session_id)"
)


def _task_view(r: Sequence[Any]) -> TaskView:
    return TaskView(
        id=r[0], series_id=r[1], session_id=r[2], session=r[3], status=r[4],
        next_run=r[5], recurrence=r[6], timezone=r[7], prompt=r[8],
        has_script=bool(r[9]), last_run_at=r[10], last_outcome=r[11],
        paused_reason=r[12], after_task=r[13], after_outcome=r[14], when_output=r[15],
        approval=bool(r[16]),
    )  # fmt: skip


def _session(row: Sequence[Any]) -> Session:
    data = dict(zip(_SESSION_COLS, row, strict=True))
    data["container"] = json.loads(data["container"] or "{}")
    return Session.model_validate(data)


class ChangeWatcher:
    """Holds one connection open so ``PRAGMA data_version`` reveals other writers' commits.

    The host polls it to notice changes made by other processes (CLI, HTTP handlers).
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(
            path, timeout=box.BUSY_TIMEOUT_MS / 1000, check_same_thread=False
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


class CentralDb:
    """An open ``cronbox.db``: statements, and transactions around them.

    The connection is in autocommit mode, so a statement outside :meth:`atomic` commits
    by itself; an :meth:`atomic` inside another is a savepoint.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    @contextmanager
    def atomic(self) -> Iterator[CentralDb]:
        """One transaction, committed when the block ends and rolled back when it raises."""
        nested = self.conn.in_transaction
        self.conn.execute("SAVEPOINT atomic" if nested else "BEGIN")
        try:
            yield self
            self.conn.execute("RELEASE atomic" if nested else "COMMIT")
        except BaseException:
            # An error may have ended the transaction already (SQLite rolls back on some).
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO atomic" if nested else "ROLLBACK")
                if nested:
                    self.conn.execute("RELEASE atomic")
            raise


# The columns of ``runs`` a run record's merge sets when the record has them.
_MERGED = (
    "started_at", "finished_at", "outcome", "error", "output_preview", "decision",
    "decided_by", "decided_at", "decision_note",
)  # fmt: skip


class _PerThread(threading.local):
    """A thread's own connection to cronbox.db, and whether a use holds it now."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.busy = False


class SqliteCentral:
    """The central repository over ``$CRONBOX_HOME/cronbox.db`` (WAL mode)."""

    def __init__(self, home: Path, *, create: bool = True) -> None:
        """Open ``home``'s cronbox.db and bring it to the current schema.

        With ``create`` a missing home is made; without it a missing cronbox.db raises
        HomeNotFound and nothing is created (commands that only read use this).
        """
        self.path = Path(home) / CENTRAL
        self._local = _PerThread()
        if create:
            for sub in (box.SESSIONS, box.DOORBELL):
                (Path(home) / sub).mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise HomeNotFound(str(home))
        with self._open() as db:
            if not box.migrated(db.conn, CENTRAL_MIGRATION_SET, CENTRAL_MIGRATIONS):
                from sqlite_utils import Database

                from host.store.central_schema import central_migrations

                central_migrations.apply(Database(db.conn))

    @contextmanager
    def _open(self) -> Iterator[CentralDb]:
        """The calling thread's connection for one read or transaction.

        Each thread keeps its connection open between uses (opening one, with its
        pragmas and the schema's first parse, costs about 0.5 ms, a hundred times a
        query: the host makes thousands a minute in a burst); it is closed when the
        thread ends or this object goes. A use inside another (the thread's connection
        busy) gets a connection of its own, closed after it, as every use once did.
        """
        local = self._local
        if local.busy:
            fresh = self._connect()
            try:
                yield CentralDb(fresh)
            finally:
                fresh.close()
            return
        if local.conn is None:
            local.conn = self._connect()
        conn = local.conn
        local.busy = True
        try:
            yield CentralDb(conn)
        finally:
            local.busy = False
            # A transaction left open (a failure mid-way) must not carry into the next use.
            if conn.in_transaction:
                conn.rollback()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=box.BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={box.BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA recursive_triggers=on")  # as sqlite-utils' connections
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def transaction(self) -> Iterator[CentralDb]:
        """One write transaction on cronbox.db (for tests and tools that patch rows)."""
        with self._open() as db, db.atomic():
            yield db

    def watch(self) -> ChangeWatcher:
        """A watcher that notices commits to ``cronbox.db`` made by other connections."""
        return ChangeWatcher(self.path)

    # --- sessions ---------------------------------------------------------------------

    def insert_session(self, session: Session, audit: AuditEntry, version: int | None) -> None:
        """Register a session whose inbox is at ``version``; SessionExists for a taken name."""
        with self._open() as db, db.atomic():
            try:
                db.execute(
                    "INSERT INTO sessions (id, name, agent, timezone, container, created_at, "
                    "inbound_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [session.id, session.name, session.agent, session.timezone,
                     json.dumps(session.container), session.created_at, version],
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise SessionExists(session.name) from None
            self._audit(db, audit)

    def update_session(self, session_id: str, fields: dict[str, Any], audit: AuditEntry) -> None:
        """Change a session's agent profile, timezone, quiet hours, wake cap, webhook or
        container settings (a dict)."""
        values = {k: json.dumps(v) if k == "container" else v for k, v in fields.items()}
        assign = ", ".join(f"{k} = ?" for k in values)
        with self._open() as db, db.atomic():
            db.execute(f"UPDATE sessions SET {assign} WHERE id = ?", [*values.values(), session_id])
            self._audit(db, audit)

    def delete_session(self, session_id: str, audit: AuditEntry) -> None:
        """Forget a session and its task mirror; its run history and audit trail stay."""
        with self._open() as db, db.atomic():
            db.execute("DELETE FROM tasks WHERE session_id = ?", [session_id])
            db.execute("DELETE FROM leases WHERE session_id = ?", [session_id])
            db.execute("DELETE FROM sessions WHERE id = ?", [session_id])
            self._audit(db, audit)

    def session(self, ref: str) -> Session:
        """A session by id or name; raises SessionNotFound."""
        with self._open() as db:
            row = db.execute(
                f"SELECT {', '.join(_SESSION_COLS)} FROM sessions WHERE id = ? OR name = ? "
                "ORDER BY id = ? DESC LIMIT 1",
                [ref, ref, ref],
            ).fetchone()
        if row is None:
            raise SessionNotFound(ref)
        return _session(row)

    def name_taken(self, name: str) -> bool:
        """Whether a session already has this name."""
        with self._open() as db:
            return (
                db.execute("SELECT 1 FROM sessions WHERE name = ?", [name]).fetchone() is not None
            )

    def sessions(self, *, with_webhook: bool = False) -> list[Session]:
        """Every session (only those with a webhook when asked), oldest first."""
        where = "WHERE webhook_url IS NOT NULL" if with_webhook else ""
        with self._open() as db:
            rows = db.execute(
                f"SELECT {', '.join(_SESSION_COLS)} FROM sessions {where} ORDER BY created_at, id"
            ).fetchall()
        return [_session(r) for r in rows]

    def token_sessions(self, day: str, agents: Collection[str]) -> list[Session]:
        """Sessions that used tokens on ``day`` or run one of ``agents``, oldest first."""
        names = sorted(agents)
        by_agent = f" OR agent IN ({', '.join('?' * len(names))})" if names else ""
        with self._open() as db:
            rows = db.execute(
                f"SELECT {', '.join(_SESSION_COLS)} FROM sessions WHERE id IN "
                f"(SELECT session_id FROM token_usage WHERE day = ?){by_agent} "
                "ORDER BY created_at, id",
                [day, *names],
            ).fetchall()
        return [_session(r) for r in rows]

    def session_agents(self) -> list[tuple[str, str, str]]:
        """(id, name, agent) of every session, oldest first."""
        with self._open() as db:
            rows = db.execute(
                "SELECT id, name, agent FROM sessions ORDER BY created_at, id"
            ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def session_count(self) -> int:
        """How many sessions there are."""
        with self._open() as db:
            (n,) = db.execute("SELECT count(*) FROM sessions").fetchone()
        return int(n)

    def due_sessions(self, now: Instant, limit: int = 1000) -> list[tuple[str, Instant]]:
        """(session id, next_due_at) of sessions with due work, earliest first (index only)."""
        with self._open() as db:
            rows = db.execute(
                "SELECT id, next_due_at FROM sessions WHERE next_due_at IS NOT NULL "
                "AND next_due_at <= ? ORDER BY next_due_at LIMIT ?",
                [now, limit],
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def chat_due_sessions(self, now: Instant, limit: int = 1000) -> set[str]:
        """Sessions with a chat message that is due (index only)."""
        with self._open() as db:
            rows = db.execute(
                "SELECT id FROM sessions WHERE chat_due_at IS NOT NULL AND chat_due_at <= ? "
                "LIMIT ?",
                [now, limit],
            ).fetchall()
        return {str(r[0]) for r in rows}

    def next_wake(self) -> Instant | None:
        """The earliest ``next_due_at`` over all sessions."""
        with self._open() as db:
            (value,) = db.execute("SELECT min(next_due_at) FROM sessions").fetchone()
        return str(value) if value else None

    def inbound_versions(self) -> list[tuple[str, int | None]]:
        """(session id, inbound.db change counter its central view was derived from)."""
        with self._open() as db:
            rows = db.execute("SELECT id, inbound_version FROM sessions").fetchall()
        return [(str(r[0]), r[1]) for r in rows]

    def inbound_version(self, session_id: str) -> int | None:
        with self._open() as db:
            row = db.execute(
                "SELECT inbound_version FROM sessions WHERE id = ?", [session_id]
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    # --- the derived view, runs and audit in one transaction ---------------------------

    def apply_view(
        self,
        session_id: str,
        view: SessionView,
        version: int | None,
        *,
        now: Instant,
        runs: Sequence[RunRecord] = (),
        audit: Sequence[AuditEntry] = (),
    ) -> None:
        """Bring one session's due index and task mirror up to date, record runs and audit.

        One transaction: the view was read from the session's inbound.db right after
        the change it reflects was committed there.
        """
        with self._open() as db, db.atomic():
            self._apply_view(db, session_id, view, version, now)
            for run in runs:
                self._upsert_run(db, session_id, run)
            if runs:
                db.execute("UPDATE sessions SET last_active_at = ? WHERE id = ?", [now, session_id])
            for entry in audit:
                self._audit(db, entry)

    def apply_views(
        self, views: Sequence[tuple[str, SessionView, int | None]], *, now: Instant
    ) -> None:
        """Bring many sessions' due index and task mirror up to date in one transaction
        (a host re-deriving what a crash left behind, a bulk import)."""
        with self._open() as db, db.atomic():
            for session_id, view, version in views:
                self._apply_view(db, session_id, view, version, now)

    @staticmethod
    def _apply_view(
        db: CentralDb, session_id: str, view: SessionView, version: int | None, now: Instant
    ) -> None:
        db.execute(
            "UPDATE sessions SET next_due_at = ?, chat_due_at = ?, inbound_version = ?, "
            "awaiting = ? WHERE id = ?",
            [view.next_due_at, view.chat_due_at, version, view.awaiting, session_id],
        )
        if view.full:
            # Only series the inbox no longer holds go: the others keep their row, and
            # with it their place in the listing order.
            kept = json.dumps([row.series_id or row.id for row in view.tasks])
            db.execute(
                "DELETE FROM tasks WHERE session_id = ? "
                "AND series_id NOT IN (SELECT value FROM json_each(?))",
                [session_id, kept],
            )
        for row in view.tasks:
            db.execute(
                "INSERT INTO tasks (series_id, session_id, live_id, status, next_run, "
                "recurrence, timezone, prompt, has_script, created_at, updated_at, "
                "paused_reason, after_task, after_outcome, when_output, approval) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (series_id) DO UPDATE "
                "SET live_id = excluded.live_id, status = excluded.status, "
                "next_run = excluded.next_run, recurrence = excluded.recurrence, "
                "timezone = excluded.timezone, prompt = excluded.prompt, "
                "has_script = excluded.has_script, updated_at = excluded.updated_at, "
                "paused_reason = excluded.paused_reason, after_task = excluded.after_task, "
                "after_outcome = excluded.after_outcome, when_output = excluded.when_output, "
                "approval = excluded.approval",
                [
                    row.series_id or row.id, session_id, row.id, row.status.value,
                    row.process_after if row.status.live else None, row.recurrence,
                    row.timezone, preview(row.prompt, 200) or "", int(bool(row.script)),
                    row.created_at, now,
                    row.paused_reason if row.status is MessageStatus.PAUSED else None,
                    row.after_task, row.after_outcome, row.when_output, int(row.approval),
                ],
            )  # fmt: skip

    def runs_recorded(self, session_id: str, runs: Sequence[RunRecord]) -> bool:
        """Whether merging these run records (as :meth:`_upsert_run` does) would change
        nothing: each has its row, which holds every field the record sets."""
        if not runs:
            return True
        marks = ", ".join("?" for _ in runs)
        with self._open() as db:
            rows = {
                str(r[0]): r[1:]
                for r in db.execute(
                    f"SELECT message_id, {', '.join(_MERGED)}, tries FROM runs "
                    f"WHERE session_id = ? AND message_id IN ({marks})",
                    [session_id, *(run.message_id for run in runs)],
                )
            }
        for run in runs:
            row = rows.get(run.message_id)
            if row is None or run.tries > row[-1]:
                return False
            mine = run.model_dump(mode="json", include=set(_MERGED))
            for name, stored in zip(_MERGED, row[:-1], strict=True):
                value = mine[name]
                if value is None or value == stored:
                    continue
                if name == "started_at" and stored is not None:
                    continue  # the first start is kept
                return False
        return True

    @staticmethod
    def _upsert_run(db: CentralDb, session_id: str, run: RunRecord) -> None:
        db.execute(
            "INSERT INTO runs (session_id, message_id, series_id, scheduled_for, started_at, "
            "finished_at, outcome, tries, error, output_preview, decision, decided_by, "
            "decided_at, decision_note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (session_id, message_id) DO UPDATE SET "
            "started_at = coalesce(runs.started_at, excluded.started_at), "
            "finished_at = coalesce(excluded.finished_at, runs.finished_at), "
            "outcome = coalesce(excluded.outcome, runs.outcome), "
            "tries = max(runs.tries, excluded.tries), "
            "error = coalesce(excluded.error, runs.error), "
            "output_preview = coalesce(excluded.output_preview, runs.output_preview), "
            "decision = coalesce(excluded.decision, runs.decision), "
            "decided_by = coalesce(excluded.decided_by, runs.decided_by), "
            "decided_at = coalesce(excluded.decided_at, runs.decided_at), "
            "decision_note = coalesce(excluded.decision_note, runs.decision_note)",
            [
                session_id, run.message_id, run.series_id, run.scheduled_for, run.started_at,
                run.finished_at, run.outcome.value if run.outcome else None, run.tries,
                run.error, run.output_preview, run.decision, run.decided_by, run.decided_at,
                run.decision_note,
            ],
        )  # fmt: skip

    # --- tasks ---------------------------------------------------------------------

    def locate(self, series_id: str, occurrence_id: str) -> tuple[str, str] | None:
        """(session id, series id) of the series with this id or live occurrence id."""
        with self._open() as db:
            row = db.execute(
                "SELECT session_id, series_id FROM tasks WHERE series_id = ? OR live_id = ? "
                "LIMIT 1",
                [series_id, occurrence_id],
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def task_views(
        self,
        *,
        series_id: str | None = None,
        session_id: str | None = None,
        live_only: bool = False,
    ) -> list[TaskView]:
        """Task series with their last run, soonest next run first."""
        where, args = [], []
        if series_id is not None:
            where.append("t.series_id = ?")
            args.append(series_id)
        if session_id is not None:
            where.append("t.session_id = ?")
            args.append(session_id)
        if live_only:
            where.append(f"t.{LIVE_TASK}")
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self._open() as db:
            rows = db.execute(
                f"{_TASK_VIEW} {clause} ORDER BY t.next_run IS NULL, t.next_run, t.created_at",
                args,
            ).fetchall()
        return [_task_view(r) for r in rows]

    def task_page(self, query: TaskQuery) -> list[TaskView]:
        """Up to ``query.limit`` series in listing order (the order the index first saw
        them), after the series ``query.after`` names; TaskNotFound for an unknown one."""
        with self._open() as db:
            start = 0
            if query.after is not None:
                row = db.execute(
                    "SELECT listed FROM tasks WHERE series_id = ? OR live_id = ? LIMIT 1",
                    [query.after, query.after],
                ).fetchone()
                if row is None:
                    raise TaskNotFound(query.after)
                start = int(row[0])
            where = ["t.listed > ?"]
            args: list[Any] = [start]
            view = _TASK_VIEW
            if query.session_id is not None:
                where.append("t.session_id = ?")
                args.append(query.session_id)
            if query.states == LIVE_STATES:
                where.append(f"t.{LIVE_TASK}")  # the partial index's own condition
                if query.session_id is None:
                    # Left to itself the planner reads (status, listed) once per live
                    # state and sorts every live task to return the first page.
                    view = _TASK_VIEW.replace(" FROM tasks t ", " FROM tasks t INDEXED BY "
                                              "tasks_live_listed ", 1)  # fmt: skip
            elif query.states is not None:
                where.append(f"t.status IN ({', '.join('?' for _ in query.states)})")
                args.extend(state.value for state in query.states)
            rows = db.execute(
                f"{view} WHERE {' AND '.join(where)} ORDER BY t.listed LIMIT ?",
                [*args, query.limit],
            ).fetchall()
        return [_task_view(r) for r in rows]

    def awaiting_count(self) -> int:
        """Occurrences awaiting approval over all sessions (from the due index)."""
        with self._open() as db:
            (n,) = db.execute("SELECT coalesce(sum(awaiting), 0) FROM sessions").fetchone()
        return int(n)

    def decision_counts(self) -> dict[str, int]:
        """Approval decisions in the kept run history, by decision."""
        with self._open() as db:
            rows = db.execute(
                "SELECT decision, count(*) FROM runs WHERE decision IS NOT NULL GROUP BY decision"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def live_task_count(self) -> int:
        """Live task series over all sessions (from the kept counts)."""
        counts = self.counts()
        return sum(counts.get(f"tasks.{state.value}", 0) for state in LIVE_STATES)

    def counts(self) -> dict[str, int]:
        """The counts the index keeps: ``sessions``, and ``tasks.<state>`` per task state."""
        with self._open() as db:
            rows = db.execute("SELECT name, n FROM counts").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def due_count(self, now: Instant) -> int:
        """How many sessions have work due by ``now`` (an index range)."""
        with self._open() as db:
            (n,) = db.execute(
                "SELECT count(*) FROM sessions WHERE next_due_at <= ?", [now]
            ).fetchone()
        return int(n)

    def quiet_sessions(self, limit: int) -> tuple[int, list[tuple[str, str, str]]]:
        """How many sessions have quiet hours, and (name, window, zone) of the first
        ``limit`` of them by name."""
        with self._open() as db:
            (n,) = db.execute("SELECT count(*) FROM sessions WHERE quiet IS NOT NULL").fetchone()
            rows = db.execute(
                "SELECT name, quiet, timezone FROM sessions WHERE quiet IS NOT NULL "
                "ORDER BY name LIMIT ?",
                [limit],
            ).fetchall()
        return int(n), [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def runs(
        self, session_id: str, series_id: str, limit: int = 50, before: int | None = None
    ) -> list[Run]:
        """Past runs of a task series, newest first, older than run ``before`` when given."""
        with self._open() as db:
            rows = db.execute(
                f"SELECT {', '.join(_RUN_COLS)} FROM runs "
                "WHERE series_id = ? AND id < ? AND session_id = ? ORDER BY id DESC LIMIT ?",
                [series_id, before if before is not None else 2**63 - 1, session_id, limit],
            ).fetchall()
        return [Run.model_validate(dict(zip(_RUN_COLS, r, strict=True))) for r in rows]

    def runs_of(self, session_id: str, message_ids: Sequence[str]) -> dict[str, Run]:
        """The run of each of these occurrences that has one."""
        if not message_ids:
            return {}
        marks = ", ".join("?" for _ in message_ids)
        with self._open() as db:
            rows = db.execute(
                f"SELECT {', '.join(_RUN_COLS)} FROM runs WHERE session_id = ? "
                f"AND message_id IN ({marks})",
                [session_id, *message_ids],
            ).fetchall()
        runs = [Run.model_validate(dict(zip(_RUN_COLS, r, strict=True))) for r in rows]
        return {run.message_id: run for run in runs}

    def run(self, run_id: int) -> Run | None:
        """One run by its id."""
        with self._open() as db:
            row = db.execute(
                f"SELECT {', '.join(_RUN_COLS)} FROM runs WHERE id = ?", [run_id]
            ).fetchone()
        return Run.model_validate(dict(zip(_RUN_COLS, row, strict=True))) if row else None

    # --- model tokens ----------------------------------------------------------------

    def record_tokens(
        self, session_id: str, day: str, tokens: TokenCount, charged: Sequence[ChargedRun]
    ) -> None:
        """Add one model call's tokens to the session's ``day`` and to the runs it was for.

        One transaction. A run the call was for that settlement has not recorded yet is
        inserted with its series and slot; settlement fills in the rest.
        """
        with self._open() as db, db.atomic():
            db.execute(
                "INSERT INTO token_usage (session_id, day, input_tokens, output_tokens) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (session_id, day) DO UPDATE SET "
                "input_tokens = input_tokens + excluded.input_tokens, "
                "output_tokens = output_tokens + excluded.output_tokens",
                [session_id, day, tokens.input_tokens, tokens.output_tokens],
            )
            for run in charged:
                db.execute(
                    "INSERT INTO runs (session_id, message_id, series_id, scheduled_for, "
                    "input_tokens, output_tokens) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (session_id, message_id) DO UPDATE SET "
                    "input_tokens = runs.input_tokens + excluded.input_tokens, "
                    "output_tokens = runs.output_tokens + excluded.output_tokens",
                    [session_id, run.message_id, run.series_id, run.scheduled_for,
                     run.tokens.input_tokens, run.tokens.output_tokens],
                )  # fmt: skip

    def series_tokens(self, session_id: str, series_id: str) -> TokenCount:
        """The tokens every recorded run of a series used, added up."""
        with self._open() as db:
            row = db.execute(
                "SELECT coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0) "
                "FROM runs WHERE session_id = ? AND series_id = ?",
                [session_id, series_id],
            ).fetchone()
        return TokenCount(input_tokens=row[0], output_tokens=row[1])

    def tokens_on(self, day: str, session_id: str | None = None) -> dict[str, TokenCount]:
        """Tokens each session (or just ``session_id``) used on ``day``, by session id."""
        where, args = "day = ?", [day]
        if session_id is not None:
            where, args = where + " AND session_id = ?", [day, session_id]
        with self._open() as db:
            rows = db.execute(
                f"SELECT session_id, input_tokens, output_tokens FROM token_usage WHERE {where}",
                args,
            ).fetchall()
        return {r[0]: TokenCount(input_tokens=r[1], output_tokens=r[2]) for r in rows}

    # --- audit ---------------------------------------------------------------------

    @staticmethod
    def _audit(db: CentralDb, entry: AuditEntry) -> None:
        db.execute(
            "INSERT INTO audit_log (at, actor, action, session_id, target, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [entry.at, entry.actor, entry.action, entry.session_id, entry.target,
             json.dumps(entry.detail) if entry.detail is not None else None],
        )  # fmt: skip

    def job_states(self) -> list[JobRecord]:
        """What is recorded of every background job that has run."""
        with self._open() as db:
            rows = db.execute(
                "SELECT name, running_since, last_run_at, last_finished_at, last_ok, last_result "
                "FROM jobs ORDER BY name"
            ).fetchall()
        return [
            JobRecord(name=r[0], running_since=r[1], last_run_at=r[2], last_finished_at=r[3],
                      last_ok=None if r[4] is None else bool(r[4]), last_result=r[5])
            for r in rows
        ]  # fmt: skip

    def job_started(self, name: str, at: Instant) -> bool:
        """Mark a job running; False (nothing written) when it already is."""
        with self._open() as db, db.atomic():
            row = db.execute("SELECT running_since FROM jobs WHERE name = ?", [name]).fetchone()
            if row is not None and row[0] is not None:
                return False
            db.execute(
                "INSERT INTO jobs (name, running_since, last_run_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET running_since = excluded.running_since, "
                "last_run_at = excluded.last_run_at",
                [name, at, at],
            )
        return True

    def job_finished(self, name: str, at: Instant, ok: bool, result: str) -> None:
        """Record how a job's run ended."""
        with self._open() as db, db.atomic():
            db.execute(
                "UPDATE jobs SET running_since = NULL, last_finished_at = ?, last_ok = ?, "
                "last_result = ? WHERE name = ?",
                [at, int(ok), result, name],
            )

    def clear_running_jobs(self) -> int:
        """Forget the running marks a dead host left behind."""
        with self._open() as db, db.atomic():
            return db.execute(
                "UPDATE jobs SET running_since = NULL WHERE running_since IS NOT NULL"
            ).rowcount

    def prune_runs(self, before: Instant) -> int:
        """Delete runs that finished before ``before``, and the daily token counts of the
        days before its day (no budget counts them any more); how many runs."""
        with self._open() as db, db.atomic():
            db.execute("DELETE FROM token_usage WHERE day < ?", [before[:10]])
            return db.execute("DELETE FROM runs WHERE finished_at < ?", [before]).rowcount

    def prune_audit(self, before: Instant) -> int:
        """Delete audit entries older than ``before``."""
        with self._open() as db, db.atomic():
            return db.execute("DELETE FROM audit_log WHERE at < ?", [before]).rowcount

    def record_audit(self, entry: AuditEntry) -> None:
        """Append one audit entry in its own transaction."""
        with self._open() as db, db.atomic():
            self._audit(db, entry)

    def audit_entries(self, session_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries, newest first."""
        where, args = ("WHERE session_id = ?", [session_id]) if session_id else ("", [])
        with self._open() as db:
            rows = db.execute(
                "SELECT id, at, actor, action, session_id, target, detail FROM audit_log "
                f"{where} ORDER BY id DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [
            AuditEntry(
                id=r[0], at=r[1], actor=r[2], action=r[3], session_id=r[4], target=r[5],
                detail=json.loads(r[6]) if r[6] else None,
            )
            for r in rows
        ]  # fmt: skip

    # --- leases --------------------------------------------------------------------

    def acquire_lease(self, lease: Lease) -> None:
        """Record that ``lease.host`` runs the session's runner (replacing any old lease)."""
        with self._open() as db, db.atomic():
            db.execute(
                "INSERT INTO leases (session_id, host, runner_ref, acquired_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
                "host = excluded.host, runner_ref = excluded.runner_ref, "
                "acquired_at = excluded.acquired_at",
                [lease.session_id, lease.host, lease.runner_ref, lease.acquired_at],
            )

    def release_lease(self, session_id: str, runner_ref: str) -> None:
        """Drop the session's lease if it still names this runner."""
        with self._open() as db, db.atomic():
            db.execute(
                "DELETE FROM leases WHERE session_id = ? AND runner_ref = ?",
                [session_id, runner_ref],
            )

    def leases(self) -> list[Lease]:
        """Every recorded lease."""
        with self._open() as db:
            rows = db.execute(
                "SELECT session_id, host, runner_ref, acquired_at FROM leases ORDER BY session_id"
            ).fetchall()
        return [Lease(session_id=r[0], host=r[1], runner_ref=r[2], acquired_at=r[3]) for r in rows]
