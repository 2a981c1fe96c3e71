"""Delivery: replies go out through channels; agent actions are applied to the inbox.

Everything in ``outbound.db`` was written by an untrusted container. Each row is
validated, handled once, and recorded in the session's ``delivered`` table; a bad row is
rejected, audited and explained to the agent, and never stops the host.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import CronboxError
from cronbox_shared.models import MAX_CHAT_BYTES, MessageKind, OutboundMessage
from cronbox_shared.tasks import ScheduleRequest, UpdateRequest
from host.store import Session, Store

log = logging.getLogger("cronbox.delivery")

# A rejection quotes at most this much of its reason back to the agent.
MAX_REASON_CHARS = 500

ACTIONS = ("schedule_task", "cancel_task", "pause_task", "resume_task", "update_task")


class Channel(Protocol):
    """Where an agent's replies go.

    Implementers must ensure ``send`` either delivers the message or raises; the
    caller records the outcome, so a channel never records anything itself.
    """

    name: str

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        """Deliver one reply."""
        ...


class ConsoleChannel:
    """Prints replies to the host's log (the terminal when run in the foreground)."""

    name = "console"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("cronbox.reply")

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        self._log.info("[%s] %s", session.name, text)


@dataclass(frozen=True)
class Handled:
    seq: int
    status: str
    detail: str | None = None


class Rejected(CronboxError, ValueError):
    """An outbound row that cannot be accepted."""


def _reply_text(message: OutboundMessage) -> str:
    text = message.content.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Rejected("a chat reply needs a non-empty string in content.text")
    if len(text.encode("utf-8")) > MAX_CHAT_BYTES:
        raise Rejected(f"a chat reply is over {MAX_CHAT_BYTES // 1024} KiB")
    return text


def apply_action(store: Store, session: Session, content: dict[str, Any]) -> str:
    """Apply one agent action to the inbox, re-validating it completely.

    Returns a short description of what was done; raises a CronboxError subclass when
    the action is unknown or its arguments are bad.
    """
    action = content.get("action")
    if action not in ACTIONS:
        raise Rejected(f'unknown action "{str(action)[:40]}"; expected one of {", ".join(ACTIONS)}')
    args = {k: v for k, v in content.items() if k != "action"}
    actor = f"agent:{session.id}"
    if action == "schedule_task":
        view = store.schedule_task(session.id, ScheduleRequest.parse(args), actor=actor)
        return f"scheduled {view.series_id} for {view.next_run}"
    if action == "update_task":
        view = store.update_task(UpdateRequest.parse(args), actor=actor, session_id=session.id)
        return f"updated {view.series_id}"
    task_id = args.get("taskId")
    if not isinstance(task_id, str) or set(args) != {"taskId"}:
        raise Rejected(f"{action} takes exactly one argument, taskId, a string")
    verb = {"cancel_task": store.cancel_task, "pause_task": store.pause_task,
            "resume_task": store.resume_task}[action]  # fmt: skip
    view = verb(task_id, actor=actor, session_id=session.id)
    return f"{action.removesuffix('_task')} {view.series_id}: now {view.status.value}"


class Delivery:
    """Handles one session's new outbound rows: replies to channels, actions to the inbox."""

    def __init__(self, store: Store, channels: Sequence[Channel]) -> None:
        self.store = store
        self.channels = list(channels)

    def pending(self, session_id: str) -> list[dict[str, Any]]:
        return self.store.undelivered(session_id)

    async def deliver(self, session: Session, rows: Sequence[dict[str, Any]]) -> list[Handled]:
        """Handle each raw row once; never raises for a bad row."""
        return [await self._one(session, raw) for raw in rows]

    async def _one(self, session: Session, raw: dict[str, Any]) -> Handled:
        try:
            return await self._handle(session, raw)
        except Exception as exc:
            # The row is untrusted: whatever it provokes is its rejection, not our crash.
            log.exception("session %s: outbound row crashed its handler", session.id)
            seq = raw.get("seq")
            if not isinstance(seq, int):
                return Handled(-1, "ignored")
            return self._reject(session, seq, str(raw.get("id")), f"could not be handled: {exc}")

    async def _handle(self, session: Session, raw: dict[str, Any]) -> Handled:
        seq = raw.get("seq")
        if not isinstance(seq, int):
            return Handled(-1, "ignored")
        message_id = str(raw.get("id"))
        try:
            message = sdb.outbound_from_row(raw)
        except (ValueError, ValidationError) as exc:
            return self._reject(session, seq, message_id, f"malformed row: {_short(exc)}")
        if message.kind is MessageKind.CHAT:
            try:
                text = _reply_text(message)
            except Rejected as exc:
                return self._reject(session, seq, message_id, str(exc))
            for channel in self.channels:
                try:
                    await channel.send(session, message, text)
                except Exception as exc:  # a channel failure must not stop delivery
                    log.warning("session %s: channel %s failed: %s", session.id, channel.name, exc)
            names = ",".join(c.name for c in self.channels) or "none"
            self.store.mark_delivered(session.id, seq, message_id, names, "delivered")
            return Handled(seq, "delivered")
        if message.kind is MessageKind.SYSTEM:
            try:
                done = apply_action(self.store, session, message.content)
            except CronboxError as exc:
                return self._reject(session, seq, message_id, str(exc), message.content)
            self.store.mark_delivered(session.id, seq, message_id, "action", "applied", done)
            log.info("session %s: agent action applied: %s", session.id, done)
            return Handled(seq, "applied", done)
        return self._reject(session, seq, message_id, f"kind {message.kind.value} is not accepted")

    def _reject(
        self, session: Session, seq: int, message_id: str, reason: str,
        content: dict[str, Any] | None = None,
    ) -> Handled:  # fmt: skip
        # The reason may quote the row's own values; an oversize field must not come back
        # as an oversize note in the inbox (or log line).
        reason = _short(reason, MAX_REASON_CHARS)
        action = str((content or {}).get("action", "row"))[:40]
        log.warning("session %s: rejected outbound seq %s: %s", session.id, seq, reason)
        if self.store.mark_delivered(session.id, seq, message_id, "action", "rejected", reason):
            self.store.record_audit(
                f"agent:{session.id}", "outbound.reject", session.id, message_id[:200],
                {"seq": seq, "action": action, "reason": reason[:500]},
            )  # fmt: skip
            self.store.post_system_note(
                session.id, f"Your {action} request (seq {seq}) was rejected: {reason}"
            )
        return Handled(seq, "rejected", reason)


def _short(exc: Exception | str, limit: int = 200) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"[:limit]
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"
