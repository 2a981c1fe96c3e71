"""The migrations of ``cronbox.db`` (sqlite-utils ``Migrations``).

Imported only when a ``cronbox.db`` lacks one of them (a new home, or one an older
cronbox made): :class:`host.store.central.SqliteCentral` checks the migrations table
with a plain query first, so a command on a home that is up to date imports neither
this module nor sqlite-utils. A new migration goes here, and its name into
``CENTRAL_MIGRATIONS`` (a test holds the two equal).
"""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from cronbox_shared import sessiondb as sdb
from host.store.central import CENTRAL_MIGRATION_SET, LIVE_TASK

central_migrations = Migrations(CENTRAL_MIGRATION_SET)


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
    for session_dir in sorted((Path(path).parent / sdb.SESSIONS).glob("*/")):
        sdb.migrate_layout(session_dir)


@central_migrations()
def m004_leases(db: Database) -> None:
    """Which host runs which session's runner (a seam for several hosts)."""
    db.execute(
        """
        CREATE TABLE leases (
            session_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            runner_ref TEXT NOT NULL,
            acquired_at TEXT NOT NULL
        )
        """
    )


def _open_every_inbox(db: Database) -> None:
    """Bring every session's inbox to the current schema (its readers never migrate)."""
    (path,) = [row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"]
    for session_dir in sorted((Path(path).parent / sdb.SESSIONS).glob("*/")):
        if (session_dir / sdb.INBOUND).is_file():
            with sdb.inbound(session_dir):
                pass


@central_migrations()
def m005_inbound_schema(db: Database) -> None:
    """Bring every session's inbound.db to the current schema (per-channel deliveries).

    Readers never migrate, so the host does it for every session once, here.
    """
    _open_every_inbox(db)


@central_migrations()
def m006_session_zone(db: Database) -> None:
    """Record each session's zone in its inbox, where its MCP server reads it."""
    (path,) = [row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"]
    home = Path(path).parent
    for session_id, timezone in db.execute("SELECT id, timezone FROM sessions").fetchall():
        session_dir = home / sdb.SESSIONS / session_id
        if (session_dir / sdb.INBOUND).is_file():
            with sdb.inbound(session_dir) as inbox, inbox.atomic():
                sdb.set_session_info(inbox, "timezone", timezone)


@central_migrations()
def m008_policies(db: Database) -> None:
    """Scheduling policies: why a series is paused (task mirror), when a session's
    earliest chat is due (the pool serves chat first), and every session's inbox brought
    to the schema with the task policy columns (readers never migrate)."""
    db.execute("ALTER TABLE tasks ADD COLUMN paused_reason TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN chat_due_at TEXT")
    db.execute("CREATE INDEX sessions_chat_due ON sessions (chat_due_at)")
    _open_every_inbox(db)


@central_migrations()
def m008_quiet_hours(db: Database) -> None:
    """A session's quiet hours (task occurrences due inside wait for the window's end)."""
    db.execute("ALTER TABLE sessions ADD COLUMN quiet TEXT")


@central_migrations()
def m008_wake_budget(db: Database) -> None:
    """A session's limit on how often its tasks may wake the agent a day (None: none)."""
    db.execute("ALTER TABLE sessions ADD COLUMN max_wakes_per_day INTEGER")


@central_migrations()
def m009_webhooks(db: Database) -> None:
    """A webhook per session (its URL and the variable holding its signing secret), and
    every session's inbox brought to the schema that records each delivery attempt."""
    db.execute("ALTER TABLE sessions ADD COLUMN webhook_url TEXT")
    db.execute("ALTER TABLE sessions ADD COLUMN webhook_secret_env TEXT")
    _open_every_inbox(db)


@central_migrations()
def m009_jobs(db: Database) -> None:
    """The host's background jobs (last run and result), and indexes for retention."""
    db.execute(
        """
        CREATE TABLE jobs (
            name TEXT PRIMARY KEY,
            running_since TEXT,
            last_run_at TEXT,
            last_finished_at TEXT,
            last_ok INTEGER,
            last_result TEXT
        )
        """
    )
    db.execute("CREATE INDEX runs_finished ON runs (finished_at)")
    db.execute("CREATE INDEX audit_log_at ON audit_log (at)")


@central_migrations()
def m010_tokens(db: Database) -> None:
    """Model tokens the gateway counted: per run (``runs``), and per session and UTC day
    (``token_usage``, which the daily token budget is checked against)."""
    db.execute("ALTER TABLE runs ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE runs ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        CREATE TABLE token_usage (
            session_id TEXT NOT NULL,
            day TEXT NOT NULL,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (session_id, day)
        )
        """
    )
    db.execute("CREATE INDEX token_usage_day ON token_usage (day)")


@central_migrations()
def m012_chains(db: Database) -> None:
    """Chains and approval gates: each run's approval decision (who, when, the note) and
    the chain and gate of each task in the mirror; every inbox brought to the schema."""
    for column in ("decision TEXT", "decided_by TEXT", "decided_at TEXT", "decision_note TEXT"):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    for column in ("after_task TEXT", "after_outcome TEXT", "when_output TEXT",
                   "approval INTEGER NOT NULL DEFAULT 0"):  # fmt: skip
        db.execute(f"ALTER TABLE tasks ADD COLUMN {column}")
    db.execute("ALTER TABLE sessions ADD COLUMN awaiting INTEGER NOT NULL DEFAULT 0")
    _open_every_inbox(db)


@central_migrations()
def m013_counts(db: Database) -> None:
    """What a big home is read by without scanning it (issue 13).

    * ``tasks.listed``: the order the index first saw each series in, never reassigned,
      so ``task list`` pages by keyset (``--after ID``) and no row is skipped or repeated
      while tasks are added, run or re-derived;
    * indexes serving each page straight in that order: all tasks, live ones, one state,
      one session; sessions with quiet hours;
    * ``counts``: sessions and task series per state, kept by triggers on every write,
      so ``cronbox status`` reads a few rows instead of counting 100,000.
    """
    db.execute("ALTER TABLE tasks ADD COLUMN listed INTEGER")
    db.execute("UPDATE tasks SET listed = rowid")
    db.execute("CREATE UNIQUE INDEX tasks_listed ON tasks (listed)")
    db.execute(f"CREATE INDEX tasks_live_listed ON tasks (listed) WHERE {LIVE_TASK}")
    db.execute("CREATE INDEX tasks_status_listed ON tasks (status, listed)")
    db.execute("CREATE INDEX tasks_session_listed ON tasks (session_id, listed)")
    db.execute("CREATE INDEX sessions_quiet ON sessions (name) WHERE quiet IS NOT NULL")
    db.execute(
        "CREATE TRIGGER tasks_listed_new AFTER INSERT ON tasks WHEN new.listed IS NULL BEGIN "
        "UPDATE tasks SET listed = (SELECT coalesce(max(listed), 0) + 1 FROM tasks) "
        "WHERE rowid = new.rowid; END"
    )
    db.execute("CREATE TABLE counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO counts SELECT 'sessions', count(*) FROM sessions")
    db.execute("INSERT INTO counts SELECT 'tasks.' || status, count(*) FROM tasks GROUP BY status")

    def bump(name: str, by: int) -> str:
        return (
            f"INSERT INTO counts (name, n) VALUES ({name}, {by}) "
            f"ON CONFLICT (name) DO UPDATE SET n = n + {by};"
        )

    session, new, old = "'sessions'", "'tasks.' || new.status", "'tasks.' || old.status"
    for trigger, event, body in (
        ("sessions_count_new", "INSERT ON sessions", bump(session, 1)),
        ("sessions_count_gone", "DELETE ON sessions", bump(session, -1)),
        ("tasks_count_new", "INSERT ON tasks", bump(new, 1)),
        ("tasks_count_gone", "DELETE ON tasks", bump(old, -1)),
        (
            "tasks_count_moved",
            "UPDATE OF status ON tasks WHEN old.status IS NOT new.status",
            bump(old, -1) + " " + bump(new, 1),
        ),
    ):
        db.execute(f"CREATE TRIGGER {trigger} AFTER {event} BEGIN {body} END")
