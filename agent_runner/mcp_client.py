"""The runner's side of the MCP tools: start ``python -m mcp_tools`` for a batch and call it.

A provider that gives its agent the task tools opens a :class:`Toolbox` for the batch's
session, hands ``toolbox.tools`` (name, description, JSON schema) to its model and runs
each tool call the model makes through :meth:`Toolbox.call`. The server is a stdio
subprocess of the runner, so it shares the runner's session files and lives no longer
than the batch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent

from agent_runner.provider import SessionContext
from cronbox_shared.environment import tool_environment
from cronbox_shared.settings import RunnerSettings

# Bounds one request to the server; a call never legitimately takes this long.
CALL_TIMEOUT = 60.0


@dataclass(frozen=True)
class ToolSpec:
    """A tool as a model sees it."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call returned: its text, and whether it is an error the model should fix."""

    text: str
    is_error: bool = False


def server_parameters(
    context: SessionContext, environ: Mapping[str, str] | None = None
) -> StdioServerParameters:
    """How to start the MCP server for ``context``'s session (same Python as the runner).

    ``environ`` is the runner's environment (default: this process's). The server gets
    the runner's settings, rendered for ``context``'s session and zone (so the host's
    limits reach the tools), and the basic variables; never a secret.
    """
    env = os.environ if environ is None else environ
    settings = RunnerSettings.from_env(
        env, session_dir=context.session_dir, timezone=context.timezone
    )
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_tools"],
        env=tool_environment(settings, env),
        cwd=context.workspace if context.workspace.is_dir() else context.session_dir,
    )


class Toolbox:
    """An open connection to the session's MCP server."""

    def __init__(self, client: Client, tools: tuple[ToolSpec, ...]) -> None:
        self._client = client
        self.tools = tools

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolOutcome:
        """Run one tool call; a refused call is an error outcome, never an exception."""
        try:
            result = await self._client.call_tool(
                name, dict(arguments), read_timeout_seconds=CALL_TIMEOUT
            )
        except MCPError as exc:
            return ToolOutcome(f"tool {name} could not be called: {exc}", is_error=True)
        text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
        return ToolOutcome(text, is_error=bool(result.is_error))


@asynccontextmanager
async def open_toolbox(
    context: SessionContext, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Toolbox]:
    """Start the session's MCP server, list its tools, and stop it on exit."""
    params = server_parameters(context, environ)
    async with Client(params, read_timeout_seconds=CALL_TIMEOUT) as client:
        listed = await client.list_tools()
        tools = tuple(
            ToolSpec(t.name, t.description or "", dict(t.input_schema)) for t in listed.tools
        )
        yield Toolbox(client, tools)
