"""The MCP server's settings, read from the environment the agent runner passes on."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.envconf import env_count, env_seconds, env_session_dir, env_timezone
from cronbox_shared.errors import InvalidInput
from cronbox_shared.timeutil import Clock, SystemClock

DEFAULT_MIN_INTERVAL = DEFAULTS.min_interval
DEFAULT_MAX_TASKS = DEFAULTS.max_tasks_per_session


class ToolConfigError(InvalidInput):
    """The server's environment is missing a setting or holds a bad value."""


@dataclass(frozen=True)
class ToolConfig:
    """What the task tools need: the session's files, its zone and the host's limits.

    ``timezone`` is the session's default zone for tasks that name none; the limits
    mirror the host's (``CRONBOX_MIN_INTERVAL``, ``CRONBOX_MAX_TASKS``) so a request the
    host would refuse is refused here first, where the agent can still fix it.
    """

    session_dir: Path
    timezone: str = "UTC"
    min_interval: timedelta = timedelta(seconds=DEFAULT_MIN_INTERVAL)
    max_tasks: int = DEFAULT_MAX_TASKS
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ToolConfig:
        """Read ``CRONBOX_SESSION_DIR`` (required), ``CRONBOX_TIMEZONE``,
        ``CRONBOX_MIN_INTERVAL`` (seconds) and ``CRONBOX_MAX_TASKS``.

        Raises ToolConfigError naming the variable and its value.
        """
        env = os.environ if environ is None else environ
        return cls(
            session_dir=env_session_dir(env, ToolConfigError, need_inbound=True),
            timezone=env_timezone(env, ToolConfigError),
            min_interval=timedelta(
                seconds=env_seconds(
                    env, "CRONBOX_MIN_INTERVAL", DEFAULT_MIN_INTERVAL, ToolConfigError
                )
            ),
            max_tasks=env_count(env, "CRONBOX_MAX_TASKS", DEFAULT_MAX_TASKS, ToolConfigError),
        )
