"""What each process of a session sees of its environment: an allowlist, never a copy.

A runner gets its rendered :class:`~cronbox_shared.settings.RunnerSettings`, the few
variables a program needs to behave (``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ``),
its runtime's labels and the secrets its agent profile grants. Nothing else of the
host's environment (API keys, tokens, the operator's own settings) reaches it. Its gate
scripts get the runner's environment minus every secret, and its MCP server gets the
settings and the basic variables alone. Pure functions, so the rules are tested by table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cronbox_shared.errors import InvalidSecret, UnknownRunnerSetting
from cronbox_shared.settings import ENV_NAME, RunnerSettings

BASIC = ("PATH", "HOME", "LANG", "TZ")
"""Variables passed on unchanged so programs find their tools, home, language and zone."""
BASIC_PREFIX = "LC_"
# The MCP SDK's stdio client passes these on to its server from the runner's own
# environment, whatever environment it is given; a secret of such a name would leak.
PASSED_BY_MCP = ("USER", "LOGNAME", "SHELL", "TERM")
SECRET_NAMES = RunnerSettings.env_name("secret_names")
HOME_LABEL = "CRONBOX_HOST_HOME"
"""The process runtime's label on a runner: the home of the host that started it."""


def is_basic(name: str) -> bool:
    """Whether ``name`` is passed on to every process of a session."""
    return name in BASIC or name.startswith(BASIC_PREFIX)


def basic_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The basic variables of ``environ`` (``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ``)."""
    return {name: value for name, value in environ.items() if is_basic(name)}


def runner_environment(
    host_env: Mapping[str, str],
    settings_env: Mapping[str, str],
    secrets: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A runner's whole environment.

    ``host_env`` contributes only its basic variables; ``settings_env`` is the host's
    rendering of the runner's settings (every name must be a RunnerSettings variable:
    UnknownRunnerSetting otherwise); ``labels`` are the runtime's own marks (the
    process runtime's ``CRONBOX_HOST_HOME`` and ``CRONBOX_SESSION_DIR``); ``secrets`` are
    those the agent profile grants, and their names become the runner's
    ``CRONBOX_SECRET_NAMES`` (whatever ``settings_env`` said), so the runner knows what
    to keep from its gate scripts and MCP server. A secret may not take the name of any
    other variable the runner gets (InvalidSecret).
    """
    settings_names = set(RunnerSettings.env_names())
    for name in settings_env:
        if name not in settings_names:
            raise UnknownRunnerSetting(name)
    labels = dict(labels or {})
    taken = settings_names | set(labels)
    for name in secrets:
        if not ENV_NAME.match(name):
            raise InvalidSecret(name, "is not a valid environment variable name")
        if name in taken or is_basic(name):
            raise InvalidSecret(name, "has the name of a variable the runner needs itself")
        if name in PASSED_BY_MCP:
            raise InvalidSecret(name, "would reach the MCP server, which gets no secrets")
    return {
        **basic_environment(host_env),
        **settings_env,
        **labels,
        SECRET_NAMES: ",".join(sorted(secrets)),
        **secrets,
    }


def gate_environment(runner_env: Mapping[str, str], secret_names: Iterable[str]) -> dict[str, str]:
    """A gate script's environment: the runner's, minus every secret."""
    hidden = set(secret_names)
    return {name: value for name, value in runner_env.items() if name not in hidden}


def tool_environment(settings: RunnerSettings, runner_env: Mapping[str, str]) -> dict[str, str]:
    """The MCP server's environment: the runner's settings and basic variables, no secrets."""
    return {**basic_environment(runner_env), **settings.to_env()}
