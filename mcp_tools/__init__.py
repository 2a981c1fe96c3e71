"""The MCP server a session's agent talks to (SPEC §6.1): ``python -m mcp_tools``.

It runs inside the session container next to the agent runner and meets the host only
through the session files: it reads ``inbound.db`` (read-only) and writes requests as
``kind=system`` rows to ``outbound.db``, which the host validates again and applies.
"""
