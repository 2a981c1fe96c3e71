"""The ``cronbox`` command line (SPEC §6.2): typer commands over the store.

This module only parses arguments, calls the service layer (:mod:`host.service`) and renders the
result (rich tables, or JSON with ``--json``). It is also the user-facing boundary for
errors: a ``CronboxError`` raised anywhere below becomes one sentence on stderr and
exit code 2; nothing else here catches broadly.

Extending: commands of the host daemon (``run``, ``status``, ``task run``) register on
``app`` and ``task_app`` like the ones below, take ``home: HomeOption`` and
``as_json: JsonOption``, get their store from :func:`open_store` (which needs an
existing home unless the command makes one) and print with :func:`stdout_console` /
:func:`print_json`. Click's usage errors, flag ranges and undecodable argument bytes are
turned into the same one-line ``error: …`` by :class:`CronboxGroup` and
:class:`CronboxCommand`, naming the flag as the user typed it.
"""

from __future__ import annotations

import copy
import getpass
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import typer
from pydantic import ValidationError
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text
from typer._click.core import ParameterSource
from typer._click.exceptions import (
    BadParameter,
    MissingParameter,
    NoArgsIsHelpError,
    UsageError,
)
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.main import get_command_from_info, get_command_name, get_group_from_info
from typer.models import TyperInfo

from cronbox_shared.errors import (
    CronboxError,
    HasChildren,
    InvalidInput,
    InvalidTime,
    NotATime,
    TimeInPast,
    shown,
)
from cronbox_shared.models import (
    MAX_PROMPT_BYTES,
    MAX_SCRIPT_BYTES,
    InboundMessage,
    MessageKind,
    MessageStatus,
    MissedPolicy,
    RunOutcome,
    preview,
)
from cronbox_shared.policies import (
    DEFAULT_CATCHUP_LIMIT,
    DEFAULT_MAX_FAILURES,
    MAX_CATCHUP_LIMIT,
    MAX_JITTER,
    MAX_MAX_FAILURES,
    describe_policies,
    due_at,
)
from cronbox_shared.recurrence import (
    fire_times,
    parse_recurrence,
    recurrence_warnings,
    stored_recurrence,
)
from cronbox_shared.tasks import (
    COST_HINT,
    MAX_GRACE,
    MAX_TIMEOUT,
    OperatorUpdateRequest,
    ScheduleRequest,
    parse_when,
    schedule_notes,
)
from cronbox_shared.timeutil import fmt, parse_utc, resolve_host_timezone, zone
from host.logs import JsonFormatter, LogFormat, PlainFormatter
from host.store.records import MAX_PAGE, PAGE_SIZE, LogEntry, Run, Session, TaskFilter, TaskView

if TYPE_CHECKING:
    from host.config import Settings
    from host.reading import Reader
    from host.service import Cronbox
    from host.views import JobOut

# Commands import the service, the response models and the settings when they run, so
# `cronbox --help` and a command's start load only what that command uses.

# Tables are laid out for this width when stdout is not a terminal (pipes, tests), so
# that lines are neither wrapped nor cut at rich's 80-column fallback.
PIPE_WIDTH = 200
EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
NOTHING = "—"
# Rows a streamed listing (--all) prints at a time: a table or a run of JSON objects.
STREAM_CHUNK = 200
T = TypeVar("T")


# The command line as given, kept so that a message can name a flag as it was typed.
ARGV = "cronbox.argv"


class _PlainFlags:
    """Help without a ``<bool>`` type beside flags (``--json``, ``--all``, ``--help``):
    a flag takes no value, so a type there reads as if it wanted one."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""
        return params


class CommandGroup(_PlainFlags, TyperGroup):
    """A group of commands below the root (``session``, ``task``)."""


class CronboxGroup(_PlainFlags, TyperGroup):
    """The root command group: the CLI's error boundary.

    A ``CronboxError`` raised anywhere below, and click's own usage errors (unknown or
    missing options, values of the wrong type), come out as one ``error: …`` line on
    stderr with exit code 2 instead of a traceback or a boxed usage message.
    """

    # ``ctx`` is typer's vendored click Context.
    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        argv = tuple(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            if isinstance(exc, NoArgsIsHelpError):
                raise  # typer prints the help for a bare `cronbox`
            fail(usage_sentence(exc), EXIT_USER_ERROR)
        ctx.meta[ARGV] = argv
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CronboxError as exc:
            fail(str(exc), EXIT_USER_ERROR)
        except UsageError as exc:
            if isinstance(exc, NoArgsIsHelpError):
                raise  # `cronbox task` alone prints the help of `task`
            fail(usage_sentence(exc), EXIT_USER_ERROR)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            fail(f"cannot use{where}: {exc.strerror or exc}", EXIT_ENVIRONMENT_ERROR)


class CronboxCommand(_PlainFlags, TyperCommand):
    """Every leaf command: refuses undecodable text before the command runs.

    Python hands argv bytes that are not UTF-8 over as lone surrogates
    (surrogateescape); no database, log or JSON output accepts those, so every string
    and path argument is checked here, in one place, and nothing is written.
    """

    def invoke(self, ctx: Any) -> Any:
        for param in self.get_params(ctx):
            value = ctx.params.get(param.name or "")
            for item in value if isinstance(value, list | tuple) else (value,):
                if isinstance(item, str | Path) and not _is_utf8(str(item)):
                    raise InvalidInput(
                        f'{param_label(ctx, param)} "{_as_bytes(str(item))}" is not valid '
                        "UTF-8 text; give it in UTF-8 (is the terminal or script using "
                        "another encoding?)"
                    )
        return super().invoke(ctx)


class CronboxTyper(typer.Typer):
    """A typer app whose commands are CronboxCommands unless told otherwise."""

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls or CronboxCommand, **kwargs)

    def lazy_command(self) -> TyperGroup:
        """This app as click commands, as ``typer.main.get_command`` makes them, except that
        each command and group is made the first time it is looked up.

        Making one means reading its function's signature and annotations: for all of
        cronbox's commands that is about 30 ms, which every call of ``cronbox`` paid
        although it runs one. ``--help`` looks up every command of its group.
        """
        assert not self._add_completion, "completion options are made eagerly by typer"
        return _lazy_group(TyperInfo(self), self)


class _Pending:
    """A command of a :class:`LazyCommands` not made yet."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


class LazyCommands(MutableMapping[str, Any]):
    """A group's commands by name, in the order they were defined, each made on first use."""

    def __init__(self, pending: dict[str, Callable[[], Any]]) -> None:
        self._commands: dict[str, Any] = {n: _Pending(make) for n, make in pending.items()}

    def __getitem__(self, name: str) -> Any:
        command = self._commands[name]
        if isinstance(command, _Pending):
            command = self._commands[name] = command.make()
        return command

    def __setitem__(self, name: str, command: Any) -> None:
        self._commands[name] = command

    def __delitem__(self, name: str) -> None:
        del self._commands[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._commands)

    def __len__(self) -> int:
        return len(self._commands)


def _lazy_group(info: TyperInfo, root: typer.Typer) -> TyperGroup:
    """The group ``info`` describes, made by typer without its commands, which it gets as
    :class:`LazyCommands`: each made by typer's own function when first looked up."""
    app = info.typer_instance
    assert app is not None
    bare = copy.copy(app)
    bare.registered_commands, bare.registered_groups = [], []
    shell = copy.copy(info)
    shell.typer_instance = bare
    options: dict[str, Any] = {
        "pretty_exceptions_short": root.pretty_exceptions_short,
        "rich_markup_mode": root.rich_markup_mode,
    }
    group = get_group_from_info(shell, suggest_commands=root.suggest_commands, **options)
    pending: dict[str, Callable[[], Any]] = {}
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or get_command_name(command.callback.__name__)
        pending[name] = partial(get_command_from_info, command, **options)
    for sub in app.registered_groups:
        assert isinstance(sub.name, str), "every group of cronbox is added with its name"
        pending[sub.name] = partial(_lazy_group, sub, root)
    group.commands = LazyCommands(pending)
    return group


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_bytes(text: str) -> str:
    """Undecodable argv text shown as the bytes it came from: ``caf\\xe9``."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return shown(raw)


def typed_flag(ctx: Any, param: Any) -> str:
    """The spelling of an option the user typed (``-n`` or ``--count``), else its longest."""
    opts: list[str] = list(param.opts)
    argv: tuple[str, ...] = ctx.meta.get(ARGV, ())
    for arg in reversed(argv):
        for opt in opts:
            short = not opt.startswith("--")
            if arg == opt or arg.startswith(opt + "=") or (short and arg.startswith(opt)):
                return opt
    return max(opts, key=len)


def param_label(ctx: Any, param: Any) -> str:
    """How a message names a parameter: ``--prompt``, or ``the TEXT argument``."""
    if getattr(param, "param_type_name", "") == "option":
        return typed_flag(ctx, param)
    return f"the {(param.name or 'value').upper()} argument"


def typed_value(ctx: Any, param: Any) -> str | None:
    """The text the user gave an option (the argument after its flag), if it is found."""
    argv: tuple[str, ...] = ctx.meta.get(ARGV, ())
    flag = typed_flag(ctx, param)
    for i in range(len(argv) - 1, -1, -1):
        if argv[i].startswith(flag + "="):
            return argv[i].removeprefix(flag + "=")
        if argv[i] == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def usage_sentence(exc: UsageError) -> str:
    """click's usage error as one sentence that points at the command's --help."""
    ctx = exc.ctx
    if isinstance(exc, MissingParameter) and exc.param is not None and ctx is not None:
        text = f"{param_label(ctx, exc.param)} is missing"
    elif isinstance(exc, BadParameter) and exc.param is not None and ctx is not None:
        label = param_label(ctx, exc.param)
        given = typed_value(ctx, exc.param) if label.startswith("-") else None
        shown_value = f' "{shown(given)}"' if given is not None else ""
        why = exc.message[:1].lower() + exc.message[1:]
        text = f"{label}{shown_value} is not valid: {why}"
    else:
        text = exc.format_message()
    parts = [p.strip() for p in " ".join(text.split()).rstrip(".").split(". ")]
    text = "; ".join(p[:1].lower() + p[1:] for p in parts if p)
    if text.endswith("?"):
        return text  # click's "did you mean …?" already says how to fix it
    where = ctx.command_path if ctx is not None else "cronbox"
    return f"{text}; see `{where} --help`"


def _span(seconds: int) -> str:
    """``366 days``, ``1 day``, ``2 hours``: a limit in the largest whole unit."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable: every whole number of seconds is whole seconds")


