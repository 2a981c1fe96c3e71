"""Reading numeric ``CRONBOX_*`` settings from a process environment.

The runner and the MCP server are configured by the host through their environment;
a bad value is one sentence naming the variable and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cronbox_shared.errors import InvalidInput, InvalidTimezone
from cronbox_shared.sessiondb import INBOUND
from cronbox_shared.timeutil import zone


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


def env_session_dir(
    env: Mapping[str, str], error: type[InvalidInput] = InvalidInput, *, need_inbound: bool
) -> Path:
    """``CRONBOX_SESSION_DIR``: a directory, which with ``need_inbound`` holds inbound.db."""
    raw = env.get("CRONBOX_SESSION_DIR", "").strip()
    if not raw:
        raise error(
            f"CRONBOX_SESSION_DIR is not set; set it to the session directory that holds {INBOUND}"
        )
    path = Path(raw)
    if not path.is_dir():
        raise error(
            f'CRONBOX_SESSION_DIR "{raw}" is not a directory; '
            f"point it at the session directory that holds {INBOUND}"
        )
    if need_inbound and not (path / INBOUND).is_file():
        raise error(
            f'CRONBOX_SESSION_DIR "{raw}" holds no {INBOUND}; '
            "point it at a cronbox session directory"
        )
    return path


def env_timezone(env: Mapping[str, str], error: type[InvalidInput] = InvalidInput) -> str:
    """``CRONBOX_TIMEZONE`` (default UTC), checked to be a known zone."""
    name = env.get("CRONBOX_TIMEZONE", "").strip() or "UTC"
    try:
        zone(name, "CRONBOX_TIMEZONE")
    except InvalidTimezone as exc:
        raise error(str(exc)) from None
    return name
