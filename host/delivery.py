"""Delivery: replies go out through channels; agent actions are applied to the inbox.

Everything in ``outbound.db`` was written by an untrusted runner. Rows are taken in
strictly in seq order, each exactly once:

* a chat reply is validated, recorded with one delivery row per channel that serves its
  session, and sent; a channel that fails keeps its row ``pending`` with a backoff (and
  jitter) and is retried on later passes (it is ``failed`` after its last attempt), while
  the other channels are done. A per-session channel (the webhook) is ordered: a reply
  waits while an older one of its session is pending on it, so the receiver gets them in
  seq order; a send its circuit breaker holds back is put off without using an attempt;
* an agent action is validated completely and applied through the service layer, its
  receipt recorded in the same inbox transaction as its effect;
* a row that is invalid — a ``CronboxError`` or a validation error — is rejected,
  audited and explained to the agent.

Anything else (a transient ``database is locked``, a bug) rejects nothing: the row and
those after it stay for the next pass, and the error is logged once.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import anyio
from pydantic import ValidationError

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import (
    AgentAction,
    CancelTask,
    PauseTask,
    ResumeTask,
    ScheduleTask,
    UpdateTask,
    parse_action,
)
from cronbox_shared.errors import AlreadyHandled, CronboxError, Rejected, shown
from cronbox_shared.models import DeliveryStatus, MessageKind, OutboundMessage
from cronbox_shared.timeutil import fmt, parse_utc
from host.logs import session_fields
from host.metrics import Metrics
from host.service import Cronbox, Receipt, Rejection
from host.store.records import Session
from host.webhook import CircuitOpen
from host.writer import Writer, read

log = logging.getLogger("cronbox.delivery")

# A rejection quotes at most this much of its reason back to the agent.
MAX_REASON_CHARS = 500
# Rejections written in one transaction at most (a flood is rejected in batches).
REJECT_BATCH = 500
# Recorded for a reply when no channel is configured, so it is still taken in once.
NO_CHANNEL = "none"


class Channel(Protocol):
    """Where an agent's replies go.

    Implementers must ensure ``send`` either delivers the message or raises; the
    caller records the outcome per channel and retries a failed send later, so a
    channel records nothing itself and must tolerate being asked again.
    """

    name: str

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        """Deliver one reply."""
        ...


@runtime_checkable
class SessionChannel(Channel, Protocol):
    """A channel configured per session (the webhook), whose replies go out in order.

    Implementers must ensure ``serves`` is a cheap, pure check of the session's settings,
    and that ``send`` raises :class:`host.webhook.CircuitOpen` (making no request) while
    it holds sends back; the delivery then puts the reply off without using an attempt.
    """

    def serves(self, session: Session) -> bool:
        """Whether this session's replies go to this channel."""
        ...


def escaped(text: str) -> str:
    """``text`` with every control, format and line-separator character escaped
    (``\\x1b``, ``\\n``, ``\\u202e``), so a reply printed to a terminal or a log can
    neither send escape sequences nor forge a log line of its own."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _UNPRINTED:
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


_UNPRINTED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class ConsoleChannel:
    """Prints replies to the host's log (the terminal when run in the foreground), one
    line each, control characters escaped."""

    name = "console"
    records_first = True
    """Printing cannot fail, so the delivery is recorded before it (at most once)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("cronbox.reply")

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        self._log.info(
            "[%s] %s", escaped(session.name), escaped(text),
            extra=session_fields(session.name, session.id, message_id=message.id),
        )  # fmt: skip


