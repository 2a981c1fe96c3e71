"""The runner's settings, read from its environment (the host or container sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cronbox_shared.errors import InvalidInput
from cronbox_shared.timeutil import zone


class RunnerConfigError(InvalidInput):
    """The runner's environment is missing a setting or holds a bad value."""


@dataclass(frozen=True)
class RunnerConfig:
    """What one agent runner needs to know.

    ``idle_timeout``, ``poll_interval`` and ``gate_timeout`` are seconds.
    """

    session_dir: Path
    provider: str = "echo"
    timezone: str = "UTC"
    idle_timeout: float = 30.0
    poll_interval: float = 1.0
    max_batch: int = 10
    gate_timeout: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunnerConfig:
        """Read ``CRONBOX_SESSION_DIR`` (required) and the optional ``CRONBOX_*`` settings.

        Raises RunnerConfigError naming the variable and its value.
        """
        env = os.environ if environ is None else environ
        raw_dir = env.get("CRONBOX_SESSION_DIR", "").strip()
        if not raw_dir:
            raise RunnerConfigError(
                "CRONBOX_SESSION_DIR is not set; set it to the session directory "
                "that holds inbound.db"
            )
        session_dir = Path(raw_dir)
        if not session_dir.is_dir():
            raise RunnerConfigError(
                f'CRONBOX_SESSION_DIR "{raw_dir}" is not a directory; '
                "point it at the session directory that holds inbound.db"
            )
        timezone = env.get("CRONBOX_TIMEZONE", "").strip() or "UTC"
        zone(timezone, "CRONBOX_TIMEZONE")
        return cls(
            session_dir=session_dir,
            provider=env.get("CRONBOX_PROVIDER", "").strip() or "echo",
            timezone=timezone,
            idle_timeout=_seconds(env, "CRONBOX_IDLE_TIMEOUT", 30.0),
            poll_interval=_seconds(env, "CRONBOX_POLL_INTERVAL", 1.0),
            max_batch=_count(env, "CRONBOX_MAX_BATCH", 10),
            gate_timeout=_seconds(env, "CRONBOX_GATE_TIMEOUT", 30.0),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise RunnerConfigError(f'{name} "{raw}" is not a positive number of seconds')
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise RunnerConfigError(f'{name} "{raw}" is not a positive whole number')
    return value
