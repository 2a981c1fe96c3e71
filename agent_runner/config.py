"""The runner's settings, read from its environment (the host or container sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.envconf import env_count, env_seconds, env_session_dir, env_timezone
from cronbox_shared.errors import InvalidInput


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
    idle_timeout: float = DEFAULTS.idle_timeout
    poll_interval: float = DEFAULTS.runner_poll
    max_batch: int = DEFAULTS.max_batch
    gate_timeout: float = DEFAULTS.gate_timeout

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunnerConfig:
        """Read ``CRONBOX_SESSION_DIR`` (required) and the optional ``CRONBOX_*`` settings.

        Raises RunnerConfigError naming the variable and its value.
        """
        env = os.environ if environ is None else environ
        return cls(
            session_dir=env_session_dir(env, RunnerConfigError, need_inbound=False),
            provider=env.get("CRONBOX_PROVIDER", "").strip() or "echo",
            timezone=env_timezone(env, RunnerConfigError),
            idle_timeout=env_seconds(
                env, "CRONBOX_IDLE_TIMEOUT", DEFAULTS.idle_timeout, RunnerConfigError
            ),
            poll_interval=env_seconds(
                env, "CRONBOX_POLL_INTERVAL", DEFAULTS.runner_poll, RunnerConfigError
            ),
            max_batch=env_count(env, "CRONBOX_MAX_BATCH", DEFAULTS.max_batch, RunnerConfigError),
            gate_timeout=env_seconds(
                env, "CRONBOX_GATE_TIMEOUT", DEFAULTS.gate_timeout, RunnerConfigError
            ),
        )
