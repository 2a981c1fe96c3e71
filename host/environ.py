"""What cronbox reads of its environment without pydantic-settings: the ``CRONBOX_*``
names it knows, the ones it does not, and the home.

:class:`host.config.Settings` reads every setting, validated, from the environment and
``./.env``. Importing pydantic-settings costs a command about 30 ms, which a command that
only reads the central index (``status``, ``task list``) would spend on the one setting
it uses, the home: those commands resolve it here, with the same sources in the same
order, and leave the other settings to the commands that use them.

``HOST_SETTINGS`` names Settings' fields; a test holds it equal to ``Settings.model_fields``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

from cronbox_shared.environment import HOME_LABEL
from cronbox_shared.errors import InvalidInput
from cronbox_shared.settings import ENV_PREFIX, RunnerSettings

# The fields of host.config.Settings, each read from CRONBOX_<FIELD>.
HOST_SETTINGS = frozenset(
    {
        "home", "sweep_interval", "max_containers", "idle_timeout", "runtime",
        "fork_server", "change_signal", "idle_poll", "min_interval",
        "max_tasks_per_session", "task_timeout", "failure_backoff", "keep_finished",
        "image", "docker_network", "docker_memory", "docker_cpus", "docker_pids",
        "docker_user", "http_host", "http_port", "api_key", "webhook_timeout",
        "webhook_cooldown", "webhook_failures", "delivery_retry_base", "delivery_attempts",
        "backup_keep", "backup_at", "cleanup_at", "keep_runs_days", "keep_audit_days",
        "outbox_max_bytes", "outbox_read_limit", "outbox_stall", "stale_check_every",
        "jobs_disabled",
    }
)  # fmt: skip
# The .env file Settings reads, relative to the working directory.
DOTENV = Path(".env")
HOME = f"{ENV_PREFIX}HOME"


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cronbox"


@cache
def known_setting_names() -> frozenset[str]:
    """Every ``CRONBOX_*`` variable cronbox reads: the host's settings, the runner's, and
    the process runtime's label of the host home."""
    host = (f"{ENV_PREFIX}{field.upper()}" for field in HOST_SETTINGS)
    return frozenset((*host, *RunnerSettings.env_names(), HOME_LABEL))


def unknown_setting_warnings(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """One warning per ``CRONBOX_*`` name in ``names`` that is not in ``known``, naming the
    closest known name when there is one (names are compared case-insensitively, as
    pydantic-settings reads them)."""
    known_names = sorted(known)
    warnings = []
    for name in sorted({n.upper() for n in names if n.upper().startswith(ENV_PREFIX)}):
        if name in known_names:
            continue
        close = difflib.get_close_matches(name, known_names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a cronbox setting{hint}")
    return warnings


def not_utf8(exc: UnicodeDecodeError, path: Path = DOTENV) -> InvalidInput:
    """The sentence for a ``.env`` that is not UTF-8 (Settings reads it as UTF-8)."""
    return InvalidInput(
        f"{path} is not valid UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
        f"{exc.start}); save it in UTF-8"
    )


def _dotenv(path: Path) -> dict[str, str | None]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    try:
        return dotenv_values(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(exc, path) from None


def configured_names(environ: Mapping[str, str], dotenv: Path = DOTENV) -> set[str]:
    """The variable names set in ``environ`` and in the ``.env`` file Settings reads."""
    names = set(environ)
    # Settings reports an unreadable .env itself.
    with contextlib.suppress(OSError, InvalidInput):
        names.update(_dotenv(dotenv))
    return names


def configured_home(environ: Mapping[str, str], dotenv: Path = DOTENV) -> Path:
    """``CRONBOX_HOME`` as Settings reads it: from ``environ``, else from ``.env``, the name
    in any case; else the default (``$XDG_DATA_HOME/cronbox``).

    An unreadable ``.env`` raises its OSError, as Settings does; one that is not UTF-8
    is an InvalidInput.
    """
    for source in (environ, _dotenv(dotenv)):
        # pydantic-settings folds the names to lower case: of two spellings, the last counts.
        value = {name.upper(): value for name, value in source.items()}.get(HOME)
        if value is not None:
            return Path(value)
    return default_home()
