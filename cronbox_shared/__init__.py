"""Definitions shared by the three cronbox processes (host, agent runner, MCP server).

Kept deliberately small: the time format and clock, the error types, the state enums
and record models, the recurrence rules, task validation, and the SQL on the per-session
files. Nothing here starts a process or holds state.
"""
