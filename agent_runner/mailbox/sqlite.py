"""The mailbox over a session directory's SQLite files.

The runner reads ``inbox/inbound.db`` read-only (ATTACHed to ``outbound.db``, so a claim
reads both files in one query), writes ``outbox/outbound.db`` and touches
``outbox/.heartbeat``, whose mtime the host's liveness check reads. Every file is opened
for one unit of work and closed again (``journal_mode=DELETE``: the host sees the pages),
in a worker thread, so the heartbeat keeps beating while a query waits for the host's lock.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio

from agent_runner.history import Exchange, Remember
from agent_runner.mailbox import Settlement, wakes_agent
from cronbox_shared import outbox as sdb
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.errors import RunnerConfigError
from cronbox_shared.rows import AckStatus, InboxRow, MessageKind
from cronbox_shared.timeutil import fmt, parse_utc

P = ParamSpec("P")
T = TypeVar("T")


async def _in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class SqliteMailbox:
    """The session in ``session_dir``: its inbox, outbox and heartbeat files."""

    def __init__(self, session_dir: Path) -> None:
        self.session_dir = session_dir
        self._inbound = session_dir / sdb.INBOUND
        self._heartbeat = session_dir / sdb.HEARTBEAT

    async def open(self) -> int:
        return await _in_thread(self._open)

    async def beat(self) -> None:
        await _in_thread(self._heartbeat.touch)

    async def claim(self, now: datetime, limit: int) -> list[InboxRow]:
        return await _in_thread(self._claim, fmt(now), limit)

    async def settle(
        self, at: datetime, settled: Sequence[Settlement], remember: Remember | None = None
    ) -> None:
        if settled or remember is not None:
            await _in_thread(self._settle, fmt(at), settled, remember)

    async def next_due(self, now: datetime) -> datetime | None:
        due = await _in_thread(self._next_due, fmt(now))
        return parse_utc(due) if due else None

    def inbox_changes(self) -> ChangeWatch | None:
        watch = ChangeWatch.open()
        if watch is not None and not watch.add(self._inbound.parent, (self._inbound.name,)):
            watch.close()
            return None
        return watch

    async def release(self, rows: Sequence[InboxRow]) -> None:
        if rows:
            await _in_thread(self._release, rows)

    async def load_history(self, dialect: str) -> list[Exchange]:
        rows = await _in_thread(self._history, dialect)
        return [Exchange(dialect, tuple(messages), row_id) for row_id, messages in rows]

    async def get_state(self, key: str) -> str | None:
        return await _in_thread(self._get_state, key)

    async def set_state(self, key: str, value: str) -> None:
        await _in_thread(self._set_state, key, value)

    # -- blocking halves, run in worker threads ---------------------------------------

    def _open(self) -> int:
        if not self._inbound.is_file():
            raise RunnerConfigError(
                f"{self.session_dir} has no {sdb.INBOUND}; is it a cronbox session directory?"
            )
        with sdb.open_outbox(self.session_dir) as db, db.atomic():
            return sdb.clear_processing_acks(db)

    def _claim(self, now: str, limit: int) -> list[InboxRow]:
        with sdb.open_outbox(self.session_dir) as db:
            rows = sdb.claimable(db, self._inbound, now, limit)
            if not wakes_agent(rows) and not (
                len(rows) == limit and sdb.trigger_waiting(db, self._inbound, now)
            ):
                return []
            with db.atomic():
                for row in rows:
                    sdb.set_ack(db, row.id, row.tries, AckStatus.PROCESSING, now)
        return rows

    def _settle(self, at: str, settled: Sequence[Settlement], remember: Remember | None) -> None:
        with sdb.open_outbox(self.session_dir) as db, db.atomic():
            if remember is not None:
                dialect = remember.exchange.dialect
                sdb.forget_history(db, dialect, remember.keep_from)
                sdb.add_history(db, dialect, at, remember.exchange.messages)
            for s in settled:
                if s.reply:
                    sdb.insert_outbound(
                        db, f"out-{os.urandom(8).hex()}", MessageKind.CHAT, {"text": s.reply},
                        at, in_reply_to=s.message.id,
                    )  # fmt: skip
                sdb.set_ack(db, s.message.id, s.message.tries, s.status, at, s.error, s.preview)

    def _next_due(self, now: str) -> str | None:
        with sdb.open_outbox(self.session_dir) as db:
            return sdb.next_due_after(db, self._inbound, now)

    def _release(self, rows: Sequence[InboxRow]) -> None:
        with sdb.open_outbox(self.session_dir) as db, db.atomic():
            for row in rows:
                sdb.delete_ack(db, row.id, row.tries)

    def _history(self, dialect: str) -> list[tuple[int, list[Any]]]:
        with sdb.open_outbox(self.session_dir) as db:
            return sdb.history(db, dialect)

    def _get_state(self, key: str) -> str | None:
        with sdb.open_outbox(self.session_dir) as db:
            return sdb.get_state(db, key)

    def _set_state(self, key: str, value: str) -> None:
        with sdb.open_outbox(self.session_dir) as db, db.atomic():
            sdb.set_state(db, key, value)
