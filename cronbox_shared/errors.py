"""Every error cronbox raises on purpose.

User-facing layers (CLI, MCP, HTTP) turn these into one sentence; nothing else catches
broadly. Each message is built from the offending value and says how to fix it.
"""

from __future__ import annotations

from datetime import datetime


def shown(value: object, limit: int = 40) -> str:
    """At most ``limit`` characters of an untrusted value, safe to quote in a sentence.

    Never raises: an integer too long to print, a structure too deep to print, or a
    lone surrogate (which no UTF-8 log or database accepts) becomes something printable.
    """
    try:
        text = value if isinstance(value, str) else str(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


class CronboxError(Exception):
    """Base of every deliberate cronbox error; ``str(err)`` is one user-facing sentence."""


class InvalidInput(CronboxError, ValueError):
    """A value given by a user, an agent or a container is not acceptable."""


class InvalidTimezone(InvalidInput):
    def __init__(self, value: str, source: str | None = None) -> None:
        where = f" (from {source})" if source else ""
        super().__init__(
            f'timezone "{value}"{where} is not a known IANA zone; '
            'use a name such as "Europe/Berlin", "America/New_York" or "UTC"'
        )
        self.value = value
        self.source = source


class InvalidTime(InvalidInput):
    """An instant could not be parsed or is not acceptable."""


class NotATime(InvalidTime):
    """A time that cannot be read; ``field`` names it as the sender knows it."""

    def __init__(self, field: str, given: str, tz: str) -> None:
        super().__init__(
            f'{field} "{given}" is not a time; use ISO-8601 such as 2026-01-15T21:00:00 '
            f"(read in {tz}), add Z or an offset such as +01:00 for an absolute "
            'instant, or say "+10m" or "in 2 hours"'
        )
        self.field = field
        self.given = given
        self.tz = tz


class TimeInPast(InvalidTime):
    """A one-time instant before now. It carries the value as given, the instant it was
    read as and the zone it was read in, so that each user-facing layer can word it in
    its own terms (``processAfter`` for an agent, ``--at`` on the command line)."""

    def __init__(self, sentence: str, *, given: str, when: datetime, now: datetime, tz: str):
        super().__init__(sentence)
        self.given = given
        self.when = when
        self.now = now
        self.tz = tz


class InvalidRecurrence(InvalidInput):
    """A cron expression or @every duration is malformed or fires too often."""


class InvalidAction(InvalidInput):
    """A system action a container wrote is unknown or has bad arguments."""


class RunnerConfigError(InvalidInput):
    """A runner setting (a ``CRONBOX_*`` variable the host renders for a runner and its
    MCP server) is missing or holds a bad value, or the session cannot be reached."""


class ToolConfigError(RunnerConfigError):
    """The MCP server's environment does not name a usable session directory."""


class UnknownRunnerSetting(CronboxError, ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} is not a runner setting; a runner's environment holds only what "
            "RunnerSettings names, so add it there first"
        )
        self.name = name


class InvalidSecret(InvalidInput):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f'secret "{name[:80]}" {why}; rename it in the agent profile')
        self.name = name


class UnknownProvider(CronboxError, LookupError):
    def __init__(self, name: str, known: list[str], variable: str) -> None:
        super().__init__(
            f'unknown agent provider "{name}"; set {variable} to one of: ' + ", ".join(known)
        )
        self.name = name


class HomeNotFound(CronboxError, LookupError):
    """A command that only reads (or needs an existing session) found no ``cronbox.db``."""

    def __init__(self, home: str) -> None:
        super().__init__(
            f"no cronbox home at {home}; create a session with cronbox session create, "
            "or check --home"
        )
        self.home = home


class SessionNotFound(CronboxError, LookupError):
    def __init__(self, ref: str) -> None:
        super().__init__(f'no session named or with id "{ref}"; `cronbox session list` shows them')
        self.ref = ref


class SessionExists(CronboxError, ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f'a session named "{name}" already exists; pick another name')
        self.name = name


class TaskNotFound(CronboxError, LookupError):
    def __init__(self, ref: str) -> None:
        super().__init__(
            f'no task with id or series id "{ref}"; `cronbox task list --all` shows them'
        )
        self.ref = ref


class TaskIdTaken(CronboxError, ValueError):
    """A task id given with a schedule request belongs to a task that has ended."""

    def __init__(self, task_id: str, state: str | None) -> None:
        what = f"a task that is {state}" if state else "an earlier task"
        super().__init__(f'task id "{task_id}" is already used by {what}; choose another id')
        self.task_id = task_id
        self.state = state


class TaskStateError(CronboxError, ValueError):
    """The task exists but is not in a state that allows the action."""


