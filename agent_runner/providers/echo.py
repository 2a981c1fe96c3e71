"""The built-in offline provider: answers every row with an echo of it.

It needs no model and no API key, so the whole pipeline (schedule, wake, gate,
reply, delivery) can be seen working on a fresh machine.
"""

from __future__ import annotations

from agent_runner.prompt import render_data
from agent_runner.provider import Batch, BatchItem, ProviderResult, RowOutcome

ECHO_CHARS = 200


def echo_reply(item: BatchItem) -> str:
    """``echo: <first 200 chars of the prompt>``, plus ``[data: <json>]`` after a gate."""
    reply = f"echo: {item.message.prompt[:ECHO_CHARS]}"
    if item.gated:
        reply += f" [data: {render_data(item.gate_data)}]"
    return reply


class EchoProvider:
    """Replies ``echo: ...`` to each row of the batch."""

    async def run(self, batch: Batch) -> ProviderResult:
        return ProviderResult(
            {item.message.id: RowOutcome.success(echo_reply(item)) for item in batch.items}
        )