def seconds_option(
    low: int, high: int, small: str
) -> Callable[[typer.Context, typer.CallbackParam, int | None], int | None]:
    """A callback refusing a number of seconds outside ``low``-``high``, naming the flag."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: int | None) -> int | None:
        if value is None or low <= value <= high:
            return value
        flag = typed_flag(ctx, param)
        if value > high:
            raise InvalidInput(
                f"{flag} {value} is too long; give at most {high} seconds ({_span(high)})"
            )
        raise InvalidInput(
            f"{flag} {value} is {small}; give {low} to {high} seconds (up to {_span(high)})"
        )

    return check


def number_option(
    low: int, high: int
) -> Callable[[typer.Context, typer.CallbackParam, int | None], int | None]:
    """A callback refusing a count outside ``low``-``high``, naming the flag."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: int | None) -> int | None:
        if value is None or low <= value <= high:
            return value
        flag = typed_flag(ctx, param)
        raise InvalidInput(f"{flag} {value} is out of range; give {low} to {high}")

    return check


MAX_PREVIEW = 1000


def count_option(ctx: typer.Context, param: typer.CallbackParam, value: int) -> int:
    """``cron -n``: how many fire times, 1 to MAX_PREVIEW."""
    if 1 <= value <= MAX_PREVIEW:
        return value
    flag = typed_flag(ctx, param)
    raise InvalidInput(
        f"{flag} {value} is out of range; give a count of fire times from 1 to {MAX_PREVIEW}"
    )


app = CronboxTyper(
    cls=CronboxGroup,
    name="cronbox",
    help="cronbox: a scheduler runtime that lets AI agents act on time.",
    no_args_is_help=True,
    add_completion=False,
)
session_app = CronboxTyper(
    cls=CommandGroup,
    help="Create and list sessions (one agent conversation each).",
    no_args_is_help=True,
)
task_app = CronboxTyper(
    cls=CommandGroup,
    help="Schedule, inspect and change the tasks of sessions.",
    no_args_is_help=True,
)


def _print_version(value: bool) -> None:
    if value:
        # Only here: importing it costs every other command 10 ms.
        from importlib.metadata import version as package_version

        typer.echo(f"cronbox {package_version('cronbox')}")
        raise typer.Exit()


@app.callback()
def cronbox_root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print cronbox's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """cronbox: a scheduler runtime that lets AI agents act on time."""


jobs_app = CronboxTyper(
    cls=CommandGroup,
    help="The host's background jobs: backup, cleanup, stale-check.",
    invoke_without_command=True,
)


app.add_typer(session_app, name="session")
app.add_typer(task_app, name="task")
image_app = CronboxTyper(
    cls=CommandGroup, help="Build the agent image the docker runtime starts.", no_args_is_help=True
)
app.add_typer(image_app, name="image")
agent_app = CronboxTyper(
    cls=CommandGroup,
    help="Agent profiles of $CRONBOX_HOME/agents.toml: list them, try one.",
    no_args_is_help=True,
)
app.add_typer(agent_app, name="agent")
app.add_typer(jobs_app, name="jobs")

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="cronbox's data directory (default: $CRONBOX_HOME, else $XDG_DATA_HOME/cronbox).",
        file_okay=False,
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table."),
]
TIMEZONE_HELP = "IANA zone such as America/New_York (default: the host's zone, from TZ)."
NetworkOption = Annotated[
    str | None,
    typer.Option(
        "--network", help='Docker network of its containers: "none" or a network name '
        "(default: $CRONBOX_DOCKER_NETWORK, none).", show_default=False,
    ),
]  # fmt: skip
MemoryOption = Annotated[
    str | None,
    typer.Option(
        "--memory", help="Memory limit of its containers, e.g. 256m or 1g, no swap "
        "(default: $CRONBOX_DOCKER_MEMORY, 512m).", show_default=False,
    ),
]  # fmt: skip
CpusOption = Annotated[
    float | None,
    typer.Option(
        "--cpus", help="CPUs its containers may use (default: $CRONBOX_DOCKER_CPUS, 1).",
        show_default=False,
    ),
]  # fmt: skip
PidsOption = Annotated[
    int | None,
    typer.Option(
        "--pids", help="Most processes in one of its containers (default: "
        "$CRONBOX_DOCKER_PIDS, 256).", show_default=False,
    ),
]  # fmt: skip

# --- plumbing ---------------------------------------------------------------------------


def fail(sentence: str, code: int) -> NoReturn:
    """Print ``error: <sentence>`` on stderr as one line and exit with ``code``."""
    line = Text("error: ", style="bold red")
    line.append(sentence)
    stderr_console().print(line, soft_wrap=True)
    raise typer.Exit(code)


def _console(stream: Any, stderr: bool) -> Console:
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, width=width, highlight=False)


def stdout_console() -> Console:
    """A console on the current stdout (looked up per call so test runners can swap it)."""
    return _console(sys.stdout, stderr=False)


def stderr_console() -> Console:
    return _console(sys.stderr, stderr=True)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def load_settings(warn: Callable[[str], None] | None = None) -> Settings:
    """The host settings; a bad ``CRONBOX_*`` value becomes one InvalidInput sentence.

    An unknown ``CRONBOX_*`` name in the environment or ``.env`` (a typo pydantic-settings
    would silently ignore) is warned about once per process, with ``warn`` (the host's
    log) or as a ``warning:`` line on stderr.
    """
    from host.config import Settings
    from host.environ import not_utf8

    _warn_unknown_settings(warn)
    try:
        return Settings()
    except UnicodeDecodeError as exc:
        raise not_utf8(exc) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "CRONBOX_" + "_".join(str(p) for p in err["loc"]).upper()
        raise InvalidInput(f"{name} is not valid: {err['msg']}") from None


_warned: set[str] = set()


def _warn_unknown_settings(warn: Callable[[str], None] | None) -> None:
    from host.environ import configured_names, known_setting_names, unknown_setting_warnings

    names = configured_names(os.environ)
    for warning in unknown_setting_warnings(names, known_setting_names()):
        if warning not in _warned:
            _warned.add(warning)
            if warn is None:
                typer.echo(f"warning: {warning}", err=True)
            else:
                warn(warning)


def open_store(home: Path | None, *, create: bool = False) -> Cronbox:
    """The service over ``home`` (default from the settings), with the configured limits.

    Only commands that make a home pass ``create``; every other one needs an existing
    home and fails with HomeNotFound instead of leaving an empty one behind (a typo in
    --home would otherwise look like a home without sessions).
    """
    from host.service import Cronbox

    settings = load_settings()
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    return Cronbox.from_settings(settings, create=create)


def open_reader(home: Path | None) -> Reader:
    """The read side of an existing ``home`` (default ``CRONBOX_HOME``, read as the settings
    read it), for a command that reads only the central index: it starts without
    importing the write side."""
    from host.environ import configured_home
    from host.reading import Reader

    # The home is the one setting such a command uses: the others are left to the
    # commands that use them (importing the settings' validation costs 30 ms).
    _warn_unknown_settings(None)
    return Reader(configured_home(os.environ) if home is None else home, create=False)


NO_HOST_NOTE = "note: no cronbox host is running on this home; start one with cronbox run"


def advise(notes: Sequence[str]) -> None:
    """Tell the user on stderr what their task or expression does that may surprise
    them, or costs more than it needs to (a note, not an error)."""
    for note in notes:
        typer.echo(f"{'hint' if note == COST_HINT else 'warning'}: {note}", err=True)


def note_if_no_host(home: Path) -> None:
    """After queueing work: say on stderr when no host holds ``home``'s lock, since
    nothing will run until one starts (a note, not an error)."""
    from host.status import host_alive

    if not host_alive(home):
        typer.echo(NO_HOST_NOTE, err=True)


def read_text_file(
    path: Path, flag: str, noun: str, wanted: tuple[str, str], limit: int = MAX_PROMPT_BYTES
) -> str:
    """The UTF-8 text of the ``noun`` file ``flag`` names; an unusable file is a user mistake.

    At most ``limit`` bytes are read, and only from a regular file: a device or a named
    pipe is refused before anything is read from it (``/dev/zero`` would never end, a
    pipe with no writer would hang). ``wanted`` says what to give instead of a
    directory, and of a file that is not UTF-8.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise InvalidInput(f'{flag} "{path}" is a directory; give {wanted[0]}') from None
    except OSError as exc:
        raise InvalidInput(
            f'cannot read {noun} file "{path}": {exc.strerror or exc}; give a readable file'
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidInput(f'{flag} "{path}" is a directory; give {wanted[0]}')
        if not stat.S_ISREG(mode):
            raise InvalidInput(
                f'{flag} "{path}" is not a regular file (a device or a pipe); give {wanted[0]}'
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(
            f'cannot read {noun} file "{path}": {exc.strerror or exc}; give a readable file'
        ) from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise InvalidInput(f'{noun} file "{path}" is over {limit // 1024} KiB; shorten it')
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f'{noun} file "{path}" is not UTF-8 text; give {wanted[1]}') from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


def read_script(path: Path) -> str:
    """The text of a gate script file."""
    return read_text_file(
        path, "--script", "script", ("the path of a bash script file", "a bash script"),
        MAX_SCRIPT_BYTES,
    )  # fmt: skip


def read_prompt(prompt: str | None, prompt_file: Path | None, *, required: bool) -> str | None:
    """The prompt from ``--prompt`` or ``--prompt-file`` (``-`` reads stdin); one at most."""
    if prompt is not None and prompt_file is not None:
        raise InvalidInput("--prompt and --prompt-file contradict each other; give one of them")
    if prompt_file is None:
        if prompt is None and required:
            raise InvalidInput(
                "--prompt is missing; see `cronbox task schedule --help` "
                "(give --prompt TEXT or --prompt-file FILE)"
            )
        return prompt
    if str(prompt_file) == "-":
        try:
            return sys.stdin.read(MAX_PROMPT_BYTES + 1)  # the check says when it is over
        except UnicodeDecodeError:
            raise InvalidInput("the prompt on stdin is not UTF-8 text; give it in UTF-8") from None
    return read_text_file(prompt_file, "--prompt-file", "prompt", ("a text file", "a text file"))


@contextmanager
def at_flag_terms(fix: str) -> Iterator[None]:
    """Reword the validation's errors about ``processAfter`` in terms of ``--at``.

    ``fix`` ends the sentence for a one-time ``--at`` in the past.
    """
    try:
        yield
    except TimeInPast as exc:
        tz = zone(exc.tz)
        raise InvalidTime(
            f'--at "{shown(exc.given)}" is in the past: it means {local_time(exc.when, tz)}, '
            f"and now is {local_time(exc.now, tz)}; {fix}"
        ) from None
    except NotATime as exc:
        raise NotATime("--at", exc.given, exc.tz) from None


# --- rendering --------------------------------------------------------------------------


def local_time(when: datetime, tz: ZoneInfo) -> str:
    """``2026-01-15 09:00 EST`` (seconds shown only when not zero)."""
    local = when.astimezone(tz)
    pattern = "%Y-%m-%d %H:%M:%S %Z" if local.second else "%Y-%m-%d %H:%M %Z"
    return local.strftime(pattern)


def relative(when: datetime, now: datetime) -> str:
    """``in 14 hours`` / ``3 minutes ago`` / ``now``."""
    import humanize

    delta = when - now
    if abs(delta) < timedelta(seconds=1):
        return "now"
    words = humanize.naturaldelta(_rounded(abs(delta)))
    return f"in {words}" if delta > timedelta(0) else f"{words} ago"


def _rounded(span: timedelta) -> timedelta:
    """``span`` to the nearest unit it is shown in: humanize rounds hours and minutes but
    truncates days, so a week ahead, a moment old, would read "6 days"."""
    unit = timedelta(days=1) if span >= timedelta(days=1) else timedelta(seconds=1)
    return round(span / unit) * unit


def when_cell(stored: str | None, tz: ZoneInfo, now: datetime) -> str:
    """A stored instant as local time plus how far it is from now."""
    if stored is None:
        return NOTHING
    when = parse_utc(stored)
    return f"{local_time(when, tz)} ({relative(when, now)})"


def task_json(view: TaskView) -> dict[str, Any]:
    """The JSON shape of a task series (``task schedule``, ``task list`` and friends)."""
    from host.views import TaskOut

    return TaskOut.of(view).model_dump(mode="json")


def status_cell(view: TaskView) -> str:
    """A task's status, and why when it is paused for a reason."""
    if view.paused_reason:
        return f"{view.status.value}: {one_line(view.paused_reason, 40)}"
    return view.status.value


