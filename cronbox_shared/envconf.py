"""Reading numeric ``CRONBOX_*`` settings from a process environment.

The runner and the MCP server are configured by the host through their environment;
a bad value is one sentence naming the variable and the value.
"""

from __future__ import annotations

from collections.abc import Mapping

from cronbox_shared.errors import InvalidInput


def env_seconds(
    env: Mapping[str, str], name: str, default: float, error: type[InvalidInput] = InvalidInput
) -> float:
    """A positive, finite number of seconds from ``env[name]``, or ``default`` when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise error(f'{name} "{raw}" is not a positive number of seconds')
    return value


def env_count(
    env: Mapping[str, str], name: str, default: int, error: type[InvalidInput] = InvalidInput
) -> int:
    """A positive whole number from ``env[name]``, or ``default`` when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise error(f'{name} "{raw}" is not a positive whole number')
    return value