class HasChildren(TaskStateError):
    """A cancel that would leave chained tasks waiting for a parent that never runs."""

    def __init__(self, ref: str, children: list[str]) -> None:
        names = ", ".join(children[:5]) + (
            f" and {len(children) - 5} more" if len(children) > 5 else ""
        )
        super().__init__(
            f'task "{shown(ref, 80)}" has chained tasks waiting for it ({names}); cancel with '
            "--with-children to cancel them too, or cancel them first"
        )
        self.children = children


class TooManyTasks(CronboxError, ValueError):
    def __init__(self, session: str, limit: int) -> None:
        super().__init__(
            f"session {session} already has {limit} live tasks, the limit; "
            "cancel some before scheduling more"
        )


class TooManyWakes(InvalidInput):
    def __init__(self, adding: str, existing: str, limit: int) -> None:
        super().__init__(
            f"this task would wake the agent {adding} a day and the session's tasks "
            f"already do {existing}, over its limit of {limit} wakes a day "
            "(max-wakes-per-day); add a gate script, run it less often, or raise the limit"
        )


class HostAlreadyRunning(CronboxError, RuntimeError):
    def __init__(self, home: str, pid: int | None) -> None:
        who = f" (pid {pid})" if pid else ""
        super().__init__(
            f"another cronbox host{who} is already running on {home}; "
            "stop it first or use a different --home"
        )


class AlreadyHandled(CronboxError, RuntimeError):
    """An outbound row the host has taken in before: it is never applied twice."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"outbound seq {seq} was handled already; nothing was applied again")
        self.seq = seq


class EngineUnavailable(CronboxError, RuntimeError):
    """The Docker engine cannot be reached (at host start, or while serving)."""

    def __init__(self, cause: str) -> None:
        super().__init__(
            f"the Docker engine is not reachable ({cause}); start it (scripts/docker-setup "
            'does) or set CRONBOX_RUNTIME="process"'
        )
        self.cause = cause


class ImageMissing(CronboxError, RuntimeError):
    def __init__(self, image: str) -> None:
        super().__init__(
            f'the agent image "{image}" is not built; build it with: cronbox image build'
        )
        self.image = image


class ImageBuildFailed(CronboxError, RuntimeError):
    def __init__(self, image: str, cause: str) -> None:
        super().__init__(f'building the agent image "{image}" failed: {cause}')
        self.image = image


class UnknownRuntime(CronboxError, ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f'unknown runtime "{name}"; CRONBOX_RUNTIME must be "process" or "docker"')
        self.name = name


class RunnerStartFailed(CronboxError, RuntimeError):
    def __init__(self, session_id: str, cause: str) -> None:
        super().__init__(f"could not start the agent runner of session {session_id}: {cause}")
        self.session_id = session_id


class Rejected(CronboxError, ValueError):
    """An outbound row the host cannot accept (the agent is told this sentence)."""


class UnknownAgent(InvalidInput):
    """A session names an agent profile no runner can serve."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f'unknown agent profile "{shown(name)}"; use one of: {", ".join(known)}')
        self.name = name


class AgentConfigError(InvalidInput):
    """``agents.toml`` cannot be read, or one of its profiles is not valid."""


class MissingAgentKey(InvalidInput):
    """A profile names a key variable the host's environment does not set."""

    def __init__(self, name: str, variable: str) -> None:
        super().__init__(
            f"agent profile {shown(name)} reads its API key from {variable}, which is not set "
            "in the host's environment; export it before starting the host"
        )
        self.name = name
        self.variable = variable


class ProviderError(CronboxError, RuntimeError):
    """A model or agent program failed to answer (its own error text, one sentence)."""


class RunNotFound(CronboxError, LookupError):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"no run with id {run_id}; `cronbox task history ID` shows a task's runs")
        self.run_id = run_id


class InsecureBind(CronboxError, ValueError):
    """The HTTP API would listen beyond this machine with no API key to guard it."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"CRONBOX_HTTP_HOST {host} is reachable from other machines and no "
            "CRONBOX_API_KEY is set; set an API key, or bind to 127.0.0.1"
        )
        self.host = host


class HttpUnavailable(CronboxError, OSError):
    """The HTTP API cannot listen where it was told to."""

    def __init__(self, host: str, port: int, why: str) -> None:
        super().__init__(
            f"cannot serve the HTTP API on {host}:{port} ({why}); set CRONBOX_HTTP_PORT "
            "to a free port, or 0 to turn the API off"
        )


class OutboxUnreadable(CronboxError, OSError):
    """A session's ``outbox/`` cannot be read safely: it was written by an untrusted
    runner and is corrupt, of the wrong type, a symbolic link, oversize, locked or left
    mid-write. ``transient`` marks a state a live writer passes through (a lock held
    for a moment), which is retried before it counts against the session."""

    def __init__(self, reason: str, *, transient: bool = False, hot_journal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.hot_journal = hot_journal
