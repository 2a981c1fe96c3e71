"""Agent providers by name.

A session's agent profile names its provider (the runner setting ``provider``). Built-ins are
imported only when asked for, so a provider's dependencies (a model SDK, an MCP
client) cost nothing to sessions that do not use it.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_runner.provider import Provider
from cronbox_shared.errors import UnknownProvider
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


_FACTORIES: dict[str, ProviderFactory] = {"echo": _echo, "fail": _fail, "scripted": _scripted}


def provider_names() -> list[str]:
    """Names :func:`get_provider` accepts, sorted."""
    return sorted(_FACTORIES)


def get_provider(name: str) -> Provider:
    """A fresh provider instance for ``name``; raises UnknownProvider for other names."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UnknownProvider(name, provider_names(), RunnerSettings.env_name("provider"))
    return factory()


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make ``factory`` available as ``name`` (replacing any provider of that name)."""
    _FACTORIES[name] = factory


def unregister_provider(name: str) -> None:
    """Forget ``name``; built-in names come back only when registered again."""
    _FACTORIES.pop(name, None)
