"""The ``claude-code`` provider: Claude Code, through the Claude Agent SDK.

Each batch is one Claude Code query in the session's workspace, with the session's MCP
server (``python -m mcp_tools``, the session's settings in its environment) configured
as ``cronbox``, its six task tools allowed and, beyond them, only the built-in tools the
profile's ``allowed_tools`` names: nobody is there to approve anything else. Claude
Code keeps its own conversation: its session id is stored in the runner's state and
resumed at the next wake (not by an isolated task, which starts afresh and leaves the
stored id alone). Its files live in the workspace's ``.claude-code`` directory, so a
new container resumes what the last one said.

With the host's model gateway, the CLI (which speaks TCP only) reaches it through a
loopback relay to the gateway socket; the key stays in the host.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKError, ResultMessage, query
from claude_agent_sdk.types import McpServerConfig

from agent_runner.gatewayed import PLACEHOLDER_KEY, gateway_socket, loopback_relay
from agent_runner.mcp_client import server_parameters
from agent_runner.provider import Batch, ProviderResult, SessionContext, one_reply
from agent_runner.toolloop import api_key
from cronbox_shared.errors import ProviderError
from cronbox_shared.outbox import WORKSPACE
from cronbox_shared.settings import RunnerSettings
from mcp_tools.tasks import TOOL_NAMES

SERVER_NAME = "cronbox"
SESSION_KEY = "claude-code.session"
"""The runner-state key of Claude Code's session id."""
CONFIG_DIR = ".claude-code"
"""Claude Code's own files (its sessions among them), inside the workspace."""


def error_text(result: ResultMessage) -> str:
    """A failed query's reason, one line."""
    text = (result.result or result.subtype or "").strip() or "the query failed"
    return text.splitlines()[0][:500]


def mcp_tool_names() -> list[str]:
    """The session's task tools as Claude Code names them."""
    return [f"mcp__{SERVER_NAME}__{name}" for name in TOOL_NAMES]


def build_options(
    settings: RunnerSettings,
    context: SessionContext,
    *,
    base_url: str,
    key: str | None,
    resume: str | None,
    environ: Mapping[str, str],
    with_tools: bool = True,
) -> ClaudeAgentOptions:
    """The Claude Agent SDK options for one query of ``context``'s session.

    ``base_url`` and ``key`` are how the CLI reaches the model (the gateway's relay and a
    placeholder, or the profile's own); ``resume`` is the stored session id, if any.
    Every secret of the runner is blanked in the CLI's environment (the SDK passes its
    own environment on), except the model's key when it is the profile's own.
    ``with_tools`` False leaves the session's MCP server out (a connection check).
    """
    servers: dict[str, McpServerConfig] = {}
    if with_tools:
        server = server_parameters(context, environ)
        servers[SERVER_NAME] = {
            "type": "stdio", "command": server.command, "args": list(server.args),
            "env": dict(server.env or {}),
        }  # fmt: skip
    env = {name: "" for name in settings.secret_names}
    env |= {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": key or PLACEHOLDER_KEY,
        "CLAUDE_CONFIG_DIR": str(context.workspace / CONFIG_DIR),
        # Offline by design: no telemetry, error reports or update checks.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    return ClaudeAgentOptions(
        mcp_servers=servers,
        strict_mcp_config=True,
        # The built-in tools the model is shown: only those it may use.
        tools=sorted({rule.split("(")[0] for rule in settings.allowed_tools}),
        allowed_tools=[*(mcp_tool_names() if with_tools else []), *settings.allowed_tools],
        permission_mode="dontAsk",
        system_prompt=settings.system or None,
        max_turns=settings.max_turns,
        model=settings.model or None,
        cwd=context.workspace,
        resume=resume,
        env=env,
        setting_sources=[],
    )  # fmt: skip


class ClaudeCodeProvider:
    """Answers each batch with one Claude Code query: one reply."""

    def __init__(self, settings: RunnerSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.key = api_key(settings.api_key_env, self.environ)

    @asynccontextmanager
    async def endpoint(self) -> AsyncIterator[tuple[str, str | None]]:
        """Where the CLI finds the model, and the key it sends."""
        if self.settings.gateway:
            async with loopback_relay(gateway_socket(self.settings)) as url:
                yield url, None
        else:
            yield self.settings.base_url or "https://api.anthropic.com", self.key

    async def run(self, batch: Batch) -> ProviderResult:
        state = batch.context.state
        keeps = state is not None and not batch.isolated
        resume = await state.get_state(SESSION_KEY) if keeps and state else None
        await anyio.Path(batch.context.workspace / CONFIG_DIR).mkdir(parents=True, exist_ok=True)
        async with self.endpoint() as (base_url, key):
            options = build_options(
                self.settings, batch.context, base_url=base_url, key=key, resume=resume,
                environ=self.environ,
            )  # fmt: skip
            result = await self.query(batch.prompt, options)
        if keeps and state and result.session_id:
            await state.set_state(SESSION_KEY, result.session_id)
        if result.is_error:
            raise ProviderError(f"claude-code: {error_text(result)}")
        return one_reply(batch, (result.result or "").strip())

    async def ask(self, prompt: str) -> str:
        """One query without the task tools (``cronbox agent check``): the answer's text."""
        directory = self.settings.session_dir
        await anyio.Path(directory / WORKSPACE / CONFIG_DIR).mkdir(parents=True, exist_ok=True)
        context = SessionContext(directory, self.settings.timezone, datetime.now(UTC))
        async with self.endpoint() as (base_url, key):
            options = build_options(
                self.settings, context, base_url=base_url, key=key, resume=None,
                environ=self.environ, with_tools=False,
            )  # fmt: skip
            result = await self.query(prompt, options)
        if result.is_error:
            raise ProviderError(f"claude-code: {error_text(result)}")
        return (result.result or "").strip()

    async def query(self, prompt: str, options: ClaudeAgentOptions) -> ResultMessage:
        """Run the query to its end; its result message."""
        result: ResultMessage | None = None
        try:
            async for message in query(prompt=prompt, options=options):
                if isinstance(message, ResultMessage):
                    result = message
        except ClaudeSDKError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ProviderError(f"claude-code could not run: {first[:500]}") from None
        if result is None:
            raise ProviderError("claude-code ended without a result")
        return result
