"""Builds the MCP server: one ``MCPServer`` with every tool family registered on it."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, InputRequiredResult
from pydantic import ValidationError

from mcp_tools import tasks
from mcp_tools.arguments import argument_sentence
from mcp_tools.config import ToolConfig

NAME = "cronbox"
INSTRUCTIONS = f"""Tools to manage this session's own schedule. A task is a prompt you receive
later: once (processAfter) or repeatedly (recurrence), in the session's timezone unless the
task names another. Requests are checked at once; the host applies them about a second later.

{tasks.TIME_RULES}

{tasks.COST_RULES}"""


class ToolServer(MCPServer[Any]):
    """An ``MCPServer`` whose argument errors are sentences, not pydantic reports.

    The SDK validates a call's arguments against the tool's signature before the tool
    runs and reports a mismatch as a ToolError carrying pydantic's text (with a
    documentation URL); this says the same in words the agent can act on.
    """

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            # from cause: the SDK then logs the field names only, never the values.
            raise ToolError(f"Error executing tool {name}: {argument_sentence(cause)}") from cause


def build_server(config: ToolConfig) -> MCPServer[Any]:
    """The MCP server for one session, as ``python -m mcp_tools`` serves it over stdio."""
    # WARNING: each call is otherwise logged at INFO, and stderr is the runner's log.
    server = ToolServer(NAME, instructions=INSTRUCTIONS, log_level="WARNING")
    tasks.register(server, tasks.TaskTools(config))
    return server
