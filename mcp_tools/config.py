"""The MCP server's settings: the runner's settings it is started with, plus a clock."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import ToolConfigError
from cronbox_shared.outbox import INBOUND
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, SystemClock


@dataclass(frozen=True)
class ToolConfig:
    """What the task tools need: the session's files, its zone, the host's limits, a clock.

    ``timezone`` is the session's default zone for tasks that name none; None (no
    ``CRONBOX_TIMEZONE``) reads it from the session's inbox instead. The limits mirror
    the host's so a request the host would refuse is refused here first, where the agent
    can still fix it.
    """

    session_dir: Path
    timezone: str | None = None
    min_interval: timedelta = timedelta(seconds=DEFAULTS.min_interval)
    max_tasks: int = DEFAULTS.max_tasks_per_session
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def from_settings(cls, settings: RunnerSettings, *, zone_told: bool) -> ToolConfig:
        """The tools' view of the runner's settings; ``zone_told``: whether the runner
        was told its zone (``CRONBOX_TIMEZONE``) rather than left with the default.

        Raises ToolConfigError when the session directory holds no inbound.db: the tools
        read it, so without it they could only fail later, one call at a time.
        """
        if not (settings.session_dir / INBOUND).is_file():
            raise ToolConfigError(
                f'{RunnerSettings.env_name("session_dir")} "{settings.session_dir}" holds no '
                f"{INBOUND}; point it at a cronbox session directory"
            )
        # A zone the runner was not told is left to the session's inbox, never taken as UTC.
        return cls(
            session_dir=settings.session_dir,
            timezone=settings.timezone if zone_told else None,
            min_interval=timedelta(seconds=settings.min_interval),
            max_tasks=settings.max_tasks,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ToolConfig:
        """Parse the runner's settings from ``environ`` (default: this process's).

        Raises RunnerConfigError (or ToolConfigError) naming the variable and its value.
        """
        env = os.environ if environ is None else environ
        told = bool(env.get(RunnerSettings.env_name("timezone"), "").strip())
        return cls.from_settings(RunnerSettings.from_env(env), zone_told=told)
