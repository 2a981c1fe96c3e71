"""The agent profiles a session may name, known to the host and the runner alike.

The host refuses a session whose profile no runner could start (that would wake a
runner which exits at once, again and again); the runner's provider registry serves
exactly these names.
"""

from __future__ import annotations

from cronbox_shared.errors import UnknownAgent

BUILTIN_AGENTS: tuple[str, ...] = ("echo", "fail", "scripted")
"""``echo`` answers offline; ``fail`` always fails; ``scripted`` runs tool calls (tests)."""


def check_agent(name: str) -> str:
    """``name`` stripped, or UnknownAgent when no runner can serve it."""
    agent = name.strip()
    if agent not in BUILTIN_AGENTS:
        raise UnknownAgent(agent, BUILTIN_AGENTS)
    return agent
