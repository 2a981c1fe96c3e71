"""The runner's settings: what the host renders into a runner's environment, and what the
runner and its MCP server read back from theirs.

This model is the one place the names of these variables are written: the field
``idle_timeout`` is ``CRONBOX_IDLE_TIMEOUT`` (:meth:`RunnerSettings.env_name`). The host
renders a model with :meth:`RunnerSettings.to_env`; the runner and the MCP server parse
theirs with :meth:`RunnerSettings.from_env`. A bad value is one sentence naming the
variable and the value.

The model never reads the process environment or a ``.env`` file by itself: a runner's
working directory is the agent's workspace, and a ``.env`` there would let the agent
reconfigure its own runner. Callers pass the environment they mean.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import CronboxError, RunnerConfigError
from cronbox_shared.outbox import INBOUND
from cronbox_shared.timeutil import zone

ENV_PREFIX = "CRONBOX_"
# What a POSIX shell accepts as a variable name; secret names are joined with commas.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _positive_seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise ValueError("is not a positive number of seconds")
    return seconds


def _positive_count(value: object) -> int:
    try:
        count = int(value) if isinstance(value, str | int) else 0
    except ValueError:
        count = 0
    if isinstance(value, bool) or count < 1:
        raise ValueError("is not a positive whole number")
    return count


def _names(value: object) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple | set | frozenset):
        raise ValueError("is not a comma-separated list of environment variable names")
    names = tuple(sorted({str(p).strip() for p in parts} - {""}))
    if not all(ENV_NAME.match(name) for name in names):
        raise ValueError("is not a comma-separated list of environment variable names")
    return names


def _json_strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            value = None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("is not a JSON list of strings")
    return tuple(value)


Seconds = Annotated[float, BeforeValidator(_positive_seconds)]
Count = Annotated[int, BeforeValidator(_positive_count)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_json_strings)]


class RunnerSettings(BaseModel):
    """What one agent runner, and the MCP server it starts, are told by the host.

    Seconds are floats; ``secret_names`` are the environment variables the agent
    profile grants as secrets (the runner keeps them from its gate scripts and MCP
    server). ``model`` … ``command_timeout`` are the agent profile's settings;
    ``api_key_env`` names the secret that holds the model's key, ``command`` is a JSON
    list of program and arguments; ``gateway`` is the model gateway's socket, relative
    to the session directory (the model is then reached through it, with no key in the
    runner). ``min_interval`` and ``max_tasks`` mirror the host's
    limits, so the MCP tools refuse what the host would, while the agent can still fix it.
    """

    # A plain model, not pydantic-settings: only what the caller passes is read (never
    # os.environ, a .env file or a secrets dir), and a runner's start imports less.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    session_dir: Path
    provider: str = Field(default="echo", min_length=1)
    timezone: str = "UTC"
    idle_timeout: Seconds = DEFAULTS.idle_timeout
    poll_interval: Seconds = DEFAULTS.runner_poll
    idle_poll: Seconds = DEFAULTS.idle_poll
    change_signal: bool = True
    max_batch: Count = DEFAULTS.max_batch
    gate_timeout: Seconds = DEFAULTS.gate_timeout
    min_interval: Seconds = DEFAULTS.min_interval
    max_tasks: Count = DEFAULTS.max_tasks_per_session
    secret_names: Names = ()
    # The session's agent profile (cronbox_shared.agents), beyond its provider.
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    system: str = ""
    max_turns: Count = 8
    max_tokens: Count = 4096
    command: str = ""
    command_timeout: Seconds = DEFAULTS.gate_timeout
    stream: bool = False
    history_tokens: int = Field(default=DEFAULTS.history_tokens, ge=0)
    allowed_tools: Strings = ()
    gateway: str = ""

    @field_validator("session_dir")
    @classmethod
    def _is_directory(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(
                f"is not a directory; point it at the session directory that holds {INBOUND}"
            )
        return path

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        zone(name, cls.env_name("timezone"))
        return name

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field``, e.g. ``CRONBOX_IDLE_TIMEOUT``."""
        if field not in cls.model_fields:
            raise KeyError(field)
        return f"{ENV_PREFIX}{field.upper()}"

    @classmethod
    def env_names(cls) -> tuple[str, ...]:
        """Every variable these settings are rendered into."""
        return tuple(cls.env_name(field) for field in cls.model_fields)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> RunnerSettings:
        """Parse the settings from ``environ``; ``overrides`` (typed values) win over it.

        Only ``environ`` is read. A variable that is unset or blank takes its default;
        ``CRONBOX_SESSION_DIR`` is required. Raises RunnerConfigError naming the
        variable and its value.
        """
        raw: dict[str, Any] = {}
        for field in cls.model_fields:
            value = environ.get(cls.env_name(field), "").strip()
            if value:
                raw[field] = value
        raw.update(overrides)
        try:
            return cls(**raw)
        except ValidationError as exc:
            raise cls._sentence(exc, raw) from None

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, every one of them, for the runner."""
        rendered: dict[str, str] = {}
        for field in type(self).model_fields:
            value = getattr(self, field)
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            rendered[self.env_name(field)] = text
        return rendered

    @classmethod
    def _sentence(cls, exc: ValidationError, raw: Mapping[str, Any]) -> RunnerConfigError:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        if field not in cls.model_fields:
            return RunnerConfigError(f"{field[:80]} is not a runner setting")
        name = cls.env_name(field)
        if err["type"] == "missing":
            return RunnerConfigError(
                f"{name} is not set; set it to the session directory that holds {INBOUND}"
            )
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, CronboxError):
            return RunnerConfigError(str(cause))
        why = str(cause) if isinstance(cause, ValueError) else str(err["msg"]).lower()
        return RunnerConfigError(f'{name} "{raw.get(field)}" {why}')
