"""Agent providers by name.

A session's agent profile names its provider (the runner setting ``provider``). Built-ins are
imported only when asked for, so a provider's dependencies (a model SDK, an MCP
client) cost nothing to sessions that do not use it.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_runner.provider import Provider
from cronbox_shared.errors import RunnerConfigError, UnknownProvider
from cronbox_shared.settings import RunnerSettings

__all__ = [
    "ProviderFactory",
    "UnknownProvider",
    "get_provider",
    "provider_names",
    "register_provider",
    "unregister_provider",
]

ProviderFactory = Callable[[], Provider]


def _echo() -> Provider:
    from agent_runner.providers.echo import EchoProvider

    return EchoProvider()


def _fail() -> Provider:
    from agent_runner.providers.failing import FailingProvider

    return FailingProvider()


def _scripted() -> Provider:
    from agent_runner.providers.scripted import ScriptedProvider

    return ScriptedProvider()


def _openai(settings: RunnerSettings) -> Provider:
    from agent_runner.providers.openai import OpenAIProvider

    return OpenAIProvider(settings)


def _anthropic(settings: RunnerSettings) -> Provider:
    from agent_runner.providers.anthropic import AnthropicProvider

    return AnthropicProvider(settings)


def _claude_code(settings: RunnerSettings) -> Provider:
    from agent_runner.providers.claude_code import ClaudeCodeProvider

    return ClaudeCodeProvider(settings)


def _command(settings: RunnerSettings) -> Provider:
    from agent_runner.providers.command import CommandProvider

    return CommandProvider(settings)


_FACTORIES: dict[str, ProviderFactory] = {"echo": _echo, "fail": _fail, "scripted": _scripted}
# Providers configured by the session's agent profile (model, base_url, command...).
_CONFIGURED: dict[str, Callable[[RunnerSettings], Provider]] = {
    "anthropic": _anthropic,
    "claude-code": _claude_code,
    "command": _command,
    "openai": _openai,
}


def provider_names() -> list[str]:
    """Names :func:`get_provider` accepts, sorted."""
    return sorted({*_FACTORIES, *_CONFIGURED})


def get_provider(name: str, settings: RunnerSettings | None = None) -> Provider:
    """A fresh provider instance for ``name``, configured by ``settings`` (the agent
    profile's model, base_url, command…); raises UnknownProvider for other names, and
    RunnerConfigError for a provider that needs settings given none or bad ones."""
    factory = _FACTORIES.get(name)
    if factory is not None:
        return factory()
    configured = _CONFIGURED.get(name)
    if configured is None:
        raise UnknownProvider(name, provider_names(), RunnerSettings.env_name("provider"))
    if settings is None:
        raise RunnerConfigError(f"provider {name} needs the runner settings of its agent profile")
    return configured(settings)


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make ``factory`` available as ``name`` (replacing any provider of that name)."""
    _FACTORIES[name] = factory


def unregister_provider(name: str) -> None:
    """Forget ``name``; built-in names come back only when registered again."""
    _FACTORIES.pop(name, None)
