"""A session's own files on SQLite, as the host uses them.

The host writes ``inbox/inbound.db`` (one ``BEGIN IMMEDIATE`` transaction per unit of
work, through :class:`InboxTx`) and reads ``outbox/outbound.db`` read-only. The SQL
itself is in :mod:`cronbox_shared.sessiondb`, shared with the runner and MCP server;
this module groups it into the units of work the service layer asks for.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from cronbox_shared import sessiondb as sdb
from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.models import DeliveryStatus, InboundMessage, MessageKind, MessageStatus
from cronbox_shared.timeutil import Instant
from host.settlement import InboxChanges, RowChange
from host.store.base import WouldWrite
from host.store.records import RunRecord, SessionView


def row_values(row: InboundMessage) -> dict[str, Any]:
    """A new ``messages_in`` row as column values (its seq is assigned on insert)."""
    values = row.model_dump(mode="json", exclude={"seq"})
    values["kind"] = row.kind.value
    values["status"] = row.status.value
    return values


class InboxTx:
    """One open write transaction on a session's inbound.db."""

    def __init__(self, db: sdb.InboundDb) -> None:
        self.db = db

    def insert(self, row: InboundMessage) -> int:
        """Insert a new row with the next even seq; returns the seq."""
        return sdb.insert_inbound(self.db, row_values(row))

    def update(self, message_id: str, **fields: Any) -> None:
        """Set columns of one row."""
        sdb.update_inbound(self.db, message_id, **fields)

    def get(self, message_id: str) -> InboundMessage | None:
        """One row by id."""
        return sdb.get_inbound(self.db, message_id)

    def carry_runs(self, runs: Sequence[RunRecord]) -> list[RunRecord]:
        """Journal this transaction's run records; returns the last transaction's."""
        held = sdb.carry_run_journal(self.db, [r.model_dump_json() for r in runs])
        return [RunRecord.model_validate_json(r) for r in held]

    def carried_runs(self) -> list[RunRecord]:
        """The run records the last transaction journaled (read only)."""
        return [RunRecord.model_validate_json(r) for r in sdb.run_journal(self.db)]

    def unread_rejection_note(self) -> InboundMessage | None:
        """The newest rejection note not handed to the agent yet."""
        return sdb.unread_rejection_note(self.db)

    def current(self, ref: str) -> InboundMessage | None:
        """The live (or, for an ended series, newest) occurrence of the series ``ref`` names."""
        return sdb.series_current(self.db, sdb.series_of_ref(self.db, ref))

    def pending_manual_runs(self, series_id: str) -> list[str]:
        """Ids of the series' manual runs that have not started."""
        return sdb.pending_manual_runs(self.db, series_id)

    def due_rows(self, now: Instant) -> list[InboundMessage]:
        """Pending rows due at ``now``."""
        return sdb.due_rows(self.db, now)

    def rows(self, ids: Sequence[str]) -> dict[str, InboundMessage]:
        """The rows with these ids."""
        return sdb.rows_by_ids(self.db, ids)

    def live_task_count(self) -> int:
        """Pending or paused task occurrences."""
        return sdb.count_live_tasks(self.db)

    def apply(self, changes: InboxChanges) -> None:
        """Apply a settlement plan's changes: row updates, then new occurrences.

        A new occurrence whose id already exists is not inserted again (a crash can
        repeat a plan, never double an occurrence).
        """
        for change in changes.updates:
            self.update(change.message_id, **_fields(change))
        for row in changes.inserts:
            if self.get(row.id) is None:
                self.insert(row)

    def waiting_children(self, series_ids: Sequence[str]) -> list[InboundMessage]:
        """The chained tasks waiting for any of these parent series."""
        return sdb.waiting_children(self.db, series_ids)

    def chain_parent(self, series_id: str) -> str | None:
        """The parent series a chained task waits for, or None."""
        return sdb.chain_parent(self.db, series_id)

    def chain_fired(self, series_id: str) -> bool:
        """Whether a chained task has ever been fired by its parent."""
        return sdb.chain_fired(self.db, series_id)

    def gated_due(self, now: Instant) -> list[InboundMessage]:
        """Due occurrences of approval-gated tasks that have not been approved."""
        return sdb.gated_due(self.db, now)

    def awaiting(
        self, series_id: str | None = None, expired_at: Instant | None = None
    ) -> list[InboundMessage]:
        """Occurrences awaiting approval (of a series, or past their deadline)."""
        return sdb.awaiting(self.db, series_id, expired_at)

    def accept_outbound(
        self, seq: int, message_id: str, channels: Sequence[str], status: DeliveryStatus,
        at: Instant, detail: str | None = None,
    ) -> bool:  # fmt: skip
        """Take an outbound row in; False when it was taken in already."""
        return sdb.accept_outbound(self.db, seq, message_id, channels, status, at, detail)

    def record_attempt(
        self, seq: int, channel: str, status: DeliveryStatus, at: Instant,
        next_attempt_at: Instant | None, error: str | None,
    ) -> None:  # fmt: skip
        """Record one channel's attempt at a reply."""
        sdb.record_attempt(self.db, seq, channel, status, at, next_attempt_at, error)

    def info(self, key: str) -> str | None:
        """One fact recorded with :meth:`set_info`, or None."""
        return sdb.session_info(self.db, key)

    def live_pending_tasks(self) -> list[InboundMessage]:
        """The pending occurrence of every task series (one per series)."""
        return sdb.live_tasks(self.db, (MessageStatus.PENDING,))

    def defer_delivery(self, seq: int, channel: str, at: Instant, until: Instant, why: str) -> None:
        """Put a pending delivery off until ``until`` without counting an attempt."""
        sdb.defer_delivery(self.db, seq, channel, at, until, why)

    def set_info(self, key: str, value: str) -> None:
        """Record one fact about the session for its runner and MCP server."""
        sdb.set_session_info(self.db, key, value)

    def prune_finished(self, before: Instant, limit: int) -> int:
        """Delete finished rows last changed before ``before`` (newest of each series stays)."""
        return sdb.prune_finished(self.db, before, limit)

    def view(self, series: Sequence[str] | None) -> SessionView:
        """The session's due index and the current row of ``series`` (None: every series)."""
        next_due = sdb.next_due(self.db)
        chat_due = sdb.next_due(self.db, MessageKind.CHAT)
        awaiting = sdb.count_awaiting(self.db)
        if series is None:
            return SessionView(next_due_at=next_due, chat_due_at=chat_due,
                               tasks=tuple(sdb.all_tasks(self.db)), full=True,
                               awaiting=awaiting)  # fmt: skip
        rows = [sdb.series_current(self.db, s) for s in dict.fromkeys(series)]
        return SessionView(next_due_at=next_due, chat_due_at=chat_due,
                           tasks=tuple(r for r in rows if r is not None),
                           awaiting=awaiting)  # fmt: skip


