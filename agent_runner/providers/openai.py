"""The ``openai`` provider: Chat Completions with function calling, through the official SDK.

Chat Completions is the surface OpenAI, Ollama, vLLM, LM Studio and OpenRouter all serve
with tools, so ``base_url`` picks the server and the rest is the same. The session's MCP
tools are offered as functions; the shared tool loop (:mod:`agent_runner.toolloop`)
runs the calls. With ``stream = true`` in the profile each answer is streamed (chunks
with text and tool-call deltas, the usage in a last chunk) and put together here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from agent_runner.gatewayed import (
    GATEWAY_URL,
    PLACEHOLDER_KEY,
    gateway_transport,
    refusal,
    rows_header,
)
from agent_runner.mcp_client import ToolOutcome, ToolSpec
from agent_runner.provider import Batch, ProviderResult
from agent_runner.toolloop import ModelTurn, ToolUse, answer_batch, api_key, decode_arguments
from cronbox_shared.errors import ProviderError
from cronbox_shared.settings import RunnerSettings

# Servers such as Ollama take any key but the SDK insists on one.
NO_KEY = "no-key"


def function_tool(tool: ToolSpec) -> dict[str, Any]:
    """An MCP tool as a Chat Completions function tool."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.input_schema,
        },
    }


def api_error(exc: openai.OpenAIError, base_url: str) -> ProviderError:
    """The SDK's error as one sentence: the server's own message where it sent one."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        if (reason := refusal(body)) is not None:
            return ProviderError(reason)
        detail = body.get("message") if isinstance(body, dict) else None
        text = str(detail or exc.message).strip().splitlines()[0][:500]
        return ProviderError(f"the model API answered {exc.status_code}: {text}")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"the model API at {base_url} could not be reached: {exc}")
    return ProviderError(f"the model API call failed: {exc}")


@dataclass
class Answer:
    """One model answer, whether it came whole or streamed: text, calls, usage."""

    text: str = ""
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    """Each function call as its id, name and JSON arguments (as the model wrote them)."""
    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def of(cls, response: ChatCompletion) -> Answer:
        if not response.choices:
            raise ProviderError("the model API answered with no choices")
        message = response.choices[0].message
        usage = response.usage
        return cls(
            text=message.content or "",
            calls=[
                (call.id, call.function.name, call.function.arguments)
                for call in message.tool_calls or []
                if call.type == "function"
            ],
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        )


class ChatCompletions:
    """The tool loop's dialect for Chat Completions."""

    def __init__(self, client: openai.AsyncOpenAI, settings: RunnerSettings) -> None:
        self.client = client
        self.settings = settings

    name = "openai"

    def opening(self, prompt: str, earlier: Sequence[Any] = ()) -> list[Any]:
        messages: list[Any] = []
        if self.settings.system:
            messages.append({"role": "system", "content": self.settings.system})
        return [*messages, *earlier, {"role": "user", "content": prompt}]

    async def call(self, messages: Sequence[Any], tools: Sequence[ToolSpec]) -> ModelTurn:
        # Some servers refuse an empty tools list: offer none then.
        offered: dict[str, Any] = {"tools": [function_tool(t) for t in tools]} if tools else {}
        request = {"model": self.settings.model, "messages": list(messages),
                   "max_tokens": self.settings.max_tokens, **offered}  # fmt: skip
        try:
            if self.settings.stream:
                answer = await self._streamed(request)
            else:
                answer = Answer.of(await self.client.chat.completions.create(**request))
        except openai.OpenAIError as exc:
            raise api_error(exc, str(self.client.base_url)) from None
        calls = tuple(
            ToolUse(id, name, decode_arguments(arguments)) for id, name, arguments in answer.calls
        )
        kept: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if calls:
            kept["tool_calls"] = [
                {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
                for id, name, arguments in answer.calls
            ]
        return ModelTurn(
            text=answer.text, calls=calls, message=kept,
            input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
        )  # fmt: skip

    async def _streamed(self, request: dict[str, Any]) -> Answer:
        """The answer put together from its chunks; the usage comes in a last chunk."""
        answer = Answer()
        calls: dict[int, list[str]] = {}  # by the delta's index: id, name, arguments
        stream = await self.client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    answer.input_tokens = chunk.usage.prompt_tokens
                    answer.output_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                answer.text += delta.content or ""
                for part in delta.tool_calls or []:
                    slot = calls.setdefault(part.index, ["", "", ""])
                    slot[0] = part.id or slot[0]
                    if part.function is not None:
                        slot[1] += part.function.name or ""
                        slot[2] += part.function.arguments or ""
        answer.calls = [(id, name, arguments) for id, name, arguments in calls.values()]
        if not answer.text and not answer.calls and answer.output_tokens == 0:
            raise ProviderError("the model API's stream ended with no answer")
        return answer

    def results(self, calls: Sequence[tuple[ToolUse, ToolOutcome]]) -> list[Any]:
        return [
            {
                "role": "tool",
                "tool_call_id": use.id,
                "content": f"error: {outcome.text}" if outcome.is_error else outcome.text,
            }
            for use, outcome in calls
        ]


class OpenAIProvider:
    """Answers each batch with one Chat Completions tool loop."""

    def __init__(self, settings: RunnerSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.key = api_key(settings.api_key_env, os.environ if environ is None else environ)
        self.transport = gateway_transport(settings)

    def client(self, row_ids: Sequence[str] = ()) -> openai.AsyncOpenAI:
        if self.transport is not None:
            # Through the host's gateway, which adds the key and knows the real URL.
            return openai.AsyncOpenAI(
                api_key=PLACEHOLDER_KEY,
                base_url=GATEWAY_URL,
                timeout=self.settings.command_timeout,
                default_headers=rows_header(row_ids),
                http_client=openai.DefaultAsyncHttpxClient(transport=self.transport),
            )
        return openai.AsyncOpenAI(
            api_key=self.key or NO_KEY,
            base_url=self.settings.base_url or None,
            timeout=self.settings.command_timeout,
        )

    async def run(self, batch: Batch) -> ProviderResult:
        async with self.client(batch.ids) as client:
            dialect = ChatCompletions(client, self.settings)
            return await answer_batch(dialect, batch, self.settings)

    async def ask(self, prompt: str) -> str:
        """One call without tools (``cronbox agent check``): the model's text."""
        async with self.client() as client:
            dialect = ChatCompletions(client, self.settings)
            turn = await dialect.call(dialect.opening(prompt), ())
        return turn.text.strip()
