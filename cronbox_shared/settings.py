"""The runner's settings: what the host renders into a runner's environment, and what the
runner and its MCP server read back from theirs.

This class is the one place the names of these variables are written: the field
``idle_timeout`` is ``CRONBOX_IDLE_TIMEOUT`` (:meth:`RunnerSettings.env_name`). The host
renders a model with :meth:`RunnerSettings.to_env`; the runner and the MCP server parse
theirs with :meth:`RunnerSettings.from_env`. A bad value is one sentence naming the
variable and the value.

The class never reads the process environment or a ``.env`` file by itself: a runner's
working directory is the agent's workspace, and a ``.env`` there would let the agent
reconfigure its own runner. Callers pass the environment they mean.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import CronboxError, RunnerConfigError
from cronbox_shared.outbox import INBOUND
from cronbox_shared.timeutil import zone

ENV_PREFIX = "CRONBOX_"
# What a POSIX shell accepts as a variable name; secret names are joined with commas.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The spellings of a boolean a variable may hold (any case), as pydantic accepted them.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _positive_seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise ValueError("is not a positive number of seconds")
    return seconds


def _whole(value: object) -> int:
    try:
        count = int(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    except ValueError:
        count = None
    if count is None:
        raise ValueError("is not a whole number")
    return count


def _positive_count(value: object) -> int:
    try:
        count = _whole(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError("is not a positive whole number")
    return count


def _tokens(value: object) -> int:
    count = _whole(value)
    if count < 0:
        raise ValueError("is not a whole number of tokens (0 or more)")
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


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("is not true or false")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("is not text")
    return value


def _provider(value: object) -> str:
    if not _text(value):
        raise ValueError("is empty; name a provider")
    return str(value)


def _directory(value: object) -> Path:
    if not isinstance(value, str | Path):
        raise ValueError("is not a path")
    path = Path(value)
    if not path.is_dir():
        raise ValueError(
            f"is not a directory; point it at the session directory that holds {INBOUND}"
        )
    return path


def _zone_name(value: object) -> str:
    name = _text(value)
    zone(name, RunnerSettings.env_name("timezone"))
    return name


def _parse(parse: Callable[[object], Any]) -> dict[str, Any]:
    """A field's metadata: ``parse`` checks and converts its value (given, or default)."""
    return {"parse": parse}


_SECONDS = _parse(_positive_seconds)
_COUNT = _parse(_positive_count)
_TEXT = _parse(_text)
_FLAG = _parse(_flag)


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """What one agent runner, and the MCP server it starts, are told by the host.

    Seconds are floats; ``secret_names`` are the environment variables the agent
    profile grants as secrets (the runner keeps them from its gate scripts and MCP
    server). ``model`` … ``command_timeout`` are the agent profile's settings;
    ``api_key_env`` names the secret that holds the model's key, ``command`` is a JSON
    list of program and arguments; ``gateway`` is the model gateway's socket, relative
    to the session directory (the model is then reached through it, with no key in the
    runner). ``min_interval`` and ``max_tasks`` mirror the host's
    limits, so the MCP tools refuse what the host would, while the agent can still fix it.

    Every value, given or default, is checked and converted as it is built (a string as a
    variable holds it, or the typed value); a bad one is RunnerConfigError, one sentence.
    """

    # A plain dataclass, not pydantic (nor pydantic-settings): only what the caller
    # passes is read (never os.environ, a .env file or a secrets dir), and a runner's
    # wake imports no pydantic at all.
    session_dir: Path = field(metadata=_parse(_directory))
    provider: str = field(default="echo", metadata=_parse(_provider))
    timezone: str = field(default="UTC", metadata=_parse(_zone_name))
    idle_timeout: float = field(default=DEFAULTS.idle_timeout, metadata=_SECONDS)
    poll_interval: float = field(default=DEFAULTS.runner_poll, metadata=_SECONDS)
    idle_poll: float = field(default=DEFAULTS.idle_poll, metadata=_SECONDS)
    change_signal: bool = field(default=True, metadata=_FLAG)
    max_batch: int = field(default=DEFAULTS.max_batch, metadata=_COUNT)
    gate_timeout: float = field(default=DEFAULTS.gate_timeout, metadata=_SECONDS)
    min_interval: float = field(default=DEFAULTS.min_interval, metadata=_SECONDS)
    max_tasks: int = field(default=DEFAULTS.max_tasks_per_session, metadata=_COUNT)
    secret_names: tuple[str, ...] = field(default=(), metadata=_parse(_names))
    # The session's agent profile (cronbox_shared.agents), beyond its provider.
    model: str = field(default="", metadata=_TEXT)
    base_url: str = field(default="", metadata=_TEXT)
    api_key_env: str = field(default="", metadata=_TEXT)
    system: str = field(default="", metadata=_TEXT)
    max_turns: int = field(default=8, metadata=_COUNT)
    max_tokens: int = field(default=4096, metadata=_COUNT)
    command: str = field(default="", metadata=_TEXT)
    command_timeout: float = field(default=DEFAULTS.gate_timeout, metadata=_SECONDS)
    stream: bool = field(default=False, metadata=_FLAG)
    history_tokens: int = field(default=DEFAULTS.history_tokens, metadata=_parse(_tokens))
    allowed_tools: tuple[str, ...] = field(default=(), metadata=_parse(_json_strings))
    gateway: str = field(default="", metadata=_TEXT)

    FIELDS: ClassVar[tuple[str, ...]]
    """The settings' names, in order."""

    def __post_init__(self) -> None:
        for f in fields(self):
            raw = getattr(self, f.name)
            try:
                value = f.metadata["parse"](raw)
            except CronboxError as exc:
                raise RunnerConfigError(str(exc)) from None
            except ValueError as exc:
                raise RunnerConfigError(f'{self.env_name(f.name)} "{raw}" {exc}') from None
            object.__setattr__(self, f.name, value)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of setting ``name`` (KeyError for one it does not have)."""
        value = cls.__dataclass_fields__[name].default
        if value is MISSING:
            raise KeyError(name)
        return value

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of setting ``name``, e.g. ``CRONBOX_IDLE_TIMEOUT``."""
        if name not in cls.FIELDS:
            raise KeyError(name)
        return f"{ENV_PREFIX}{name.upper()}"

    @classmethod
    def env_names(cls) -> tuple[str, ...]:
        """Every variable these settings are rendered into."""
        return tuple(cls.env_name(name) for name in cls.FIELDS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> RunnerSettings:
        """Parse the settings from ``environ``; ``overrides`` (typed values) win over it.

        Only ``environ`` is read. A variable that is unset or blank takes its default;
        ``CRONBOX_SESSION_DIR`` is required. Raises RunnerConfigError naming the
        variable and its value.
        """
        raw: dict[str, Any] = {}
        for name in cls.FIELDS:
            value = environ.get(cls.env_name(name), "").strip()
            if value:
                raw[name] = value
        raw.update(overrides)
        for name in raw:
            if name not in cls.FIELDS:
                raise RunnerConfigError(f"{name[:80]} is not a runner setting")
        if "session_dir" not in raw:
            raise RunnerConfigError(
                f"{cls.env_name('session_dir')} is not set; set it to the session directory "
                f"that holds {INBOUND}"
            )
        return cls(**raw)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, every one of them, for the runner."""
        rendered: dict[str, str] = {}
        for name in self.FIELDS:
            value = getattr(self, name)
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            rendered[self.env_name(name)] = text
        return rendered


RunnerSettings.FIELDS = tuple(f.name for f in fields(RunnerSettings))