def session_json(session: Session) -> dict[str, Any]:
    return session.model_dump(mode="json")


def show_session(verb: str, session: Session, as_json: bool) -> None:
    """One line after a session command, e.g. ``created session work (id …, agent echo, …)``."""
    from host.limits import ContainerLimits

    if as_json:
        print_json(session_json(session))
        return
    details = [f"id {session.id}", f"agent {session.agent}", f"timezone {session.timezone}"]
    if session.quiet:
        details.append(f"quiet hours {session.quiet}")
    if session.max_wakes_per_day:
        details.append(f"at most {session.max_wakes_per_day} wakes a day")
    limits = ContainerLimits.of(session.container).describe()
    if limits:
        details.append(limits)
    stdout_console().print(
        Text(f"{verb} session {session.name} ({', '.join(details)})"), soft_wrap=True
    )


def schedule_cell(recurrence: str | None, view: TaskView | None = None) -> str:
    """A task's schedule in words: its recurrence, or for a chained task its parent, and
    whether each run needs approval."""
    if view is not None and view.after_task:
        text = f"after {view.after_task} on {view.after_outcome or 'ok'}"
        if view.when_output:
            text += f", when output {view.when_output}"
    elif recurrence is None:
        text = "once"
    else:
        from host.reading import describe_recurrence

        text = f"{recurrence} ({describe_recurrence(recurrence)})"
    return text + ("; needs approval" if view is not None and view.approval else "")


def last_run_cell(view: TaskView) -> str:
    if view.last_run_at is None:
        return NOTHING
    when = local_time(parse_utc(view.last_run_at), zone(view.timezone))
    return f"{when} {outcome_word(view.last_outcome)}"


def outcome_word(outcome: RunOutcome | None) -> str:
    """A run's outcome in the words of task statuses: an ``error`` run shows as ``failed``.

    Only the rendering says ``failed``; JSON keeps the stored value.
    """
    if outcome is None:
        return "running"
    return "failed" if outcome is RunOutcome.ERROR else outcome.value


def one_line(text: str | None, limit: int) -> str:
    """A preview cell: whitespace (newlines too) collapsed to single spaces, then cut."""
    return preview(" ".join((text or "").split()), limit) or ""


def fit_columns(
    console: Console,
    build: Callable[[frozenset[str]], Table],
    optional: Sequence[str],
) -> Table:
    """The table from ``build`` with the fewest ``optional`` columns dropped so it fits.

    Columns that must stay whole (ids) do not wrap; the others wrap as far as rich
    allows, and when even that is too wide the optional columns go, in the given order.
    """
    # Measured without the console's limit, which Measurement.get would clamp it to.
    unbounded = console.options.update(max_width=10**6)
    dropped: frozenset[str] = frozenset()
    table = build(dropped)
    for name in optional:
        # Measuring a page of tasks costs a third of rendering it; a table that fits
        # with every cell on one line needs no measure.
        if (
            unwrapped_width(table) <= console.width
            or Measurement.get(console, unbounded, table).minimum <= console.width
        ):
            break
        dropped |= {name}
        table = build(dropped)
    return table


def unwrapped_width(table: Table) -> int:
    """The width of ``table`` with no cell wrapped: its widest layout, never less than
    what rich measures as its maximum (cells other than text count as unbounded)."""
    _top, right, _bottom, left = table.padding
    width = len(table.columns) + 1  # the rules between columns and at the edges
    for column in table.columns:
        cells = [column.header, *column.cells]
        if not all(isinstance(c, str | Text) for c in cells):
            return sys.maxsize
        widest = max(cell_len(line) for c in cells for line in str(c).split("\n"))
        width += max(widest, column.min_width or 0) + left + right
    return width


def id_column(header: str, width: int) -> Column:
    """A column of ids: never truncated and never wrapped, the width of its widest id."""
    return Column(header, no_wrap=True, overflow="fold", min_width=width)


def render_tasks(views: Sequence[TaskView], now: datetime, console: Console) -> Table:
    id_width = max(len(v.series_id) for v in views)
    name_width = max(len(v.session) for v in views)

    def build(dropped: frozenset[str]) -> Table:
        columns = [
            id_column("task", id_width),
            Column("session", overflow="fold", min_width=min(name_width, 12)),
            Column("status", min_width=9),
            Column("schedule"),
            Column("next run", min_width=10),
            Column("last run", min_width=10),
            Column("prompt", min_width=8, overflow="ellipsis"),
        ]
        table = Table(*(c for c in columns if c.header not in dropped))
        for view in views:
            tz = zone(view.timezone)
            cells = {
                "task": view.series_id,
                "session": view.session,
                "status": status_cell(view),
                "schedule": schedule_cell(view.recurrence, view),
                "next run": when_cell(view.next_run, tz, now),
                "last run": last_run_cell(view),
                "prompt": one_line(view.prompt, 40),
            }
            table.add_row(*(Text(v) for k, v in cells.items() if k not in dropped))
        return table

    return fit_columns(console, build, ("prompt", "last run", "schedule", "next run"))


def describe_task(verb: str, view: TaskView, now: datetime) -> Text:
    """One line after a task action, e.g. ``scheduled task-1 in work: next run ...``."""
    tz = zone(view.timezone)
    status = view.status.value + (f": {view.paused_reason}" if view.paused_reason else "")
    text = f"{verb} task {view.series_id} in session {view.session} ({status})"
    if view.next_run:
        text += f"; next run {when_cell(view.next_run, tz, now)}"
    text += f"; {schedule_cell(view.recurrence, view)}"
    return Text(text)


def show_task(verb: str, view: TaskView, store: Cronbox, as_json: bool) -> None:
    if as_json:
        print_json(task_json(view))
    else:
        stdout_console().print(describe_task(verb, view, store.now()), soft_wrap=True)


# --- sessions ---------------------------------------------------------------------------


@session_app.command("create")
def session_create(
    name: Annotated[str, typer.Argument(help="Unique session name (no spaces).")],
    agent: Annotated[
        str, typer.Option("--agent", help="Agent profile that answers in this session.")
    ] = "echo",
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="Session zone for its tasks. " + TIMEZONE_HELP),
    ] = None,
    network: NetworkOption = None,
    memory: MemoryOption = None,
    cpus: CpusOption = None,
    pids: PidsOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a session: its directory, inbox and entry in the registry."""
    from host.limits import ContainerLimits

    store = open_store(home, create=True)
    limits = ContainerLimits(network=network, memory=memory, cpus=cpus, pids=pids)
    session = store.create_session(name, agent=agent, timezone=timezone, limits=limits)
    show_session("created", session, as_json)


@session_app.command("list")
def session_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List every session with its agent, timezone and next due work."""
    store = open_store(home)
    sessions = store.list_sessions()
    if as_json:
        print_json([session_json(s) for s in sessions])
        return
    console = stdout_console()
    if not sessions:
        console.print("no sessions yet; `cronbox session create NAME` makes one", markup=False)
        return
    now = store.now()
    table = Table("name", "id", "agent", "timezone", "quiet", "next due")
    for s in sessions:
        cells = (s.name, s.id, s.agent, s.timezone, s.quiet or NOTHING,
                 when_cell(s.next_due_at, zone(s.timezone), now))  # fmt: skip
        table.add_row(*(Text(c, no_wrap=True) for c in cells))
    console.print(table)