def _fields(change: RowChange) -> dict[str, Any]:
    fields: dict[str, Any] = {"updated_at": change.at}
    if change.status is not None:
        fields["status"] = change.status.value
        fields["error"] = change.error
    elif change.error is not None:
        fields["error"] = change.error
    if change.tries is not None:
        fields["tries"] = change.tries
    if change.process_after is not None:
        fields["process_after"] = change.process_after
    if change.scheduled_for is not None:
        fields["scheduled_for"] = change.scheduled_for
    if change.clear_recurrence:
        fields["recurrence"] = None
    return fields


_SESSION_ID = re.compile(r"s-[0-9a-f]{12}")


class SqliteSessionFiles:
    """Every session directory under ``$CRONBOX_HOME/sessions``."""

    def __init__(
        self,
        home: Path,
        outbox_max_bytes: int = DEFAULTS.outbox_max_bytes,
        outbox_read_limit: float = DEFAULTS.outbox_read_limit,
    ) -> None:
        self.root = Path(home) / sdb.SESSIONS
        self.doorbell = Path(home) / sdb.DOORBELL
        self.outbox_max_bytes = outbox_max_bytes
        self.outbox_read_limit = outbox_read_limit

    def _outbox(self, session_id: str) -> AbstractContextManager[sdb.OutboundDb]:
        """A session's outbox opened for one read as untrusted input: bounded in size and
        time, a lock waited for only briefly (see ``sessiondb.read_outbox``)."""
        return sdb.read_outbox(
            self.directory(session_id), self.outbox_max_bytes, self.outbox_read_limit,
            sdb.OUTBOX_BUSY_MS,
        )  # fmt: skip

    def check_outbox(self, session_id: str) -> bool:
        """Whether the session has an outbound.db; raises OutboxUnreadable when it may not
        be read (a link, the wrong type, oversize). Opens nothing."""
        return sdb.check_outbox(self.directory(session_id), self.outbox_max_bytes)

    def probe_outbox(self, session_id: str) -> None:
        """Read the outbox's schema once, as every read would; raises OutboxUnreadable."""
        if self.check_outbox(session_id):
            with self._outbox(session_id) as out:
                sdb.outbound_ready(out)

    def reset_outbox(self, session_id: str, aside: Path) -> None:
        """Move the session's whole ``outbox/`` to ``aside`` (kept for inspection) and
        start a clean one whose seqs continue above every seq already taken in."""
        directory = self.directory(session_id)
        with sdb.inbound(directory, readonly=True) as db:
            floor = sdb.delivered_max_seq(db)
        aside.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(directory / sdb.OUTBOX):
            os.rename(directory / sdb.OUTBOX, aside)
        (directory / sdb.OUTBOX).mkdir()
        sdb.fresh_outbox(directory, floor)

    def roll_back_outbox(self, session_id: str) -> None:
        """Roll back a hot journal a killed runner left (its runner must be gone)."""
        sdb.roll_back_journal(self.directory(session_id), self.outbox_max_bytes)

    def rung(self, limit: int) -> list[str]:
        """Ids of sessions whose doorbell rang since the last call, each once, at most ``limit``.

        A ring is taken (its file removed) before the caller reads the outbox, so a write
        that lands after the read rings again. Names that are no session id are removed
        and never returned; a full doorbell is read ``limit`` names at a time.
        """
        found: list[str] = []
        try:
            entries = os.scandir(self.doorbell)
        except OSError:
            return found
        with entries:
            for entry in entries:
                if len(found) >= limit:
                    break
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue  # a directory, or taken meanwhile: nothing to hand on
                if _SESSION_ID.fullmatch(entry.name):
                    found.append(entry.name)
        return found

    def directory(self, session_id: str) -> Path:
        """The directory holding a session's files."""
        return self.root / session_id

    def create(self, timezone: str) -> str:
        """Make a new session directory with its inbox, outbox and workspace; its id."""
        session_id = "s-" + secrets.token_hex(6)
        directory = self.directory(session_id)
        for sub in (sdb.WORKSPACE, sdb.OUTBOX):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        with sdb.inbound(directory) as db, db.atomic():
            sdb.set_session_info(db, "timezone", timezone)
        # Made (and migrated) here, once, as `session reset` makes a fresh one: else the
        # session's first wake would, in its runner (22 ms of CPU forked, 140 ms cold).
        sdb.fresh_outbox(directory, 0)
        return session_id

    def set_info(self, session_id: str, key: str, value: str) -> None:
        """Record one fact about the session in its inbox, for its runner and MCP server."""
        with self.transaction(session_id) as tx:
            tx.set_info(key, value)

    def set_zone(self, session_id: str, timezone: str) -> None:
        """Record the session's zone in its inbox, for its runner and MCP server."""
        with self.transaction(session_id) as tx:
            tx.set_info("timezone", timezone)

    @contextmanager
    def transaction(self, session_id: str) -> Iterator[InboxTx]:
        """A write transaction on the session's inbound.db, taken at once so seqs never race."""
        with sdb.inbound(self.directory(session_id)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield InboxTx(db)
            except BaseException:
                db.conn.rollback()
                raise
            db.conn.commit()

    @contextmanager
    def snapshot(self, session_id: str) -> Iterator[InboxTx]:
        """A read-only transaction on the session's inbound.db (a shared lock held from
        its first read to its end: one consistent view); a write in it raises WouldWrite,
        and so does a file that cannot be read as it stands (one a write would migrate)."""
        try:
            with sdb.inbound(self.directory(session_id), readonly=True) as db:
                db.execute("BEGIN")
                try:
                    yield InboxTx(db)
                finally:
                    db.conn.rollback()
        except sqlite3.Error as exc:
            raise WouldWrite(str(exc)) from exc

    def version(self, session_id: str) -> int | None:
        """inbound.db's change counter (None when unreadable)."""
        return sdb.change_counter(self.directory(session_id) / sdb.INBOUND)

    def get(self, session_id: str, message_id: str) -> InboundMessage | None:
        """One inbox row by id, read-only."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return sdb.get_inbound(db, message_id)

    def all_rows(self, session_id: str) -> list[InboundMessage]:
        """Every row of the inbox, oldest first (status views and tests)."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return sdb.all_rows(db)

    def waiting_children(self, session_id: str, series_id: str) -> list[str]:
        """Ids of the chained tasks waiting for one series."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return [r.id for r in sdb.waiting_children(db, [series_id])]

    def due_ids(self, session_id: str, now: Instant) -> tuple[str, ...]:
        """Ids of due pending rows that wake the agent (trigger=1), oldest first."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return tuple(r.id for r in sdb.due_rows(db, now) if r.trigger)

    def recent(
        self, session_id: str, now: Instant, limit: int
    ) -> tuple[list[InboundMessage], list[dict[str, Any]]]:
        """The newest rows that came due and the newest raw chat replies (untrusted)."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            rows = sdb.recent_rows(db, now, limit)
        if not self.has_outbox(session_id):
            return rows, []
        with self._outbox(session_id) as out:
            if not sdb.outbound_ready(out):
                return rows, []
            return rows, sdb.recent_outbound(out, MessageKind.CHAT, limit)

    def replies_to(self, session_id: str, message_id: str) -> list[dict[str, Any]]:
        """Raw chat replies the runner wrote to one inbound row (untrusted)."""
        if not self.has_outbox(session_id):
            return []
        with self._outbox(session_id) as out:
            return sdb.replies_to(out, message_id) if sdb.outbound_ready(out) else []

    def has_outbox(self, session_id: str) -> bool:
        """Whether the runner has created its outbound.db yet (a link counts: reading it
        then says why it may not be read)."""
        return os.path.lexists(self.directory(session_id) / sdb.OUTBOUND)

    def acks(self, session_id: str, message_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Raw ack rows for these inbound ids (untrusted; settlement validates them)."""
        if not message_ids or not self.has_outbox(session_id):
            return []
        with self._outbox(session_id) as out:
            return sdb.acks_for(out, message_ids) if sdb.outbound_ready(out) else []

    def undelivered(self, session_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Raw outbound rows not taken in yet, oldest first (untrusted)."""
        return sdb.undelivered(
            self.directory(session_id), limit, self.outbox_max_bytes, self.outbox_read_limit,
            sdb.OUTBOX_BUSY_MS,
        )  # fmt: skip

    def strays(self, session_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Raw outbound rows at or below the last seq taken in that were never taken in."""
        return sdb.strays(
            self.directory(session_id), limit, self.outbox_max_bytes, self.outbox_read_limit,
            sdb.OUTBOX_BUSY_MS,
        )  # fmt: skip

    def pending_deliveries(self, session_id: str) -> list[sdb.DeliveryRow]:
        """Channel deliveries still to be made, due or waiting for their backoff."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return sdb.pending_deliveries(db)

    def delivery_attempts(self, session_id: str) -> list[sdb.DeliveryAttempt]:
        """Every recorded delivery attempt of the session's replies, in order."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return sdb.delivery_attempts(db)

    def notices(self, session_id: str, seqs: Sequence[int]) -> list[InboundMessage]:
        """The host's notes with these inbound seqs (a channel delivers them)."""
        with sdb.inbound(self.directory(session_id), readonly=True) as db:
            return sdb.notices_by_seqs(db, seqs)

    def outbound_rows(self, session_id: str, seqs: Sequence[int]) -> list[dict[str, Any]]:
        """Raw outbound rows with these seqs (to retry a delivery)."""
        if not seqs or not self.has_outbox(session_id):
            return []
        with self._outbox(session_id) as out:
            return sdb.outbound_by_seqs(out, seqs) if sdb.outbound_ready(out) else []
