"""``cronbox chat SESSION``: a conversation with a session's agent in a terminal.

Each line read is sent as a chat message; every reply the session's runner writes from
then on (to those lines, and to tasks that fire meanwhile) is printed as it arrives,
escaped as the console channel escapes it, so a reply cannot move the cursor or
recolour the terminal. End of input (Ctrl-D) waits for the answers still owed, up to
the timeout, and ends the chat.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from cronbox_shared.errors import CronboxError, InvalidInput, OutboxUnreadable
from cronbox_shared.models import MessageStatus
from host.delivery import escaped
from host.service import Cronbox
from host.store.records import LogEntry, Session

EOF = None
WINDOW = 200
"""Newest conversation entries looked at per poll: far more replies than can arrive
between two polls."""


@dataclass(frozen=True)
class Heard:
    """A reply of the agent (to ``in_reply_to``), or, ``failed``, the error of a message
    it could not answer."""

    text: str
    in_reply_to: str | None
    failed: bool = False

    def line(self) -> str:
        """How it prints: ``agent: <text>``, control characters escaped as the console
        channel escapes them."""
        if self.failed:
            return f"agent could not answer: {escaped(self.text)}"
        return f"agent: {escaped(self.text)}"

    def record(self) -> dict[str, str | None]:
        """The ``--json`` record: ``{"reply", "in_reply_to"}`` or ``{"error", "message"}``."""
        if self.failed:
            return {"error": self.text, "message": self.in_reply_to}
        return {"reply": self.text, "in_reply_to": self.in_reply_to}


@dataclass
class Chat:
    """One terminal conversation: what was sent, and which replies were printed."""

    store: Cronbox
    session: Session
    printed: set[str] = field(default_factory=set)
    owed: set[str] = field(default_factory=set)
    """Messages sent whose answer has not come yet."""

    def __post_init__(self) -> None:
        # Replies written before the chat started are history, not news.
        self.printed = {e.id for e in self._replies()}

    def send(self, line: str) -> None:
        """Send one line; a blank one is skipped. Raises InvalidInput for a bad message."""
        if line.strip():
            self.owed.add(self.store.send_message(self.session.id, line).id)

    def news(self) -> list[Heard]:
        """The replies to print now, oldest first, then the messages that failed."""
        # Which answers came before the replies are read: a settled row's reply is in
        # the outbox by then (both are written in one transaction).
        answered = {m for m in self.owed if not self._live(m)}
        heard = []
        for entry in self._replies():
            if entry.id not in self.printed:
                self.printed.add(entry.id)
                heard.append(Heard(entry.text, entry.in_reply_to))
        for message_id in sorted(answered):
            row = self.store.message(self.session.id, message_id)
            if row.status is MessageStatus.FAILED:
                heard.append(Heard(row.error or "failed", message_id, failed=True))
        self.owed -= answered
        return heard

    def _replies(self) -> list[LogEntry]:
        try:
            entries = self.store.conversation(self.session.id, WINDOW)
        except OutboxUnreadable as exc:
            if exc.transient:  # the runner is writing: look again at the next poll
                return []
            raise
        return [e for e in entries if e.direction == "out"]

    def _live(self, message_id: str) -> bool:
        return self.store.message(self.session.id, message_id).status.live


def read_lines(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    """Put each line of ``stream`` on ``lines``, then EOF (runs in its own thread)."""
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(EOF)


def run_chat(
    chat: Chat,
    stream: TextIO,
    say: Callable[[Heard], None],
    complain: Callable[[str], None],
    *,
    wait: float,
    poll: float,
) -> bool:
    """Read ``stream`` until its end, sending each line and saying each reply; then wait
    up to ``wait`` seconds for the answers still owed. False when some never came."""
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(stream, lines), daemon=True).start()
    ended_at: float | None = None
    while True:
        try:
            line = lines.get(timeout=poll)
        except queue.Empty:
            line = ""
        if line is EOF:
            ended_at = time.monotonic()
        elif line:
            try:
                chat.send(line)
            except InvalidInput as exc:
                complain(str(exc))
        try:
            for reply in chat.news():
                say(reply)
        except CronboxError as exc:
            complain(str(exc))
            return False
        if ended_at is not None:
            if not chat.owed:
                return True
            if time.monotonic() - ended_at >= wait:
                return False