@agent_app.command("list")
def agent_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List the agent profiles of agents.toml and the built-in ones."""
    from cronbox_shared.agents import BUILTIN_AGENTS

    store = open_store(home, create=True)
    profiles = store.agent_profiles()
    rows = [
        {"name": name, "provider": p.provider, "model": p.model, "base_url": p.base_url,
         "api_key_env": p.api_key_env,
         "key_set": bool(p.api_key_env and os.environ.get(p.api_key_env, "").strip()),
         "builtin": False}
        for name, p in sorted(profiles.items())
    ]  # fmt: skip
    rows += [
        {"name": name, "provider": name, "model": None, "base_url": None,
         "api_key_env": None, "key_set": False, "builtin": True}
        for name in BUILTIN_AGENTS if name not in profiles
    ]  # fmt: skip
    if as_json:
        print_json(rows)
        return
    table = Table("name", "provider", "model", "base url", "key")
    for row in rows:
        key = row["api_key_env"]
        key_cell = f"{key} ({'set' if row['key_set'] else 'NOT SET'})" if key else NOTHING
        model = row["model"] or ("built in" if row["builtin"] else NOTHING)
        cells = (row["name"], row["provider"], model, row["base_url"] or NOTHING, key_cell)
        table.add_row(*(Text(str(c), no_wrap=True) for c in cells))
    stdout_console().print(table)


@agent_app.command("check")
def agent_check(
    profile: Annotated[str, typer.Argument(help="Profile name from agents.toml.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make one minimal call through the profile and say whether it answered."""
    import anyio

    from agent_runner.check import check_profile

    store = open_store(home, create=True)
    agent = store.agent_profile(profile)
    sentence = anyio.run(check_profile, agent, dict(os.environ))
    if as_json:
        print_json({"profile": profile.strip(), "ok": True, "detail": sentence})
        return
    stdout_console().print(f"profile {profile.strip()}: {sentence}", markup=False)


@session_app.command("update")
def session_update(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="Agent profile that answers from now on.")
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="Zone for tasks scheduled from now on. " + TIMEZONE_HELP),
    ] = None,
    quiet: Annotated[
        str | None,
        typer.Option(
            "--quiet",
            help="Quiet hours such as 22:00-07:00 in the session's zone: task runs due inside "
            "wait for the window's end (chat is answered at once); off clears them.",
        ),
    ] = None,
    max_wakes_per_day: Annotated[
        int | None,
        typer.Option(
            "--max-wakes-per-day",
            help="Refuse to schedule a task that would take the session's tasks past this "
            "many agent wakes a day (tasks with a gate script count none); 0: no limit.",
        ),
    ] = None,
    network: NetworkOption = None,
    memory: MemoryOption = None,
    cpus: CpusOption = None,
    pids: PidsOption = None,
    webhook: Annotated[
        str | None,
        typer.Option("--webhook", help="Also POST this session's replies as JSON to this URL."),
    ] = None,
    webhook_secret_env: Annotated[
        str | None,
        typer.Option(
            "--webhook-secret-env",
            help="Host environment variable holding the secret the webhook's "
            "X-Cronbox-Signature (HMAC-SHA256) is made with.",
        ),
    ] = None,
    clear_webhook: Annotated[
        bool, typer.Option("--clear-webhook", help="Stop sending replies to a webhook.")
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a session's agent profile, default timezone (existing tasks keep theirs) or
    quiet hours, container limits (from its next container on) or webhook."""
    from host.limits import ContainerLimits

    store = open_store(home)
    limits = ContainerLimits(network=network, memory=memory, cpus=cpus, pids=pids)
    updated = store.update_session(
        session, agent=agent, timezone=timezone, quiet=quiet,
        max_wakes_per_day=max_wakes_per_day, limits=limits, webhook=webhook,
        webhook_secret_env=webhook_secret_env, clear_webhook=clear_webhook,
    )  # fmt: skip
    show_session("updated", updated, as_json)


def interactive() -> bool:
    """Whether a person can answer a question on stdin (it is a terminal)."""
    return sys.stdin is not None and sys.stdin.isatty()


def stop_runners(store: Cronbox, session: Session) -> str | None:
    """Stop the session's runner, a local process or a container, and release its lease;
    the runner stopped, or None when it has none running.

    The CLI cannot reach a host's runner objects; a host that is running notices the
    runner gone. Containers are looked for once the home has ever started one (it then
    has a ``host-id``), so that needs the engine.
    """
    import anyio

    from host.runtimes import Runtime
    from host.runtimes.docker import HOME_ID_FILE, DockerConfig, DockerRuntime
    from host.runtimes.process import ProcessRuntime
    from host.sweep import SweepConfig

    runtimes: list[Runtime] = [ProcessRuntime()]
    if (store.home / HOME_ID_FILE).exists():
        runtimes.append(DockerRuntime(DockerConfig.default()))
    stopped = None
    for runtime in runtimes:
        mine = [h for h in anyio.run(runtime.list_own, store.home) if h.session_id == session.id]
        for handle in mine:
            anyio.run(runtime.stop, handle, SweepConfig.stop_grace)
            store.release_lease(session.id, handle.ref)
            stopped = handle.ref
    return stopped


@session_app.command("delete")
def session_delete(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete without asking for confirmation.")
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a session, stopping its runner first; its files move to trash/, its history
    stays. Asks for confirmation unless --yes."""
    store = open_store(home)
    found = store.get_session(session)
    if not yes:
        if not interactive():
            raise InvalidInput(
                f"deleting session {found.name} needs confirmation and stdin is not a "
                "terminal; add --yes to delete it"
            )
        if not typer.confirm(f"Delete session {found.name} ({found.id})?", default=False):
            fail(f"session {found.name} was not deleted", EXIT_USER_ERROR)
    stopped = stop_runners(store, found)
    show_session("deleted", store.delete_session(found.id, stopped_runner=stopped), as_json)


@session_app.command("reset")
def session_reset(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a session's outbox clean, stopping its runner first: the old outbox (a
    quarantined session's bad files) moves to quarantine/ for inspection; the inbox,
    tasks and history stay. A running host lifts the quarantine at its next pass."""
    store = open_store(home)
    found = store.get_session(session)
    stop_runners(store, found)
    aside = store.reset_session(found.id)
    if as_json:
        print_json({"session": found.name, "id": found.id, "kept": str(aside)})
    else:
        typer.echo(f"reset session {found.name}; its old outbox is kept at {aside}")


MAX_WAIT = 86400
POLL_SECONDS = 0.5


ANSWER_WAIT = 60
"""Seconds ``send --wait`` and ``chat`` wait for an answer unless told."""


def answer_timeout(help_text: str) -> Any:
    """The ``--timeout`` option of a command that waits for the agent's answer."""
    return typer.Option(
        "--timeout", callback=seconds_option(1, MAX_WAIT, "too short"), help=help_text,
        show_default=False,
    )  # fmt: skip


def no_answer(limit: int, what: str) -> NoReturn:
    fail(
        f"no answer {what}within {limit} s; is the host running? start it with cronbox run",
        EXIT_ENVIRONMENT_ERROR,
    )


@app.command("send")
def send(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    text: Annotated[str, typer.Argument(help="The chat message for the session's agent.")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait for the agent's answer and print it (needs a host)."),
    ] = False,
    timeout: Annotated[
        int | None,
        answer_timeout(f"With --wait: seconds to wait for the answer (default {ANSWER_WAIT})."),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a chat message to a session's agent (it is due at once)."""
    from host.views import MessageOut

    if timeout is not None and not wait:
        raise InvalidInput("--timeout only applies with --wait; add --wait or drop --timeout")
    store = open_store(home)
    target = store.get_session(session)
    message: InboundMessage = store.send_message(target.id, text)
    if not wait:
        if as_json:
            queued = MessageOut(**message.model_dump(), session=target.name)
            print_json(queued.model_dump(mode="json"))
        else:
            stdout_console().print(
                Text(f"queued message {message.id} for session {target.name}"), soft_wrap=True
            )
        note_if_no_host(store.home)
        return
    limit = ANSWER_WAIT if timeout is None else timeout
    answered = await_answer(store, target.id, message.id, limit)
    if answered is None:
        no_answer(limit, "")
    replies = store.replies(target.id, message.id)
    if as_json:
        print_json({**answered.model_dump(mode="json"), "session": target.name, "replies": replies})
    if answered.status is MessageStatus.FAILED:
        fail(f"the agent could not answer: {answered.error}", EXIT_ENVIRONMENT_ERROR)
    if not as_json:
        console = stdout_console()
        for reply in replies:
            console.print(Text(reply), soft_wrap=True)


@app.command("chat")
def chat(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    timeout: Annotated[
        int | None,
        answer_timeout(
            f"Seconds to wait, after the input ends, for the answers owed (default {ANSWER_WAIT})."
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Chat with a session's agent: each line you type is sent, replies print as they
    arrive; Ctrl-D ends the chat (once the answers owed are in), Ctrl-C at once.

    With --json each reply is one JSON record a line.
    """
    from host.chat import Chat, Heard, run_chat

    store = open_store(home)
    target = store.get_session(session)
    console = stdout_console()
    if interactive():
        console.print(
            Text(f"chatting with session {target.name} (agent {target.agent}); Ctrl-D to end"),
            style="dim",
        )
    note_if_no_host(store.home)
    limit = ANSWER_WAIT if timeout is None else timeout

    def say(heard: Heard) -> None:
        if as_json:  # one record a line, so a reader can parse them as they come
            typer.echo(json.dumps(heard.record(), ensure_ascii=False))
        else:
            console.print(Text(heard.line()), soft_wrap=True)

    def complain(sentence: str) -> None:
        typer.echo(f"error: {sentence}", err=True)

    try:
        done = run_chat(Chat(store, target), sys.stdin, say, complain,
                        wait=limit, poll=POLL_SECONDS)  # fmt: skip
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not done:
        no_answer(limit, "to every message ")


def await_answer(
    store: Cronbox, session_id: str, message_id: str, limit: float
) -> InboundMessage | None:
    """The inbound row once it is finished (completed or failed), or None after ``limit`` s."""
    deadline = time.monotonic() + limit
    while True:
        row = store.message(session_id, message_id)
        if not row.status.live:
            return row
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(POLL_SECONDS, left))


# --- the conversation -------------------------------------------------------------------

WHO = {MessageKind.CHAT: "you", MessageKind.TASK: "task", MessageKind.SYSTEM: "note"}


def entry_state(entry: LogEntry) -> str | None:
    """What became of a message in, in words: a task's outcome, an unanswered chat's status.

    A completed chat or note says nothing: the reply below it is the news.
    """
    if entry.direction == "out":
        return None
    if entry.kind is MessageKind.TASK and entry.outcome is not None:
        return outcome_word(entry.outcome)
    if entry.status is None or (
        entry.kind is not MessageKind.TASK and entry.status is MessageStatus.COMPLETED
    ):
        return None
    return entry.status.value


def render_entry(entry: LogEntry, tz: ZoneInfo) -> Text:
    """``2026-01-15 09:00 EST → you    hello  [pending]`` (← agent for a reply)."""
    when = local_time(parse_utc(entry.at), tz)
    if entry.direction == "out":
        arrow, who, style = "←", "agent", "green"
    else:
        arrow, who, style = "→", WHO[entry.kind], "cyan"
        if entry.kind is MessageKind.CHAT and entry.sender not in (None, "user"):
            who = str(entry.sender)
    line = Text(f"{when} ", style="dim")
    line.append(f"{arrow} {who:<5} ", style=style)
    # Later lines of a long message start under its first, clear of the time column.
    line.append(entry.text.rstrip().replace("\n", "\n" + " " * len(line.plain)))
    state = entry_state(entry)
    if state is not None:
        failed = state in ("failed", "timeout", "missed")
        line.append(f"  [{state}]", style="red" if failed else "yellow")
        if entry.error and failed:
            line.append(f" {entry.error}", style="red")
    return line


def log_count(ctx: typer.Context, param: typer.CallbackParam, value: int) -> int:
    """``log -n``: how many entries, 1 to MAX_PREVIEW."""
    if 1 <= value <= MAX_PREVIEW:
        return value
    flag = typed_flag(ctx, param)
    raise InvalidInput(
        f"{flag} {value} is out of range; give a count of entries from 1 to {MAX_PREVIEW}"
    )


@app.command("log")
def log(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    count: Annotated[
        int,
        typer.Option("-n", "--count", callback=log_count, help="How many of the newest entries."),
    ] = 20,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new entries until Ctrl-C."),
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a session's conversation: messages in and replies out, in time order.

    Chat you sent, the agent's replies, task runs with their outcome and system notes, at
    times in the session's zone. With --follow, --json prints one entry per line.
    """
    store = open_store(home)
    target = store.get_session(session)
    tz = zone(target.timezone)
    console = stdout_console()
    seen: dict[tuple[str, str], str | None] = {}

    def show(entries: Sequence[LogEntry]) -> None:
        for entry in entries:
            key, state = (entry.direction, entry.id), entry_state(entry)
            if key in seen and (state is None or seen[key] == state):
                continue
            seen[key] = state
            if as_json:
                # One record a line while following, so a reader can parse as they come.
                typer.echo(json.dumps(entry.model_dump(mode="json"), ensure_ascii=False))
            else:
                console.print(render_entry(entry, tz), soft_wrap=True)

    entries = store.conversation(target.id, count)
    if as_json and not follow:
        print_json([e.model_dump(mode="json") for e in entries])
        return
    if not entries and not follow and not as_json:
        console.print(Text(f"session {target.name} has no messages yet"))
        return
    show(entries)
    if not follow:
        return
    try:
        while True:
            time.sleep(POLL_SECONDS)
            show(store.conversation(target.id, MAX_PREVIEW))
    except KeyboardInterrupt:
        return


# --- tasks ------------------------------------------------------------------------------

TaskRef = Annotated[str, typer.Argument(help="Task id or series id.")]
AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        help='When to run: ISO time (naive = task zone, or with Z/offset), "+10m", '
        '"in 2 hours" or "now". With --cron, the first run.',
    ),
]
CronOption = Annotated[
    str | None,
    typer.Option(
        "--cron",
        help='Recurrence: 5-field cron such as "0 9 * * MON-FRI", @daily, or "@every 2h".',
    ),
]
ScriptOption = Annotated[
    Path | None,
    typer.Option(
        "--script",
        help="Bash gate script file; its last stdout line decides whether the agent wakes.",
    ),
]
PromptFileOption = Annotated[
    Path | None,
    typer.Option(
        "--prompt-file",
        help='Read the prompt from this UTF-8 file ("-" reads stdin) instead of --prompt.',
    ),
]
MisfireGraceOption = Annotated[
    int | None,
    typer.Option(
        "--misfire-grace",
        callback=seconds_option(0, MAX_GRACE, "negative"),
        help="Seconds a late run may still start; later ones are recorded as missed.",
    ),
]
MissedOption = Annotated[
    MissedPolicy | None,
    typer.Option(
        "--missed",
        help="Slots that passed while nothing ran them (host down): latest runs once for "
        "the latest (default), all runs each in order (up to --catchup-limit), skip runs "
        "none and records them missed.",
    ),
]
CatchupLimitOption = Annotated[
    int | None,
    typer.Option(
        "--catchup-limit",
        callback=number_option(1, MAX_CATCHUP_LIMIT),
        help=f"With --missed all: most missed slots replayed (default "
        f"{DEFAULT_CATCHUP_LIMIT}); older ones are recorded missed.",
    ),
]
MaxFailuresOption = Annotated[
    int | None,
    typer.Option(
        "--max-failures",
        callback=number_option(0, MAX_MAX_FAILURES),
        help=f"Pause the series after this many failed runs in a row (default "
        f"{DEFAULT_MAX_FAILURES}; 0 never pauses).",
    ),
]
JitterOption = Annotated[
    int | None,
    typer.Option(
        "--jitter",
        callback=seconds_option(0, MAX_JITTER, "negative"),
        help="Delay each run by a fixed-per-run amount under this many seconds, so many "
        "tasks on one slot do not all start at once.",
    ),
]
TimeoutOption = Annotated[
    int | None,
    typer.Option(
        "--timeout",
        callback=seconds_option(1, MAX_TIMEOUT, "too short"),
        help="Seconds one run may take.",
    ),
]


def policy_fields(
    missed: MissedPolicy | None, catchup_limit: int | None, max_failures: int | None,
    jitter: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The request fields of the policy flags that were given."""
    given = {"missedPolicy": missed.value if missed else None, "catchupLimit": catchup_limit,
             "maxFailures": max_failures, "jitter": jitter}  # fmt: skip
    return {key: value for key, value in given.items() if value is not None}


def chain_fields(
    after: str | None, on: str | None, when_output: str | None, approval: bool,
    approval_timeout: str | None, on_timeout: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The request fields of the chain and approval flags that were given."""
    given = {"afterTask": after, "afterOutcome": on, "whenOutput": when_output,
             "approval": True if approval else None, "approvalTimeout": approval_timeout,
             "onTimeout": on_timeout}  # fmt: skip
    return {key: value for key, value in given.items() if value is not None}


@task_app.command("schedule")
def task_schedule(
    session: Annotated[str, typer.Argument(help="Session name or id.")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="What the agent should do when the task runs.")
    ] = None,
    prompt_file: PromptFileOption = None,
    at: AtOption = None,
    cron: CronOption = None,
    script: ScriptOption = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone", help="Zone the task's times are read in (default: the session's)."
        ),
    ] = None,
    task_id: Annotated[
        str | None,
        typer.Option("--id", help="Task id to use; scheduling the same id twice is a no-op."),
    ] = None,
    misfire_grace: MisfireGraceOption = None,
    timeout: TimeoutOption = None,
    missed: MissedOption = None,
    catchup_limit: CatchupLimitOption = None,
    max_failures: MaxFailuresOption = None,
    jitter: JitterOption = None,
    ignore_quiet: Annotated[
        bool,
        typer.Option("--ignore-quiet", help="Run in the session's quiet hours too."),
    ] = False,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Chain: run each time this task (id) finishes, instead of --at/--cron.",
        ),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            help="With --after: the parent outcome that fires it: ok "
            "(default), error (error or timeout) or any.",
        ),
    ] = None,
    when_output: Annotated[
        str | None,
        typer.Option(
            "--when-output",
            help="With --after: fire only when the parent's output matches "
            "'contains:TEXT' or 'regex:PATTERN'. {{parent.output}} in the prompt is "
            "replaced by it.",
        ),
    ] = None,
    approval: Annotated[
        bool,
        typer.Option("--approval", help="Each occurrence waits for `task approve` before it runs."),
    ] = False,
    approval_timeout: Annotated[
        str | None,
        typer.Option(
            "--approval-timeout",
            help="With --approval: how long to wait (e.g. 1h; default: until answered).",
        ),
    ] = None,
    on_timeout: Annotated[
        str | None,
        typer.Option("--on-timeout", help="With --approval-timeout: reject (default) or approve."),
    ] = None,
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated",
            help="Run each time in a fresh conversation, without the session's chat history "
            "(the reply still goes to the session).",
        ),
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Schedule a task once (--at), repeating (--cron), or both; or chained after
    another (--after); optionally gated by a person's approval (--approval)."""
    request = ScheduleRequest.parse(
        {
            "taskId": task_id,
            "prompt": read_prompt(prompt, prompt_file, required=True),
            "processAfter": at,
            "recurrence": cron,
            "script": read_script(script) if script is not None else None,
            "timezone": timezone,
            "misfireGrace": misfire_grace,
            "timeout": timeout,
            **policy_fields(missed, catchup_limit, max_failures, jitter),
            **({"ignoreQuiet": True} if ignore_quiet else {}),
            **chain_fields(after, on, when_output, approval, approval_timeout, on_timeout),
            **({"isolated": True} if isolated else {}),
        }
    )
    store = open_store(home)
    with at_flag_terms("give a future time, or add --cron for a repeating task"):
        view = store.schedule_task(session, request)
    show_task("scheduled", view, store, as_json)
    advise(schedule_notes(view.recurrence, view.has_script, zone(view.timezone), store.now()))
    note_if_no_host(store.home)


