"""Agent profiles: ``$CRONBOX_HOME/agents.toml``, known to the host and the runner alike.

A session names a profile; the profile names its provider and model and how to reach it::

    [agents.local]
    provider = "openai"
    model = "llama3.1"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = "OLLAMA_API_KEY"

The built-in names ``echo``, ``fail`` and ``scripted`` need no file. The host refuses a
session whose profile no runner could serve (that would wake a runner which exits at
once, again and again), and reports such sessions at start. A profile's key never sits
in the file: ``api_key_env`` names the host variable that holds it.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import AgentConfigError, MissingAgentKey, UnknownAgent
from cronbox_shared.settings import ENV_NAME, RunnerSettings

AGENTS_FILE = "agents.toml"
BUILTIN_AGENTS: tuple[str, ...] = ("echo", "fail", "scripted")
"""``echo`` answers offline; ``fail`` always fails; ``scripted`` runs tool calls (tests)."""
MODEL_PROVIDERS: tuple[str, ...] = ("anthropic", "openai")
"""Providers that call a model API and so need a ``model``."""
PROVIDERS: tuple[str, ...] = (
    "anthropic", "claude-code", "command", "echo", "fail", "openai", "scripted",
)  # fmt: skip
"""Every provider a profile may name (the runner's registry serves exactly these)."""


class AgentProfile(BaseModel):
    """One ``[agents.NAME]`` table of ``agents.toml``."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    provider: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    max_turns: int = Field(default=8, ge=1, le=100)
    max_tokens: int = Field(default=4096, ge=1)
    command: tuple[str, ...] = ()
    timeout: float = Field(default=DEFAULTS.gate_timeout, gt=0)
    daily_token_budget: int | None = Field(default=None, ge=1)
    stream: bool = False
    history_tokens: int = Field(default=DEFAULTS.history_tokens, ge=0)
    allowed_tools: tuple[str, ...] = ()
    """claude-code: built-in tools allowed besides the session's task tools."""

    @model_validator(mode="after")
    def _coherent(self) -> AgentProfile:
        if self.provider not in PROVIDERS:
            raise ValueError(
                f'provider "{self.provider[:40]}" is unknown; use one of: {", ".join(PROVIDERS)}'
            )
        if self.provider in MODEL_PROVIDERS and not (self.model or "").strip():
            raise ValueError(f"provider {self.provider} needs model = ...")
        if self.provider == "command" and not (self.command and self.command[0].strip()):
            raise ValueError('provider command needs command = ["program", "arg", ...]')
        if self.api_key_env is not None and not ENV_NAME.match(self.api_key_env):
            raise ValueError(f'api_key_env "{self.api_key_env[:40]}" is not a variable name')
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f'base_url "{self.base_url[:80]}" is not an http(s) URL')
        if not math.isfinite(self.timeout):
            raise ValueError("timeout is not a number of seconds")
        return self

    def runner_fields(self) -> dict[str, Any]:
        """The profile as RunnerSettings fields (the key's value is never among them)."""
        fields: dict[str, Any] = {
            "provider": self.provider,
            "max_turns": self.max_turns,
            "max_tokens": self.max_tokens,
            "command_timeout": self.timeout,
            "stream": self.stream,
            "history_tokens": self.history_tokens,
        }
        for name in ("model", "base_url", "api_key_env", "system"):
            value = getattr(self, name)
            if value:
                fields[name] = value
        if self.command:
            fields["command"] = json.dumps(list(self.command))
        if self.allowed_tools:
            fields["allowed_tools"] = json.dumps(list(self.allowed_tools))
        return fields

    def runner_env(self) -> dict[str, str]:
        """:meth:`runner_fields` rendered as the runner's environment variables."""
        return {
            RunnerSettings.env_name(name): str(value)
            for name, value in self.runner_fields().items()
        }


def agents_file(home: Path) -> Path:
    return home / AGENTS_FILE


def load_profiles(home: Path) -> dict[str, AgentProfile]:
    """The profiles of ``home``'s agents.toml (none when there is no file).

    Raises AgentConfigError, one sentence naming the file and the profile, for a file
    that is not TOML or a profile that is not valid.
    """
    path = agents_file(home)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{path} cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"agents"})
    if unknown:
        raise AgentConfigError(
            f'{path}: unknown table "{unknown[0]}"; profiles go in [agents.NAME]'
        )
    tables = data.get("agents", {})
    if not isinstance(tables, dict):
        raise AgentConfigError(f"{path}: agents must be tables, [agents.NAME]")
    profiles = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise AgentConfigError(f"{path}: agents.{name} must be a table, [agents.{name}]")
        try:
            profiles[name] = AgentProfile.model_validate(table)
        except ValidationError as exc:
            raise AgentConfigError(f"{path}: profile {name}: {_reason(exc)}") from None
    return profiles


def _reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f'"{where[:40]}" is not a profile setting'
    if err["type"] == "missing":
        return f"{where} is required"
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError) and not where:
        return str(cause)
    return f"{where} {str(err['msg']).lower()}" if where else str(err["msg"]).lower()


def resolve_agent(
    name: str, profiles: Mapping[str, AgentProfile], environ: Mapping[str, str]
) -> AgentProfile:
    """The profile a session named ``name`` runs with, checked against ``environ``.

    A profile of the file wins over a built-in name. Raises UnknownAgent for a name
    that is neither, and MissingAgentKey when the profile's key variable is unset.
    """
    profile = profiles.get(name)
    if profile is None:
        if name not in BUILTIN_AGENTS:
            raise UnknownAgent(name, tuple(sorted({*BUILTIN_AGENTS, *profiles})))
        return AgentProfile(provider=name)
    if profile.api_key_env and not environ.get(profile.api_key_env, "").strip():
        raise MissingAgentKey(name, profile.api_key_env)
    return profile


def check_agent(
    name: str,
    profiles: Mapping[str, AgentProfile] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """``name`` stripped, or UnknownAgent / MissingAgentKey when no runner can serve it."""
    agent = name.strip()
    resolve_agent(agent, profiles or {}, environ or {})
    return agent