@dataclass(frozen=True)
class ChannelRetry:
    """How a failed channel is retried: after ``base * 2**(attempts-1)`` (capped), less up
    to ``jitter`` of it at random so that many failed replies do not retry in lockstep;
    ``max_attempts`` attempts in all."""

    base: timedelta = timedelta(seconds=5)
    max_attempts: int = 8
    cap: timedelta = timedelta(minutes=10)
    jitter: float = 0.2
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def after(self, attempts: int, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None once they are used up."""
        if attempts >= self.max_attempts:
            return None
        backoff: timedelta = min(self.cap, self.base * 2 ** (attempts - 1))
        return now + backoff * (1 - self.jitter * self.rand())


@dataclass(frozen=True)
class Handled:
    """What became of one outbound row in this pass."""

    seq: int
    status: DeliveryStatus
    detail: str | None = None


def apply_action(app: Cronbox, session: Session, action: AgentAction, receipt: Receipt) -> str:
    """Apply one validated agent action to the inbox through the service layer.

    The service re-checks everything a request may hold (times, recurrence, sizes,
    limits, the task's state); the receipt is recorded in the same inbox transaction as
    the change. Returns a short description of what was done; raises a CronboxError
    subclass when the action cannot be applied.
    """
    actor = f"agent:{session.id}"
    match action:
        case ScheduleTask():
            view = app.schedule_task(session.id, action, actor=actor, receipt=receipt)
            return f"scheduled {view.series_id} for {view.next_run}"
        case UpdateTask():
            view = app.update_task(action, actor=actor, session_id=session.id, receipt=receipt)
            return f"updated {view.series_id}"
        case CancelTask():
            view = app.cancel_task(action.task_id, actor=actor, session_id=session.id,
                                   receipt=receipt)  # fmt: skip
        case PauseTask():
            view = app.pause_task(action.task_id, actor=actor, session_id=session.id,
                                  receipt=receipt)  # fmt: skip
        case ResumeTask():
            view = app.resume_task(action.task_id, actor=actor, session_id=session.id,
                                   receipt=receipt)  # fmt: skip
    return f"{action.action.value.removesuffix('_task')} {view.series_id}: now {view.status.value}"


class Delivery:
    """Handles one session's new outbound rows: replies to channels, actions to the inbox."""

    def __init__(
        self,
        app: Cronbox,
        channels: Sequence[Channel],
        writer: Writer | None = None,
        retry: ChannelRetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.channels = list(channels)
        self.writer = writer or Writer()
        self.retry = retry or ChannelRetry()
        self.metrics = metrics or Metrics()
        self._stuck: dict[tuple[str, int], str] = {}
        # Rejections queued to be written together, per session.
        self._rejected: dict[str, list[Rejection]] = {}
        # Rows refused without a receipt (no usable seq), so each is refused once.
        self._refused: set[tuple[str, str, str]] = set()
        # Sessions whose deliveries were all final when last looked at.
        self._nothing_pending: set[str] = set()
        # Sessions with deliveries still pending, and when the earliest is due.
        self.backlog: dict[str, datetime] = {}

    def stuck(self, session_id: str) -> bool:
        """Whether a row of this session is waiting for a failure that was not its own."""
        return any(sid == session_id for sid, _ in self._stuck)

    def pending(self, session_id: str) -> list[dict[str, Any]]:
        """Raw outbound rows not taken in yet (untrusted), oldest first."""
        return self.app.undelivered(session_id)

    async def deliver(self, session: Session, rows: Sequence[dict[str, Any]]) -> list[Handled]:
        """Take each raw row in, in order; never raises for a bad row.

        Stops at a row whose handling failed for a reason other than the row itself:
        that row and the rest wait for the next pass, so order and exactly-once hold.
        """
        try:
            return await self._deliver_rows(session, rows)
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush(session)

    async def _deliver_rows(
        self, session: Session, rows: Sequence[dict[str, Any]]
    ) -> list[Handled]:
        handled: list[Handled] = []
        last: int | None = None
        replies: list[tuple[OutboundMessage, str]] = []

        async def take_replies() -> bool:
            """Take in the replies read so far together; False when that failed now."""
            if not replies:
                return True
            batch = list(replies)
            replies.clear()
            try:
                handled.extend(await self._replies(session, batch))
            except Exception as exc:
                self._note_stuck(session, batch[0][0].seq, exc)
                return False
            for message, _ in batch:
                self._stuck.pop((session.id, message.seq), None)
            return True

        for raw in rows:
            seq = raw.get("seq")
            reply = _valid_reply(raw)
            if reply is not None and (last is None or reply[0].seq > last):
                # Consecutive replies go in one inbound transaction, not one each.
                last = reply[0].seq
                replies.append(reply)
                continue
            if not await take_replies():
                return handled
            if isinstance(seq, bool) or not isinstance(seq, int):
                # Only a runner that rebuilt its table can write one; it is never taken in.
                await self._refuse(session, raw, f"seq {shown(seq)} is not an integer")
                continue
            if last is not None and seq <= last:
                await self._refuse(session, raw, f"seq {seq} repeats an earlier row's seq")
                continue
            last = seq
            if seq % 2 == 0:
                handled.append(await self._reject(
                    session, seq, str(raw.get("id")), f"seq {seq} is even; outbound seqs are odd"
                ))  # fmt: skip
                continue
            try:
                outcome = await self._one(session, seq, raw)
            except Exception as exc:
                self._note_stuck(session, seq, exc)
                break
            self._stuck.pop((session.id, seq), None)
            if outcome is not None:
                handled.append(outcome)
        await take_replies()
        return handled

    async def refuse_strays(self, session: Session) -> int:
        """Reject (and audit) rows written at or below the last seq taken in, which the
        in-order read never sees; each once per host. Returns how many were refused."""
        rows = await read(self.app.files.strays, session.id)
        for raw in rows:
            await self._refuse(
                session, raw, f"seq {shown(raw.get('seq'))} is not above the seqs already taken in"
            )
        return len(rows)

    async def _refuse(self, session: Session, raw: dict[str, Any], reason: str) -> None:
        """Reject a row whose seq cannot be recorded as taken in: audited, explained."""
        key = (session.id, shown(raw.get("seq"), 60), shown(raw.get("id"), 200))
        if key in self._refused:
            return
        self._refused.add(key)
        log.warning("session %s: rejected outbound row %s: %s", session.name, key[2], reason)
        await self.writer(
            self.app.reject_outbound, session, 0, shown(raw.get("id"), 200), reason, "row",
            record=False,
        )  # fmt: skip

    def channels_for(self, session: Session) -> list[Channel]:
        """The channels that serve this session (every plain one; per-session ones it set)."""
        return [c for c in self.channels if not isinstance(c, SessionChannel) or c.serves(session)]

    async def retry_due(self, session: Session) -> int:
        """Send again the replies whose failed channels are due for another attempt.

        A session known to have nothing pending is not looked at again until one of its
        channels fails, nor one whose earliest pending delivery is not due yet, so a live
        runner's passes do not open its inbox for this. An ordered channel sends its
        oldest pending reply first and stops at a failure, so order holds.
        """
        if not self.channels or session.id in self._nothing_pending:
            return 0
        now_at = self.app.now()
        due_at = self.backlog.get(session.id)
        if due_at is not None and due_at > now_at:
            return 0
        pending = await read(self.app.files.pending_deliveries, session.id)
        by_name = {c.name: c for c in self.channels}
        pending = [d for d in pending if d.channel in by_name]
        if not pending:
            self._nothing_pending.add(session.id)
            self.backlog.pop(session.id, None)
            return 0
        now = fmt(now_at)
        if any(isinstance(by_name[d.channel], SessionChannel) for d in pending):
            session = await read(self.app.get_session, session.id)  # its webhook as it is now
        retried: list[sdb.DeliveryRow] = []
        ordered: dict[str, list[sdb.DeliveryRow]] = {}
        for d in pending:
            if isinstance(by_name[d.channel], SessionChannel):
                ordered.setdefault(d.channel, []).append(d)
            elif d.next_attempt_at is not None and d.next_attempt_at <= now:
                retried.append(d)
        heads = [rows[0] for rows in ordered.values()]
        queue_due = [h for h in heads if h.next_attempt_at is None or h.next_attempt_at <= now]
        wanted = {d.seq for d in retried} | {d.seq for c in queue_due for d in ordered[c.channel]}
        messages = await self._messages(session, sorted(wanted)) if wanted else {}
        sent = 0
        for item in retried:
            message = messages.get(item.seq)
            if message is not None:
                await self._send(session, message, by_name[item.channel], item.attempts)
                sent += 1
        for head in queue_due:
            for item in ordered[head.channel]:
                message = messages.get(item.seq)
                if message is None:
                    continue
                sent += 1
                if not await self._send(session, message, by_name[item.channel], item.attempts):
                    break
        await self.note_backlog(session)
        return sent

    async def announce(self, session: Session) -> None:
        """Send the host's new notes for the session (approval requests) on its channels."""
        self._nothing_pending.discard(session.id)
        self.backlog.pop(session.id, None)
        await self.retry_due(session)

    async def _messages(self, session: Session, seqs: list[int]) -> dict[int, OutboundMessage]:
        # A negative seq is a note of the host's own (an inbox row, its seq negated).
        notes = await read(self.app.files.notices, session.id, [-s for s in seqs if s < 0])
        messages = {
            -note.seq: OutboundMessage(
                id=note.id,
                seq=-note.seq,
                kind=MessageKind.SYSTEM,
                created_at=note.created_at,
                in_reply_to=None,
                content={"text": note.prompt},
            )
            for note in notes
        }
        raw = await read(self.app.files.outbound_rows, session.id, [s for s in seqs if s > 0])
        for row in raw:
            try:
                messages[int(row["seq"])] = sdb.outbound_from_row(row)
            except (ValueError, ValidationError):
                continue
        return messages

    async def note_backlog(self, session: Session) -> None:
        """Remember when the session's earliest pending delivery is due (or that none is)."""
        names = {c.name for c in self.channels}
        pending = [
            d for d in await read(self.app.files.pending_deliveries, session.id)
            if d.channel in names
        ]  # fmt: skip
        if not pending:
            self.backlog.pop(session.id, None)
            self._nothing_pending.add(session.id)
            return
        self._nothing_pending.discard(session.id)
        times = [d.next_attempt_at for d in pending if d.next_attempt_at is not None]
        self.backlog[session.id] = min(parse_utc(t) for t in times) if times else self.app.now()

    # --- one row -----------------------------------------------------------------------

    async def _one(self, session: Session, seq: int, raw: dict[str, Any]) -> Handled | None:
        message_id = str(raw.get("id"))
        try:
            message = sdb.outbound_from_row(raw)
        except (ValueError, ValidationError) as exc:
            return await self._reject(session, seq, message_id, f"malformed row: {_short(exc)}")
        if message.kind is MessageKind.CHAT:
            return await self._reply(session, seq, message)
        if message.kind is MessageKind.SYSTEM:
            return await self._action(session, seq, message)
        return await self._reject(
            session, seq, message_id, f"kind {message.kind.value} is not accepted"
        )

    async def _reply(self, session: Session, seq: int, message: OutboundMessage) -> Handled | None:
        try:
            text = sdb.chat_text(message)
        except Rejected as exc:
            return await self._reject(session, seq, message.id, str(exc))
        handled = await self._replies(session, [(message, text)])
        return handled[0] if handled else None

    async def _replies(
        self, session: Session, replies: Sequence[tuple[OutboundMessage, str]]
    ) -> list[Handled]:
        """Take consecutive valid replies in with one inbound transaction (a channel that
        records before it sends is recorded delivered in it), then send each in order.

        A reply taken in before (a retried pass) is not sent again.
        """
        if any(isinstance(c, SessionChannel) for c in self.channels):
            session = await read(self.app.get_session, session.id)  # its webhook as it is now
        channels = self.channels_for(session)
        names = tuple(c.name for c in channels)
        status = DeliveryStatus.PENDING if names else DeliveryStatus.DELIVERED
        first = tuple(c.name for c in channels if getattr(c, "records_first", False))
        receipts = [
            Receipt(m.seq, m.id, channels=names or (NO_CHANNEL,), status=status) for m, _ in replies
        ]
        ordered = [c for c in channels if isinstance(c, SessionChannel)]
        seq = replies[0][0].seq
        behind = await self._queued_channels(session, seq, ordered) if ordered else set()
        await self._flush(session)  # older rejections are written first
        taken = set(await self.writer(self.app.accept_replies, session.id, receipts, first))
        # Pending from here until each channel's send is recorded: a pass cancelled in
        # between (the host shutting down) leaves it to retry_due, which must look.
        self._nothing_pending.discard(session.id)
        handled = []
        for message, text in replies:
            if message.seq not in taken:
                continue
            sent = []
            for channel in channels:
                if channel.name in first:
                    self.metrics.delivery(channel.name, "delivered")
                    await channel.send(session, message, text)
                    sent.append(True)
                elif channel.name in behind:
                    sent.append(False)  # waits for the older replies; retry_due sends it in turn
                else:
                    ok = await self._send(session, message, channel, 0, text)
                    if not ok and isinstance(channel, SessionChannel):
                        behind.add(channel.name)  # the later replies wait behind this one
                    sent.append(ok)
            done = DeliveryStatus.DELIVERED if all(sent) else DeliveryStatus.PENDING
            handled.append(Handled(message.seq, done))
        if any(h.status is not DeliveryStatus.DELIVERED for h in handled):
            await self.note_backlog(session)
        return handled

    async def _queued_channels(
        self, session: Session, seq: int, channels: Sequence[Channel]
    ) -> set[str]:
        """The ordered channels on which an older reply of the session is still pending."""
        names = {c.name for c in channels}
        pending = await read(self.app.files.pending_deliveries, session.id)
        return {d.channel for d in pending if d.channel in names and d.seq < seq}

    async def _send(
        self, session: Session, message: OutboundMessage, channel: Channel, attempts: int,
        text: str | None = None,
    ) -> bool:  # fmt: skip
        """Send a reply on one channel and record the attempt; whether it was delivered.

        A channel that cannot fail (the console) is recorded delivered first: a crash
        between the two then loses one printed line instead of printing it twice.
        """
        if getattr(channel, "records_first", False):
            self.metrics.delivery(channel.name, "delivered")
            await self.writer(
                self.app.record_attempt, session.id, message.seq, channel.name,
                DeliveryStatus.DELIVERED, None, None,
            )  # fmt: skip
            await channel.send(session, message, text or sdb.chat_text(message))
            return True
        try:
            await channel.send(session, message, text or sdb.chat_text(message))
        except CircuitOpen as exc:
            # No request was made: put it off until the circuit lets a probe through.
            self.metrics.delivery(channel.name, "held")
            self._nothing_pending.discard(session.id)
            await self.writer(
                self.app.defer_delivery, session.id, message.seq, channel.name, exc.until, str(exc)
            )
            return False
        except Exception as exc:  # a channel's failure is recorded, never our crash
            attempt = attempts + 1
            nxt = self.retry.after(attempt, self.app.now())
            status = DeliveryStatus.PENDING if nxt else DeliveryStatus.FAILED
            self._nothing_pending.discard(session.id)
            self.metrics.delivery(channel.name, "retry" if nxt else "failed")
            log.warning(
                "session %s: channel %s failed on reply seq %d (attempt %d%s): %s",
                session.name, channel.name, message.seq, attempt,
                "" if nxt else ", giving up", exc,
            )  # fmt: skip
            await self.writer(
                self.app.record_attempt, session.id, message.seq, channel.name, status, nxt,
                _short(str(exc) or type(exc).__name__, 2000),
            )  # fmt: skip
            return False
        self.metrics.delivery(channel.name, "delivered")
        await self.writer(
            self.app.record_attempt, session.id, message.seq, channel.name,
            DeliveryStatus.DELIVERED, None, None,
        )  # fmt: skip
        return True

    async def _action(self, session: Session, seq: int, message: OutboundMessage) -> Handled | None:
        receipt = Receipt(seq, message.id, asked_at=_instant(message.created_at))
        try:
            action = parse_action(message.content)
            await self._flush(session)  # older rejections are written first
            done = await self.writer(apply_action, self.app, session, action, receipt)
        except AlreadyHandled:
            return None
        except (CronboxError, ValidationError) as exc:
            return await self._reject(session, seq, message.id, _short(exc, 10_000),
                                      message.content)  # fmt: skip
        log.info(
            "session %s: agent action applied: %s", session.name, done,
            extra=session_fields(session.name, session.id),
        )  # fmt: skip
        return Handled(seq, DeliveryStatus.APPLIED, done)

    async def _reject(
        self, session: Session, seq: int, message_id: str, reason: str,
        content: dict[str, Any] | None = None,
    ) -> Handled:  # fmt: skip
        """Reject a row: queued, and written with the rows rejected next to it in one
        transaction (:meth:`_flush`) before anything else of the session is written."""
        # The reason may quote the row's own values; an oversize field must not come back
        # as an oversize note in the inbox (or log line).
        reason = _short(reason, MAX_REASON_CHARS)
        action = str((content or {}).get("action", "row"))[:40]
        self._rejected.setdefault(session.id, []).append(Rejection(seq, message_id, reason, action))
        if len(self._rejected[session.id]) >= REJECT_BATCH:
            await self._flush(session)
        return Handled(seq, DeliveryStatus.REJECTED, reason)

    async def _flush(self, session: Session) -> None:
        """Write the session's queued rejections (one transaction, one log line)."""
        queued = self._rejected.pop(session.id, [])
        if not queued:
            return
        await self.writer(self.app.reject_outbound_many, session, queued)
        first = queued[0]
        if len(queued) == 1:
            log.warning(
                "session %s: rejected outbound seq %s: %s", session.name, first.seq, first.reason
            )
        else:
            log.warning(
                "session %s: rejected %d outbound rows (seq %s to %s); the first: %s",
                session.name, len(queued), first.seq, queued[-1].seq, first.reason,
            )  # fmt: skip

    def _note_stuck(self, session: Session, seq: int, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if self._stuck.get((session.id, seq)) != text:
            self._stuck[(session.id, seq)] = text
            log.error(
                "session %s: outbound seq %d could not be handled now, will retry: %s",
                session.name, seq, text,
            )  # fmt: skip


def _valid_reply(raw: dict[str, Any]) -> tuple[OutboundMessage, str] | None:
    """A raw row that is a valid chat reply with an odd integer seq, with its text; None
    for any other row (handled one at a time, and rejected when invalid)."""
    seq = raw.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq % 2 == 0:
        return None
    try:
        message = sdb.outbound_from_row(raw)
        if message.kind is not MessageKind.CHAT:
            return None
        return message, sdb.chat_text(message)
    except (ValueError, ValidationError, Rejected):
        return None


def _short(exc: Exception | str, limit: int = 200) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"[:limit]
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _instant(text: str) -> datetime | None:
    """An untrusted timestamp as an instant; None when it is not one."""
    try:
        return parse_utc(text)
    except ValueError:
        return None