def page_limit(ctx: typer.Context, param: typer.CallbackParam, value: int) -> int:
    """``--limit``: rows on one page, 1 to MAX_PAGE."""
    if 1 <= value <= MAX_PAGE:
        return value
    raise InvalidInput(
        f"{typed_flag(ctx, param)} {value} is out of range; give 1 to {MAX_PAGE} rows a "
        "page, or --all for every one"
    )


LimitOption = Annotated[
    int,
    typer.Option("--limit", help=f"Rows on the page (1-{MAX_PAGE}).", callback=page_limit),
]
JsonlOption = Annotated[
    bool, typer.Option("--jsonl", help="Print one JSON object per line (for --all streams).")
]


def more_note(flag: str, value: str | int | None) -> None:
    """Tell on stderr how to get the next page, when there is one."""
    if value is not None:
        typer.echo(f"note: more follow; for the next page add {flag} {value}", err=True)


def chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """``rows`` in lists of ``size`` (the last may be shorter), read as they are needed."""
    chunk: list[T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def emit_rows(
    rows: Iterable[T],
    as_json: bool,
    as_jsonl: bool,
    to_json: Callable[[T], dict[str, Any]],
    render: Callable[[Sequence[T], Console], Table],
) -> int:
    """Print ``rows`` as they come, in chunks: one JSON array (``--json``), one object a
    line (``--jsonl``) or tables of STREAM_CHUNK rows; how many there were."""
    if as_json and as_jsonl:
        raise InvalidInput("--json prints one array and --jsonl one object a line; give one")
    console = stdout_console()
    out = sys.stdout
    count = 0
    if as_json:
        out.write("[")
    for chunk in chunks(rows, STREAM_CHUNK):
        if as_jsonl:
            out.write("".join(json.dumps(to_json(r), ensure_ascii=False) + "\n" for r in chunk))
        elif as_json:
            lead = ",\n" if count else "\n"
            items = (json.dumps(to_json(r), indent=2, ensure_ascii=False) for r in chunk)
            out.write(lead + ",\n".join("  " + i.replace("\n", "\n  ") for i in items))
        else:
            console.print(render(chunk, console))
        out.flush()
        count += len(chunk)
    if as_json:
        out.write("\n]\n" if count else "]\n")
    return count


@task_app.command("list")
def task_list(
    ctx: typer.Context,
    session: Annotated[
        str | None, typer.Argument(help="Only this session's tasks (name or id).")
    ] = None,
    session_flag: Annotated[
        str | None,
        typer.Option(
            "--session", help="Only this session's tasks (name or id).", show_default=False
        ),
    ] = None,
    status_filter: Annotated[
        TaskFilter,
        typer.Option("--status", help="live (pending and paused), all, or one state."),
    ] = TaskFilter.LIVE,
    limit: LimitOption = PAGE_SIZE,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Start after this task (the last of the previous page).",
            show_default=False,
        ),
    ] = None,
    include_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every task, finished ones too unless --status narrows it, streamed as it "
            "is read instead of one page.",
        ),
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """List task series, in the order they were scheduled, a page at a time.

    Each row has the schedule, next run and last run. A full page ends with a note on
    stderr naming the --after that gets the next one.
    """
    if session is not None and session_flag is not None and session != session_flag:
        raise InvalidInput("give the session once, as an argument or with --session")
    session = session or session_flag
    states = status_filter.states
    if include_all and ctx.get_parameter_source("status_filter") is ParameterSource.DEFAULT:
        states = None  # --all alone has always meant finished tasks too
    store = open_reader(home)
    now = store.now()
    if include_all:
        rows: Iterable[TaskView] = store.iter_tasks(session, states=states, after=after)
        next_after = None
    else:
        page = store.task_page(session, states=states, after=after, limit=limit)
        rows, next_after = page.rows, page.next_after
    count = emit_rows(
        rows, as_json, as_jsonl, task_json, lambda chunk, console: render_tasks(chunk, now, console)
    )
    if not count and not (as_json or as_jsonl):
        stdout_console().print(no_rows_line(status_filter, states, after), markup=False)
    more_note("--after", next_after)


