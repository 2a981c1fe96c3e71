"""The ``anthropic`` provider: the Messages API with tool use, through the official SDK.

The session's MCP tools are offered as tools; the shared tool loop
(:mod:`agent_runner.toolloop`) runs each ``tool_use`` block through MCP and hands the
``tool_result`` back until the model answers or ``max_turns`` is reached. With
``stream = true`` in the profile each answer is streamed (server-sent events).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic

from agent_runner.gatewayed import (
    GATEWAY_URL,
    PLACEHOLDER_KEY,
    gateway_transport,
    refusal,
    rows_header,
)
from agent_runner.mcp_client import ToolOutcome, ToolSpec
from agent_runner.provider import Batch, ProviderResult
from agent_runner.toolloop import ModelTurn, ToolUse, answer_batch, api_key
from cronbox_shared.errors import ProviderError
from cronbox_shared.settings import RunnerSettings


def messages_tool(tool: ToolSpec) -> dict[str, Any]:
    """An MCP tool as a Messages API tool."""
    return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}


def api_error(exc: anthropic.AnthropicError, base_url: str) -> ProviderError:
    """The SDK's error as one sentence: the server's own message where it sent one."""
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body
        error = body.get("error") if isinstance(body, dict) else None
        if (reason := refusal(error)) is not None:
            return ProviderError(reason)
        detail = error.get("message") if isinstance(error, dict) else None
        text = str(detail or exc.message).strip().splitlines()[0][:500]
        return ProviderError(f"the model API answered {exc.status_code}: {text}")
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError(f"the model API at {base_url} could not be reached: {exc}")
    return ProviderError(f"the model API call failed: {exc}")


class Messages:
    """The tool loop's dialect for the Messages API."""

    def __init__(self, client: anthropic.AsyncAnthropic, settings: RunnerSettings) -> None:
        self.client = client
        self.settings = settings

    name = "anthropic"

    def opening(self, prompt: str, earlier: Sequence[Any] = ()) -> list[Any]:
        return [*earlier, {"role": "user", "content": prompt}]

    async def call(self, messages: Sequence[Any], tools: Sequence[ToolSpec]) -> ModelTurn:
        extra: dict[str, Any] = {"system": self.settings.system} if self.settings.system else {}
        if tools:
            extra["tools"] = [messages_tool(t) for t in tools]
        request = {"model": self.settings.model, "max_tokens": self.settings.max_tokens,
                   "messages": list(messages), **extra}  # fmt: skip
        try:
            if self.settings.stream:
                # The SDK puts the streamed events together into the same Message.
                async with self.client.messages.stream(**request) as stream:
                    response = await stream.get_final_message()
            else:
                response = await self.client.messages.create(**request)
        except anthropic.AnthropicError as exc:
            raise api_error(exc, str(self.client.base_url)) from None
        texts: list[str] = []
        calls: list[ToolUse] = []
        content: list[dict[str, Any]] = []
        for block in response.content:
            if block.type == "text":
                texts.append(block.text)
                content.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                arguments = block.input if isinstance(block.input, dict) else None
                calls.append(ToolUse(block.id, block.name, arguments))
                content.append(
                    {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
                )
        return ModelTurn(
            text="\n".join(texts),
            calls=tuple(calls),
            message={"role": "assistant", "content": content},
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
        )

    def results(self, calls: Sequence[tuple[ToolUse, ToolOutcome]]) -> list[Any]:
        return [
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": outcome.text,
                        "is_error": outcome.is_error,
                    }
                    for use, outcome in calls
                ],
            }
        ]


class AnthropicProvider:
    """Answers each batch with one Messages API tool loop."""

    def __init__(self, settings: RunnerSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.key = api_key(settings.api_key_env, os.environ if environ is None else environ)
        self.transport = gateway_transport(settings)

    def client(self, row_ids: Sequence[str] = ()) -> anthropic.AsyncAnthropic:
        if self.transport is not None:
            # Through the host's gateway, which adds the key and knows the real URL.
            return anthropic.AsyncAnthropic(
                api_key=PLACEHOLDER_KEY,
                base_url=GATEWAY_URL,
                timeout=self.settings.command_timeout,
                default_headers=rows_header(row_ids),
                http_client=anthropic.DefaultAsyncHttpxClient(transport=self.transport),
            )
        return anthropic.AsyncAnthropic(
            api_key=self.key,
            base_url=self.settings.base_url or None,
            timeout=self.settings.command_timeout,
        )

    async def run(self, batch: Batch) -> ProviderResult:
        async with self.client(batch.ids) as client:
            dialect = Messages(client, self.settings)
            return await answer_batch(dialect, batch, self.settings)

    async def ask(self, prompt: str) -> str:
        """One call without tools (``cronbox agent check``): the model's text."""
        async with self.client() as client:
            dialect = Messages(client, self.settings)
            turn = await dialect.call(dialect.opening(prompt), ())
        return turn.text.strip()
