"""The ``scripted`` provider (tests only): runs the tool calls a message spells out.

A row whose text is JSON ``{"tool_calls": [{"name": "schedule_task", "arguments":
{...}}, ...]}`` makes the "agent" call those MCP tools, in order, through the same
wiring a model provider uses (:mod:`agent_runner.mcp_client`), and reply with each
result. Any other row gets an echo reply. So an end-to-end test can say "the agent
calls schedule_task with these arguments" without a model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_runner.mcp_client import Toolbox, open_toolbox
from agent_runner.provider import Batch, BatchItem, ProviderResult, RowOutcome
from agent_runner.providers.echo import echo_reply


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


def tool_calls(text: str) -> list[ToolCall] | None:
    """The calls a row's text asks for; None when it is not a tool-call script.

    Raises ValueError for a script whose calls are malformed.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "tool_calls" not in data:
        return None
    calls = data["tool_calls"]
    if not isinstance(calls, list):
        raise ValueError("tool_calls must be a list of {name, arguments} objects")
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError("each tool call needs a string name")
        arguments = call.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ValueError(f"the arguments of {call['name']} must be an object")
        parsed.append(ToolCall(call["name"], arguments))
    return parsed


class ScriptedProvider:
    """Executes scripted tool calls over the session's MCP server; echoes everything else."""

    async def run(self, batch: Batch) -> ProviderResult:
        outcomes: dict[str, RowOutcome] = {}
        scripted: list[tuple[BatchItem, list[ToolCall]]] = []
        for item in batch.items:
            try:
                calls = tool_calls(item.message.prompt)
            except ValueError as exc:
                outcomes[item.message.id] = RowOutcome.failure(f"bad tool-call script: {exc}")
                continue
            if calls is None:
                outcomes[item.message.id] = RowOutcome.success(echo_reply(item))
            else:
                scripted.append((item, calls))
        if scripted:
            # One server for the whole batch, as a model provider would hold it.
            async with open_toolbox(batch.context) as toolbox:
                for item, calls in scripted:
                    outcomes[item.message.id] = RowOutcome.success(await _run(toolbox, calls))
        return ProviderResult(outcomes)


async def _run(toolbox: Toolbox, calls: Sequence[ToolCall]) -> str:
    lines = []
    for call in calls:
        outcome = await toolbox.call(call.name, call.arguments)
        flag = " [error]" if outcome.is_error else ""
        lines.append(f"{call.name}{flag}: {outcome.text}")
    return "\n".join(lines) if lines else "no tool calls"
