"""The tool loop shared by the API providers: offer the MCP tools, run the model's calls
through them, feed the results back, stop on an answer or at ``max_turns``.

A provider supplies a :class:`Dialect`, its vendor's way of calling the model and of
writing tool calls and results into the conversation; everything else is here, once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from agent_runner.history import Exchange, fit, flatten, remember
from agent_runner.mcp_client import Toolbox, ToolOutcome, ToolSpec, open_toolbox
from agent_runner.provider import Batch, ProviderResult, one_reply
from cronbox_shared.errors import ProviderError
from cronbox_shared.settings import RunnerSettings

log = logging.getLogger("agent_runner")


@dataclass(frozen=True)
class ToolUse:
    """One tool call of the model: its vendor id, tool name and decoded arguments.

    ``arguments`` is None when the model sent arguments that are not a JSON object;
    the model is told so as the call's result.
    """

    id: str
    name: str
    arguments: dict[str, Any] | None


@dataclass(frozen=True)
class ModelTurn:
    """What one model call answered: text, tool calls, and the message to keep."""

    text: str
    calls: tuple[ToolUse, ...]
    message: Any
    """The assistant message in the vendor's format, appended to the conversation."""
    input_tokens: int = 0
    output_tokens: int = 0


class Dialect(Protocol):
    """One vendor's model API, as the tool loop drives it.

    Implementers must ensure ``call`` raises ProviderError with the vendor's error text
    (one sentence) when the API refuses or cannot be reached, and never retries a call
    the loop could see twice.
    """

    name: str
    """The vendor's message format: exchanges are kept and loaded under this name."""

    def opening(self, prompt: str, earlier: Sequence[Any] = ()) -> list[Any]:
        """The messages of a call: the system prompt where the vendor wants it in the
        list, then ``earlier`` (the history, already in the vendor's format), then
        ``prompt`` as the user's message, always last."""
        ...

    async def call(self, messages: Sequence[Any], tools: Sequence[ToolSpec]) -> ModelTurn:
        """One model call with ``tools`` offered."""
        ...

    def results(self, calls: Sequence[tuple[ToolUse, ToolOutcome]]) -> list[Any]:
        """The messages that hand the tool results back to the model."""
        ...


@dataclass
class LoopResult:
    """The model's final answer and the tokens every call of the loop used."""

    answer: str
    turns: int
    input_tokens: int = 0
    output_tokens: int = 0
    messages: list[Any] = field(default_factory=list)
    exchange: list[Any] = field(default_factory=list)
    """This wake's part of ``messages``: the prompt and everything after it."""


def decode_arguments(raw: str | None) -> dict[str, Any] | None:
    """A tool call's JSON arguments as an object; None when they are not one."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def max_turns_error(max_turns: int) -> str:
    return (
        f"the model was still calling tools after {max_turns} model call(s) (max_turns); "
        "raise max_turns in the agent profile or ask for less in one message"
    )


async def run_tool_loop(
    dialect: Dialect, toolbox: Toolbox, prompt: str, max_turns: int, earlier: Sequence[Any] = ()
) -> LoopResult:
    """Let the model answer ``prompt`` with the toolbox's tools, ``max_turns`` calls at most,
    after the ``earlier`` conversation.

    A tool call that fails (a bad cron, unknown tool, arguments that are not an object)
    goes back to the model as an error result, so it can correct itself. Raises
    ProviderError when the model is still calling tools after ``max_turns`` calls.
    """
    messages = dialect.opening(prompt, earlier)
    start = len(messages) - 1  # the prompt: this wake's exchange begins there
    result = LoopResult(answer="", turns=0, messages=messages)
    known = {tool.name for tool in toolbox.tools}
    while result.turns < max_turns:
        turn = await dialect.call(messages, toolbox.tools)
        result.turns += 1
        result.input_tokens += turn.input_tokens
        result.output_tokens += turn.output_tokens
        messages.append(turn.message)
        if not turn.calls:
            result.answer = turn.text.strip()
            result.exchange = messages[start:]
            return result
        outcomes = []
        for use in turn.calls:
            if use.name not in known:
                outcome = ToolOutcome(
                    f"there is no tool {use.name}; use one of: {', '.join(sorted(known))}",
                    is_error=True,
                )
            elif use.arguments is None:
                outcome = ToolOutcome(
                    f"the arguments of {use.name} must be a JSON object", is_error=True
                )
            else:
                outcome = await toolbox.call(use.name, use.arguments)
            outcomes.append((use, outcome))
        messages.extend(dialect.results(outcomes))
    raise ProviderError(max_turns_error(max_turns))


def api_key(api_key_env: str, environ: Mapping[str, str]) -> str | None:
    """The model's key from the runner's environment (a secret of its profile), if any."""
    return (environ.get(api_key_env) or "").strip() or None if api_key_env else None


async def answer_batch(dialect: Dialect, batch: Batch, settings: RunnerSettings) -> ProviderResult:
    """Run the tool loop over the batch's prompt with the session's MCP tools: one reply.

    The session's history (what fits in ``history_tokens``) goes before the prompt, and
    this wake's exchange is handed back to be remembered, unless the batch is isolated.
    """
    store = batch.context.conversation
    budget = settings.history_tokens
    keeps = store is not None and budget > 0 and not batch.isolated
    earlier = fit(await store.load_history(dialect.name), budget) if keeps and store else []
    async with open_toolbox(batch.context) as toolbox:
        result = await run_tool_loop(
            dialect, toolbox, batch.prompt, settings.max_turns, flatten(earlier)
        )
    log.info(
        "model answered in %d call(s), %d input / %d output tokens (%d earlier exchange(s))",
        result.turns, result.input_tokens, result.output_tokens, len(earlier),
    )  # fmt: skip
    answered = one_reply(batch, result.answer)
    if not keeps or not result.answer:
        # An empty answer is not kept: some vendors refuse an empty assistant turn.
        return answered
    exchange = Exchange(dialect.name, tuple(result.exchange))
    return replace(answered, remember=remember(earlier, exchange, budget))