def no_rows_line(status_filter: TaskFilter, states: Any, after: str | None) -> str:
    """What ``task list`` says when nothing matched."""
    if after is not None:
        return f"no more tasks after {after}"
    if states is None:
        return "no tasks"
    if status_filter is TaskFilter.LIVE:
        return "no live tasks; --all shows finished ones too"
    return f"no {status_filter.value} tasks"


@task_app.command("cancel")
def task_cancel(
    task: TaskRef,
    with_children: Annotated[
        bool,
        typer.Option("--with-children", help="Also cancel the chained tasks that wait for it."),
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a task; a recurring one stops for good. A task with chained tasks waiting
    for it asks whether to cancel them too (or needs --with-children)."""
    store = open_store(home)
    try:
        view = store.cancel_task(task, with_children=with_children)
    except HasChildren as exc:
        if not interactive():
            raise
        question = (
            f"Task {task} has chained tasks waiting for it ({', '.join(exc.children)}). "
            "Cancel them too?"
        )
        if not typer.confirm(question, default=False):
            fail(f"task {task} was not cancelled", EXIT_USER_ERROR)
        view = store.cancel_task(task, with_children=True)
    show_task("cancelled", view, store, as_json)


NoteOption = Annotated[
    str | None, typer.Option("--note", help="Why (shown in the task's history).")
]


def decider() -> str:
    """Who answers an approval from this terminal: ``cli:<user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


@task_app.command("approve")
def task_approve(
    task: TaskRef, note: NoteOption = None, home: HomeOption = None, as_json: JsonOption = False
) -> None:
    """Approve an occurrence awaiting approval (task or occurrence id): it runs now."""
    store = open_store(home)
    row = store.approve_task(task, actor=decider(), note=note)
    show_decision("approved", row, store, as_json)


@task_app.command("reject")
def task_reject(
    task: TaskRef, note: NoteOption = None, home: HomeOption = None, as_json: JsonOption = False
) -> None:
    """Reject an occurrence awaiting approval: it is recorded rejected and does not run;
    a recurring task continues at its next slot."""
    store = open_store(home)
    row = store.reject_task(task, actor=decider(), note=note)
    show_decision("rejected", row, store, as_json)


def show_decision(verb: str, row: InboundMessage, store: Cronbox, as_json: bool) -> None:
    view = store.get_task(row.series_id or row.id)
    if as_json:
        print_json({**task_json(view), "occurrence": row.id, "decision": row.approval_state})
        return
    stdout_console().print(
        Text(f"{verb} occurrence {row.id} of task {view.series_id} in session {view.session}"),
        soft_wrap=True,
    )


@task_app.command("pause")
def task_pause(
    task: TaskRef,
    note: Annotated[
        str | None,
        typer.Option("--note", help="Why it is paused (shown by task list until resumed)."),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pause a task; it keeps its schedule but does not run until resumed."""
    store = open_store(home)
    show_task("paused", store.pause_task(task, note=note), store, as_json)


@task_app.command("resume")
def task_resume(task: TaskRef, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Resume a paused task; a recurring one continues from its next slot, its failure
    count reset."""
    store = open_store(home)
    show_task("resumed", store.resume_task(task), store, as_json)


@task_app.command("update")
def task_update(
    task: TaskRef,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="New instructions for the agent.")
    ] = None,
    prompt_file: PromptFileOption = None,
    at: AtOption = None,
    cron: CronOption = None,
    script: ScriptOption = None,
    clear_script: Annotated[
        bool, typer.Option("--clear-script", help="Remove the task's gate script.")
    ] = False,
    clear_cron: Annotated[
        bool, typer.Option("--clear-cron", help="Make the task one-time (drop its recurrence).")
    ] = False,
    misfire_grace: MisfireGraceOption = None,
    timeout: TimeoutOption = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="New zone of the task: a recurring task's next run is recomputed in it "
            "(a one-time run keeps its instant); a naive --at is read in it.",
        ),
    ] = None,
    missed: MissedOption = None,
    catchup_limit: CatchupLimitOption = None,
    max_failures: MaxFailuresOption = None,
    jitter: JitterOption = None,
    ignore_quiet: Annotated[
        bool | None,
        typer.Option(
            "--ignore-quiet/--respect-quiet",
            help="Run in the session's quiet hours too, or wait for their end again.",
        ),
    ] = None,
    isolated: Annotated[
        bool | None,
        typer.Option(
            "--isolated/--shared",
            help="Run in a fresh conversation each time, or with the session's chat history.",
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a task; a new --at, --cron or --timezone reschedules its next run."""
    if cron is not None and clear_cron:
        raise InvalidInput("--cron and --clear-cron contradict each other; give one of them")
    if script is not None and clear_script:
        raise InvalidInput("--script and --clear-script contradict each other; give one of them")
    changes: dict[str, Any] = {"taskId": task}
    prompt = read_prompt(prompt, prompt_file, required=False)
    if prompt is not None:
        changes["prompt"] = prompt
    if at is not None:
        changes["processAfter"] = at
    if cron is not None or clear_cron:
        changes["recurrence"] = cron
    if script is not None or clear_script:
        changes["script"] = read_script(script) if script is not None else None
    settings = {"misfireGrace": misfire_grace, "timeout": timeout, "timezone": timezone}
    changes |= {key: value for key, value in settings.items() if value is not None}
    changes |= policy_fields(missed, catchup_limit, max_failures, jitter)
    if ignore_quiet is not None:
        changes["ignoreQuiet"] = ignore_quiet
    if isolated is not None:
        changes["isolated"] = isolated
    if len(changes) == 1:
        raise InvalidInput(
            "nothing to update; give --prompt, --prompt-file, --at, --cron, --script, "
            "--clear-cron, --clear-script, --timeout, --misfire-grace, --timezone, --missed, "
            "--catchup-limit, --max-failures, --jitter, --ignore-quiet, --respect-quiet, "
            "--isolated or --shared"
        )
    request = OperatorUpdateRequest.parse(changes)
    store = open_store(home)
    with at_flag_terms("give a future time"):
        view = store.update_task(request)
    show_task("updated", view, store, as_json)
    if cron is not None:
        advise(list(recurrence_warnings(stored_recurrence(cron))))


def run_json(run: Run) -> dict[str, Any]:
    from host.views import RunOut

    return RunOut.of(run).model_dump(mode="json")


def _duration(run: Run) -> timedelta | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return parse_utc(run.finished_at) - parse_utc(run.started_at)


def _lateness(run: Run) -> timedelta | None:
    """How long after its scheduled time a run started (``None`` for a run off schedule)."""
    if run.scheduled_for is None or run.started_at is None:
        return None
    return parse_utc(run.started_at) - parse_utc(run.scheduled_for)


def span_cell(delta: timedelta | None) -> str:
    """``2.3 seconds``, ``1 minute and 4 seconds``; a dash when there is nothing to show."""
    import humanize

    if delta is None:
        return NOTHING
    words = humanize.precisedelta(abs(delta), format="%0.1f")
    return f"{words} early" if delta < timedelta(0) else words


def render_history(runs: Sequence[Run], tz: ZoneInfo, now: datetime, console: Console) -> Table:
    from cronbox_shared.rows import is_backfill

    id_width = max(len(str(r.id)) for r in runs)

    def build(dropped: frozenset[str]) -> Table:
        columns = [
            id_column("run", max(id_width, 3)),
            Column("scheduled for", min_width=10),
            Column("started", min_width=10),
            Column("late", min_width=7),
            Column("duration", min_width=7),
            Column("outcome", no_wrap=True),
            Column("tokens in/out", no_wrap=True, justify="right"),
            Column("preview", min_width=8, overflow="ellipsis"),
        ]
        if any(r.decision for r in runs):
            columns.insert(6, Column("decision", min_width=10))
        table = Table(*(c for c in columns if c.header not in dropped))
        for run in runs:
            cells = {
                "run": str(run.id),
                "scheduled for": when_cell(run.scheduled_for, tz, now),
                "started": when_cell(run.started_at, tz, now),
                "late": "backfill" if is_backfill(run.message_id) else span_cell(_lateness(run)),
                "duration": span_cell(_duration(run)),
                "outcome": outcome_word(run.outcome),
                "decision": decision_cell(run, tz, now),
                "tokens in/out": tokens_cell(run.input_tokens, run.output_tokens),
                "preview": one_line(run.error or run.output_preview, 80),
            }
            if not any(r.decision for r in runs):
                del cells["decision"]
            table.add_row(*(Text(v) for k, v in cells.items() if k not in dropped))
        return table

    return fit_columns(
        console, build, ("preview", "scheduled for", "duration", "started", "tokens in/out")
    )


def tokens_cell(input_tokens: int, output_tokens: int) -> str:
    """``1,204 / 310``; a dash for a run that made no model call through the gateway."""
    if not input_tokens and not output_tokens:
        return NOTHING
    return f"{input_tokens:,} / {output_tokens:,}"


def decision_cell(run: Run, tz: ZoneInfo, now: datetime) -> str:
    """Who approved or rejected a run, when, and their note ("" for an ungated run)."""
    if run.decision is None:
        return ""
    text = f"{run.decision} by {run.decided_by} {when_cell(run.decided_at, tz, now)}"
    return text + (f": {one_line(run.decision_note, 60)}" if run.decision_note else "")


@task_app.command("history")
def task_history(
    task: TaskRef,
    limit: LimitOption = PAGE_SIZE,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            help="Start after this run (the last of the previous page): older runs.",
            show_default=False,
            min=1,
        ),
    ] = None,
    include_all: Annotated[
        bool, typer.Option("--all", help="Every run, streamed as it is read, newest first.")
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """Show a task's past runs, newest first: run id, scheduled and started, lateness,
    duration, outcome, model tokens in and out (as the host's model gateway counted them),
    and their total over all runs. --json prints one object: the page's runs (every run
    with --all) and the token totals; --jsonl streams one run a line. A full page ends
    with a note on stderr naming the --after that gets the next one.

    `cronbox task output RUN` prints the whole output of one of them.
    """
    store = open_store(home)
    view = store.get_task(task)
    tz, now = zone(view.timezone), store.now()
    rows: Iterable[Run]
    next_after = None
    if include_all:
        rows = store.iter_runs(view.series_id, after=after)
    else:
        page = store.run_page(view.series_id, after=after, limit=limit)
        rows, next_after = page.rows, page.next_after
    tokens = store.series_tokens(view.series_id)
    if as_json and as_jsonl:
        raise InvalidInput("--json prints one object and --jsonl one object a line; give one")
    if as_json:
        from host.views import HistoryOut

        print_json(HistoryOut.of(view.series_id, list(rows), tokens).model_dump(mode="json"))
        more_note("--after", next_after)
        return
    count = emit_rows(
        rows, False, as_jsonl, run_json,
        lambda chunk, console: render_history(chunk, tz, now, console),
    )  # fmt: skip
    if not count and not as_jsonl:
        said = f"has no runs before run {after}" if after else "has not run yet"
        stdout_console().print(Text(f"task {view.series_id} {said}"))
    elif tokens.total and not as_jsonl:
        stdout_console().print(
            Text(f"model tokens, all runs: {tokens.input_tokens:,} in, "
                 f"{tokens.output_tokens:,} out")
        )  # fmt: skip
    more_note("--after", next_after)


@task_app.command("backfill")
def task_backfill(
    task: TaskRef,
    start: Annotated[
        str,
        typer.Option(
            "--from",
            help="Window start: an instant such as 2026-03-01T00:00 (read in the task's zone) "
            "or 2026-03-01T00:00Z.",
        ),
    ],
    end: Annotated[str, typer.Option("--to", help="Window end, in the past (same forms as --at).")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a recurring task's slots in a past window, one after another, as backfill runs
    (task history marks them); its schedule is left as it is."""
    store = open_store(home)
    first = store.backfill(task, start, end)
    slots = [first.scheduled_for or "", *first.content.get("backfill_rest", [])]
    if as_json:
        print_json({"series_id": first.series_id, "slots": slots, "first": first.id})
        return
    stdout_console().print(
        Text(f"queued a backfill of {first.series_id}: {len(slots)} slots from {slots[0]} to "
             f"{slots[-1]}, run one after another"),
        soft_wrap=True,
    )  # fmt: skip


@task_app.command("show")
def task_show(task: TaskRef, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a task: its settings and policies, its next 10 runs and its last 10 runs."""
    from host.views import iso_local

    store = open_store(home)
    view = store.get_task(task)
    row = store.live_row(task)
    upcoming = store.upcoming(task, 10)
    runs = store.runs_for(view.series_id, 10)
    tz = zone(view.timezone)
    now = store.now()
    policies = task_policies(row) if row is not None else {}
    children = store.children_of(view.series_id)
    if children:
        policies["chained tasks"] = ", ".join(children)
    if as_json:
        print_json({
            **task_json(view), "policies": policies,
            "next_runs": [{"slot": fmt(slot), "at": fmt(at), "at_local": iso_local(at, tz)}
                          for slot, at in upcoming],
            "runs": [run_json(r) for r in runs],
        })  # fmt: skip
        return
    console = stdout_console()
    lines = [
        describe_task("task", view, now).plain.removeprefix("task "),
        f"prompt: {one_line(view.prompt, 200)}",
        f"gate script: {'yes' if view.has_script else 'no'}; timezone {view.timezone}",
    ]
    lines += [f"{name}: {value}" for name, value in policies.items()]
    for line in lines:
        console.print(Text(line), soft_wrap=True)
    if upcoming:
        table = Table("#", "runs at", "UTC", "relative", "slot")
        for i, (slot, at) in enumerate(upcoming, 1):
            cells = (str(i), local_time(at, tz), fmt(at), relative(at, now),
                     "" if slot == at else local_time(slot, tz))  # fmt: skip
            table.add_row(*(Text(c, no_wrap=True) for c in cells))
        console.print(Text(f"next {len(upcoming)} runs:"))
        console.print(table)
    else:
        console.print(Text("no next run"))
    if runs:
        console.print(Text(f"last {len(runs)} runs:"))
        console.print(render_history(runs, tz, now, console))
    else:
        console.print(Text("no runs yet"))


def task_policies(row: InboundMessage) -> dict[str, Any]:
    """What ``task show`` says of a task's settings and policies, by name."""
    shown: dict[str, Any] = {}
    if row.recurrence:
        shown["policies"] = describe_policies(
            row.missed_policy, row.catchup_limit, row.max_failures, row.jitter
        )
        shown["failures in a row"] = row.failures
    shown["misfire grace"] = f"{row.misfire_grace} s" if row.misfire_grace is not None else "none"
    shown["timeout"] = f"{row.timeout} s" if row.timeout else "the host's default"
    shown["quiet hours"] = "ignored" if row.ignore_quiet else "respected"
    if row.after_task:
        shown["chain"] = f"runs after {row.after_task} on {row.after_outcome or 'ok'}" + (
            f" when its output matches {row.when_output}" if row.when_output else ""
        )
    if row.approval:
        wait = (
            f"{row.approval_timeout} s, then {row.on_timeout}"
            if row.approval_timeout
            else ("until answered")
        )
        shown["approval"] = f"each run waits for approval ({wait})"
    shown["conversation"] = "isolated (fresh each run)" if row.isolated else "the session's"
    return shown


@task_app.command("output")
def task_output(
    run_id: Annotated[int, typer.Argument(help="Run id, as `cronbox task history` shows it.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a run's full output: the agent's replies to it, or its error."""
    from host.views import RunOut, RunOutput

    store = open_store(home)
    found = store.run(run_id)
    replies = store.replies(found.session_id, found.message_id)
    if as_json:
        print_json(
            RunOutput(**RunOut.of(found).model_dump(), replies=replies).model_dump(mode="json")
        )
        return
    console = stdout_console()
    for text in replies:
        console.print(Text(text), soft_wrap=True)
    if found.error:
        console.print(
            Text(f"run {found.id} {outcome_word(found.outcome)}: {found.error}"), soft_wrap=True
        )
    elif not replies:
        said = found.output_preview
        console.print(Text(said if said else f"run {found.id} wrote no output"), soft_wrap=True)


# --- cron preview -----------------------------------------------------------------------


@app.command("cron")
def cron_preview(
    expr: Annotated[str, typer.Argument(help='Cron expression, shorthand or "@every 30m".')],
    count: Annotated[
        int,
        typer.Option("-n", "--count", callback=count_option, help="How many fire times to show."),
    ] = 5,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="Zone to evaluate in. " + TIMEZONE_HELP)
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Show fire times strictly after this instant (same forms as --at; default: now).",
        ),
    ] = None,
    jitter: Annotated[
        int | None,
        typer.Option(
            "--jitter",
            callback=seconds_option(0, MAX_JITTER, "negative"),
            help="Show each time delayed by the jitter a task with --id and this --jitter gets.",
        ),
    ] = None,
    task_id: Annotated[
        str | None, typer.Option("--id", help="The task id the jitter is derived from.")
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Preview the next fire times of a recurrence, DST included.

    With --jitter and --id, the times are those the task runs at (each slot plus its
    jitter, the same every time). --home is accepted for uniformity; the preview reads
    no state.
    """
    from host.views import iso_local

    del home  # the preview is pure; nothing under --home is read
    if jitter and not task_id:
        raise InvalidInput(
            "--jitter needs --id: the delay is derived from the task's id and each slot"
        )
    # min_interval 0: a preview explains an expression instead of rejecting it.
    rec = parse_recurrence(expr, timedelta(0))
    tz = zone(timezone, "--timezone") if timezone else zone(load_settings().timezone())
    now = datetime.now(UTC)
    start = parse_when(after, tz, now, field="--after") if after is not None else now
    fires = fire_times(rec, tz, start, count)
    if jitter and task_id:
        fires = [due_at(task_id, f, jitter) for f in fires]
    if as_json:
        print_json([iso_local(f, tz) for f in fires])
        return
    advise(list(recurrence_warnings(rec)))
    console = stdout_console()
    console.print(Text(f'"{rec.expr}": {rec.describe()} (in {tz.key})'), soft_wrap=True)
    table = Table("#", "local", "offset", "UTC", "relative")
    for i, when in enumerate(fires, 1):
        offset = when.astimezone(tz).strftime("%z")
        cells = (
            str(i),
            local_time(when, tz),
            f"{offset[:3]}:{offset[3:]}",
            fmt(when),
            relative(when, now),
        )
        table.add_row(*(Text(c, no_wrap=True) for c in cells))
    console.print(table)


def main() -> None:
    """Entry point of the ``cronbox`` console script (and of ``python -m host.cli``)."""
    app.lazy_command()(prog_name="cronbox")


# --- the host ---------------------------------------------------------------------------


def _setup_logging(verbose: bool, log_format: LogFormat = LogFormat.TEXT) -> None:
    handler: logging.Handler
    if log_format is LogFormat.JSON:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=stderr_console(), show_path=False, rich_tracebacks=False)
    else:
        # Rendering with rich costs a host under load a good part of its time; a file, a
        # pipe or journald gets plain lines.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PlainFormatter())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[handler],
    )


@app.command("run")
def run(
    demo: Annotated[
        bool,
        typer.Option(
            "--demo", help="Create a demo session with a recurring and a gated task first."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="text: lines for a person; json: one JSON object per line on stderr, "
            "with session, task and outcome fields, for a supervisor such as journald.",
        ),
    ] = LogFormat.TEXT,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start the host: sweep, pool, runners and delivery, until Ctrl-C or SIGTERM."""
    import anyio

    from host.daemon import run_host

    del as_json  # the host logs; it prints no result
    _setup_logging(verbose, log_format)
    settings = load_settings(warn=logging.getLogger("cronbox.config").warning)
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    anyio.run(partial(run_host, settings, demo=demo))


@app.command("status")
def status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show the pool, live runners, due counts, the next wake-up and today's model tokens."""
    from host.status import host_status

    store = open_reader(home)
    report = host_status(store)
    if as_json:
        print_json(report)
        return
    console = stdout_console()
    now = store.now()
    host = report["host"]
    if host is None:
        console.print(Text("host: not running"))
    else:
        live = report["live"]
        console.print(
            Text(
                f"host: running (pid {host['pid']}, runtime {host['runtime']}), "
                f"pool {len(live)}/{host['max_containers']} in use"
                + (f", API on {host['http']}" if host.get("http") else "")
            )
        )
    console.print(
        Text(
            f"sessions: {report['sessions']}, due now: {report['due_now']}, "
            f"live tasks: {report['live_tasks']}, "
            f"awaiting approval: {report['awaiting_approval']}"
        )
    )
    nxt = report["next_wake"]
    tz, _source = resolve_host_timezone()
    console.print(Text(f"next wake: {when_cell(nxt, tz, now) if nxt else 'nothing scheduled'}"))
    if host is not None and host.get("engine_down"):
        console.print(Text(f"problem: {host['engine_down']}", style="yellow"), soft_wrap=True)
    for quiet in report["quiet"]:
        state = f"quiet now, until {when_cell(quiet['until'], tz, now)}" if quiet["until"] else ""
        console.print(
            Text(f"quiet hours of session {quiet['session']}: {quiet['window']} "
                 f"({quiet['timezone']}){'; ' + state if state else ''}"),
            soft_wrap=True,
        )  # fmt: skip
    hidden = report["quiet_sessions"] - len(report["quiet"])
    if hidden > 0:
        console.print(Text(f"and {hidden} more sessions with quiet hours"), soft_wrap=True)
    for problem in report["problems"]:
        console.print(
            Text(f"problem in session {problem['session']}: {problem['reason']}", style="yellow"),
            soft_wrap=True,
        )
    for found in report.get("stale", []):
        console.print(Text(f"stale: {found['reason']}", style="yellow"), soft_wrap=True)
    used = report["tokens_today"]
    console.print(
        Text(f"model tokens today ({used['day']}, UTC): {used['input_tokens']:,} in, "
             f"{used['output_tokens']:,} out")
    )  # fmt: skip
    if used["sessions"]:
        tokens = Table("session", "tokens in", "tokens out", "daily budget")
        for row in used["sessions"]:
            budget = row["daily_token_budget"]
            cells = (row["session"], f"{row['input_tokens']:,}", f"{row['output_tokens']:,}",
                     f"{budget:,}" if budget is not None else NOTHING)  # fmt: skip
            tokens.add_row(*(Text(c) for c in cells))
        console.print(tokens)
    if report["live"]:
        table = Table("session", "runner", "started", "busy")
        for runner in report["live"]:
            table.add_row(
                Text(runner["session"]),
                Text(runner["ref"]),
                Text(when_cell(runner["started_at"], tz, now)),
                Text("yes" if runner["busy"] else "idle"),
            )
        console.print(table)


@image_app.command("build")
def image_build(
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base image with python3 and bash (default: $BASE_IMAGE, else python:3.12-slim).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            help="Image tag (default: $CRONBOX_IMAGE, else cronbox-agent:<version>).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build Dockerfile.agent from the installed package, with a progress display."""
    from rich.progress import BarColumn, Progress, TextColumn

    from host.image import DEFAULT_BASE, BuildStep, build_image
    from host.runtimes.docker import default_image

    del home  # an image belongs to the engine, not to a home
    settings = load_settings()
    tag = tag or settings.image or default_image()
    base = base or os.environ.get("BASE_IMAGE") or DEFAULT_BASE
    console = stderr_console()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"),
        console=console, transient=False,
    ) as progress:  # fmt: skip
        job = progress.add_task(f"building {tag}", total=None, step=f"from {base}")

        def on_step(step: BuildStep) -> None:
            if step.step is not None and step.steps is not None:
                progress.update(job, total=step.steps, completed=step.step - 1,
                                step=step.text[:60])  # fmt: skip

        def log(line: str) -> None:
            progress.update(job, step=line[:60])

        image_id = build_image(tag, base, on_step, log)
        progress.update(job, completed=progress.tasks[0].total or 1, step="done")
    if as_json:
        print_json({"image": tag, "id": image_id, "base": base})
        return
    short = image_id.removeprefix("sha256:")[:12]
    stdout_console().print(Text(f"built {tag} ({short}) from {base}"))


# --- the host's background jobs, backup and restore ------------------------------------


def render_jobs(jobs: Sequence[JobOut], tz: ZoneInfo, now: datetime) -> Table:
    table = Table("job", "schedule", "enabled", "running", "last run", "result", "next run")
    for job in jobs:
        result = NOTHING if job.last_ok is None else ("ok: " if job.last_ok else "failed: ")
        if job.last_result:
            result += one_line(job.last_result, 60)
        cells = (
            job.name, job.schedule, "yes" if job.enabled else "no",
            "yes" if job.running else "no", when_cell(job.last_run_at, tz, now), result,
            when_cell(job.next_run_at, tz, now) if job.next_run_at else NOTHING,
        )  # fmt: skip
        table.add_row(*(Text(c) for c in cells))
    return table


@jobs_app.callback()
def jobs_list(ctx: typer.Context, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List the background jobs: schedule, enabled, running, last run and result, next run.

    `cronbox jobs run NAME` runs one now.
    """
    if ctx.invoked_subcommand is not None:
        return
    from host.jobs import list_jobs

    store = open_store(home)
    jobs = list_jobs(store, load_settings())
    if as_json:
        print_json([j.model_dump(mode="json") for j in jobs])
        return
    tz = zone(load_settings().timezone())
    stdout_console().print(render_jobs(jobs, tz, store.now()))


def run_job(store: Cronbox, name: str) -> JobOut:
    """Run a job now: through the running host's API when it serves one, else here."""
    from host.jobs import run_here
    from host.status import host_status
    from host.views import JobOut

    settings = load_settings()
    host = host_status(store)["host"]
    address = host.get("http") if host else None
    if address is None:
        return run_here(store, settings, name)
    import httpx2

    headers = {"x-api-key": settings.api_key} if settings.api_key else {}
    try:
        response = httpx2.post(
            f"{address}/api/scheduler", json={"action": "trigger", "job": name},
            headers=headers, timeout=3600,
        )  # fmt: skip
    except httpx2.TransportError as exc:
        fail(f"cannot reach the host's API at {address}: {exc}", EXIT_ENVIRONMENT_ERROR)
    body = response.json()
    if response.status_code != 200:
        fail(str(body.get("error", body)), EXIT_USER_ERROR)
    return JobOut.model_validate(body)


def show_job(job: JobOut, as_json: bool) -> None:
    if as_json:
        print_json(job.model_dump(mode="json"))
        return
    verdict = "ok" if job.last_ok else "failed"
    stdout_console().print(Text(f"{job.name} {verdict}: {job.last_result}"), soft_wrap=True)
    if not job.last_ok:
        raise typer.Exit(EXIT_ENVIRONMENT_ERROR)


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="backup, cleanup or stale-check.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a background job now (through the running host when there is one)."""
    show_job(run_job(open_store(home), name), as_json)


@app.command("backup")
def backup(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Write a backup archive of the home now (backups/cronbox-YYYY-MM-DD_HH-MM-SS.tar.gz)."""
    show_job(run_job(open_store(home), "backup"), as_json)


@app.command("restore")
def restore(
    archive: Annotated[Path, typer.Argument(help="A backups/cronbox-*.tar.gz archive.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup into an empty home (refuses one that is not empty)."""
    from host.jobs import restore_home
    from host.service import Cronbox

    settings = load_settings()
    target = home if home is not None else settings.home
    count = restore_home(archive, target)
    store = Cronbox.from_settings(settings.model_copy(update={"home": target}))
    store.reindex()
    if as_json:
        print_json({"home": str(target), "sessions": count})
        return
    stdout_console().print(
        Text(f"restored {count} sessions into {target}; start it with cronbox run"),
        soft_wrap=True,
    )


@task_app.command("run")
def task_run(task: TaskRef, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Run a task now, once, outside its schedule (the series is not disturbed); a failed
    or completed one-time task runs again (a cancelled one does not)."""
    from host.views import RunQueued

    store = open_store(home)
    row = store.run_now(task)
    if as_json:
        queued = RunQueued(id=row.id, series_id=row.series_id, process_after=row.process_after)
        print_json(queued.model_dump(mode="json"))
        return
    stdout_console().print(
        Text(f"queued a run of {row.series_id} now (occurrence {row.id})"), soft_wrap=True
    )


if __name__ == "__main__":
    main()
