"""Builds the MCP server: one ``MCPServer`` with every tool family registered on it."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from mcp_tools import tasks
from mcp_tools.config import ToolConfig

NAME = "cronbox"
INSTRUCTIONS = f"""Tools to manage this session's own schedule. A task is a prompt you receive
later: once (processAfter) or repeatedly (recurrence), in the session's timezone unless the
task names another. Requests are checked at once; the host applies them about a second later.

{tasks.TIME_RULES}

{tasks.COST_RULES}"""


def build_server(config: ToolConfig) -> MCPServer[Any]:
    """The MCP server for one session, as ``python -m mcp_tools`` serves it over stdio."""
    # WARNING: each call is otherwise logged at INFO, and stderr is the runner's log.
    server: MCPServer[Any] = MCPServer(NAME, instructions=INSTRUCTIONS, log_level="WARNING")
    tasks.register(server, tasks.TaskTools(config))
    return server
