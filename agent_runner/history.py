"""Conversation history of the API providers: what the model said in earlier wakes.

Each wake that the model answered is one :class:`Exchange`: the prompt it was given and
every message after it (tool calls, their results, the final answer), in its vendor's
format. The runner keeps exchanges in the session's outbox, written in the same
transaction as the reply, so an exchange is remembered exactly when its answer was
delivered. The next wake sends the newest exchanges that fit the profile's
``history_tokens`` before its own prompt.

Trimming works on whole exchanges, so a tool call is never separated from its result.
The oldest exchange that would not fit whole may still fit *condensed*: its prompt and
final answer alone, without the tool turns between them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CHARS_PER_TOKEN = 4
"""The usual rough figure for English text; no tokenizer is shipped for every vendor."""


def estimate_tokens(messages: Sequence[Any]) -> int:
    """About how many tokens ``messages`` cost as input (JSON characters / 4)."""
    return math.ceil(len(json.dumps(list(messages), ensure_ascii=False)) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Exchange:
    """One answered wake in a vendor's message format (``dialect``): the prompt first,
    the final answer last. ``id`` is its place in the store (None until stored)."""

    dialect: str
    messages: tuple[Any, ...]
    id: int | None = None

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.messages)

    def condensed(self) -> Exchange:
        """The prompt and the final answer alone: the tool turns between them dropped."""
        if len(self.messages) <= 2:
            return self
        return Exchange(self.dialect, (self.messages[0], self.messages[-1]), self.id)


def fit(exchanges: Sequence[Exchange], budget: int) -> list[Exchange]:
    """The newest of ``exchanges`` (oldest first) that fit in ``budget`` tokens, oldest
    first; the oldest of them condensed when only that way it fits."""
    kept: list[Exchange] = []
    left = budget
    for exchange in reversed(exchanges):
        if exchange.tokens <= left:
            kept.append(exchange)
            left -= exchange.tokens
            continue
        short = exchange.condensed()
        if short.tokens <= left:
            kept.append(short)
        break
    kept.reverse()
    return kept


def flatten(exchanges: Sequence[Exchange]) -> list[Any]:
    """The messages of ``exchanges``, in order, for the next model call."""
    return [message for exchange in exchanges for message in exchange.messages]


@dataclass(frozen=True)
class Remember:
    """What a settled batch leaves in the history: its own exchange, stored; every
    stored exchange older than ``keep_from`` (all of them when None), and every one of
    another dialect, forgotten."""

    exchange: Exchange
    keep_from: int | None


def remember(earlier: Sequence[Exchange], new: Exchange, budget: int) -> Remember:
    """Store ``new``; keep of ``earlier`` (the stored exchanges) only what could still
    be sent with it within ``budget``, so the history never grows without bound."""
    kept = [e.id for e in fit([*earlier, new], budget) if e.id is not None]
    return Remember(new, min(kept) if kept else None)


class ConversationStore(Protocol):
    """Where a session's exchanges are kept between wakes.

    Implementers must keep exchanges across runner restarts and never present them to the
    host as work. Writing one happens with the settlement of its batch
    (:meth:`agent_runner.mailbox.Mailbox.settle`).
    """

    async def load_history(self, dialect: str) -> list[Exchange]:
        """The stored exchanges of ``dialect``, oldest first (those of another dialect,
        left from a profile the session used before, are not returned)."""
        ...
