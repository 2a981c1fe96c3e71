"""Rendering a batch of rows into the text the agent reads.

Pure functions: the runner decides what is in a batch, these only say how it reads.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cronbox_shared.rows import InboxRow, MessageKind


def render_context(timezone: str, local_time: datetime) -> str:
    """The line every prompt starts with, e.g.
    ``Timezone: Europe/Berlin. Local time: 2026-01-15 09:00 (Thursday).``"""
    return f"Timezone: {timezone}. Local time: {local_time:%Y-%m-%d %H:%M} ({local_time:%A})."


def render_data(data: Any) -> str:
    """A gate script's data as compact, readable JSON."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def render_row(message: InboxRow, *, gated: bool = False, gate_data: Any = None) -> str:
    """One row as the agent reads it.

    A chat message is ``[chat from <sender>] <text>``; a task is ``[scheduled task
    <series id>] <prompt>`` followed, when its gate script ran, by ``Script data:
    <json>``; a system note is ``[note from <sender>] <text>``.
    """
    sender = str(message.content.get("sender") or "user")
    if message.kind is MessageKind.TASK:
        text = f"[scheduled task {message.series_id or message.id}] {message.prompt}"
        if gated:
            text += f"\nScript data: {render_data(gate_data)}"
        return text
    if message.kind is MessageKind.CHAT:
        return f"[chat from {sender}] {message.prompt}"
    return f"[note from {sender}] {message.prompt}"


def render_batch(context_line: str, row_texts: list[str]) -> str:
    """The whole prompt: the context line, then each row, separated by blank lines."""
    return "\n\n".join([context_line, *row_texts])
