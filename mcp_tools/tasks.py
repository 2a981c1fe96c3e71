"""The task tools (SPEC §6.1): schedule, list, cancel, pause, resume and update tasks.

Each call is checked at once with the same validation the host's store uses
(``cronbox_shared.tasks``); bad input is a ``ToolError`` whose text says how to fix it,
and nothing is written. An accepted call becomes one ``kind=system`` row in
``outbound.db`` that the host validates again and applies about a second later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from cronbox_shared.actions import (
    ActionKind,
    CancelTask,
    PauseTask,
    ResumeTask,
    ScheduleTask,
    TaskChange,
    UpdateTask,
    transition,
)
from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import CronboxError, InvalidRecurrence
from cronbox_shared.models import InboundMessage, MessageStatus, preview
from cronbox_shared.policies import (
    DEFAULT_CATCHUP_LIMIT,
    DEFAULT_MAX_FAILURES,
    admitted,
    describe_policies,
    due_at,
)
from cronbox_shared.recurrence import Recurrence, recurrence_warnings, stored_recurrence
from cronbox_shared.tasks import (
    COST_HINT,
    POLICY_ALIASES,
    POLICY_FIELDS,
    ScheduleRequest,
    UpdateRequest,
    ValidTask,
    check_wakes,
    new_task_id,
    resume_at,
    schedule_notes,
    validate_schedule,
    validate_update,
    wakes_per_day,
)
from cronbox_shared.timeutil import fmt, parse_utc, zone
from mcp_tools import session as sv
from mcp_tools.config import ToolConfig

APPLY_NOTE = "The host applies this within about a second."
CRON_HINT = (
    'A recurrence is a 5-field cron expression "minute hour day-of-month month day-of-week" '
    'such as "0 9 * * MON-FRI" (weekdays at 9:00) or "*/30 * * * *", a shorthand such as '
    '"@daily" or "@hourly", or "@every 2h" / "@every 1h30m".'
)
ZONE_UNKNOWN = (
    "Times were read in UTC; the session's zone is unknown. If you meant another zone, "
    'cancel this task and schedule it again with timezone (such as "Europe/Berlin").'
)
PROMPT_PREVIEW = 80
LIST_TASKS = "list_tasks"
TOOL_NAMES: tuple[str, ...] = (
    str(ActionKind.SCHEDULE), LIST_TASKS, str(ActionKind.CANCEL), str(ActionKind.PAUSE),
    str(ActionKind.RESUME), str(ActionKind.UPDATE),
)  # fmt: skip
"""The six tools :func:`register` adds, by their MCP names."""

# --- what the model reads --------------------------------------------------------------

TIME_RULES = (
    "Times: processAfter takes ISO-8601. A naive local time such as 2026-01-15T21:00:00 is "
    "read in the task's timezone (the session's zone unless you pass timezone); add Z or an "
    "offset (2026-01-15T20:00:00Z, 2026-01-15T21:00:00+01:00) for an absolute instant. "
    'Relative times work too: "now", "+10m", "+1h30m", "in 2 hours".'
)
GATE_RULES = (
    f"Gate script: optional bash run before the agent is woken ({DEFAULTS.gate_timeout:g} s "
    f"timeout, {DEFAULTS.gate_output_cap // 1024 // 1024} MiB output). "
    'Its last stdout line must be JSON {"wakeAgent": true|false, "data": ...}: false ends '
    "the run without waking the agent (no model cost), true wakes it with data in its "
    "prompt. A timeout, non-zero exit or bad JSON skips the agent and records the error."
)
COST_RULES = (
    "Cost: every run that wakes the agent costs a model call. A task that runs more than "
    "about twice a day and needs no judgement each time (checking a feed, a build, a price) "
    "should carry a gate script that wakes the agent only when there is something to do. "
    "The operator may cap how often a session's tasks wake the agent a day; a task that "
    "would go past the cap is refused (tasks with a gate script do not count)."
)

POLICY_RULES = (
    "Policies (recurring tasks only): missedPolicy decides what happens to runs missed while "
    'the host was down ("latest" runs once, "all" replays each in order up to catchupLimit, '
    '"skip" runs none); a failed run (error, timeout, gate error) pushes the next one back '
    f"2, 4, 8, 16, 32, then 60 minutes, and after maxFailures in a row (default "
    f"{DEFAULT_MAX_FAILURES}) the task "
    "is paused and you get a note: tell the user, and resume_task once the cause is fixed. "
    "A gate that answers wakeAgent=false is not a failure. jitter delays each run by a fixed "
    "amount under that many seconds. A run due in the session's quiet hours (set by the "
    "operator) waits for their end unless the task sets ignoreQuiet; list_tasks shows the "
    "time it will run."
)

SCHEDULE_DESCRIPTION = "\n\n".join([
    "Schedule a task: a prompt the agent receives later, once or on a recurrence. Give "
    "processAfter (when to run once), recurrence (when to repeat), or both (a recurring task "
    "whose first run is processAfter). With only a recurrence, the first run is its next "
    "occurrence. Returns the task id (use it with cancel_task, pause_task, resume_task and "
    "update_task), the first run in UTC and in the task's zone, and the recurrence in words.",
    TIME_RULES,
    CRON_HINT + " Recurrences are evaluated in the task's timezone, DST-correct, and may not "
    "fire more often than the host's minimum interval.",
    GATE_RULES,
    POLICY_RULES,
    COST_RULES,
    "Limits: prompt and script at most 64 KiB each; a one-time processAfter must not be in "
    "the past.",
])  # fmt: skip

LIST_DESCRIPTION = (
    "List this session's tasks: one line per task (series) with its id, status, next run (in "
    "the task's zone and UTC), recurrence (cron and in words), whether it has a gate script, "
    'and a prompt preview. status filters to "pending" or "paused" (default: both). Tasks '
    "scheduled a moment ago show as waiting for the host until it applies them."
)

CANCEL_DESCRIPTION = (
    "Cancel a task by its id (the id schedule_task returned, as list_tasks shows). For a "
    "recurring task this stops the whole series: its next occurrence never runs. A pending or "
    "paused task can be cancelled; an ended one cannot."
)

PAUSE_DESCRIPTION = (
    "Pause a pending task by its id: it keeps its schedule but does not run until "
    "resume_task. Pausing a recurring task pauses the whole series."
)

RESUME_DESCRIPTION = (
    "Resume a paused task by its id. A one-time task whose time has passed runs at once; a "
    "recurring task continues from its next occurrence (missed slots are not replayed) with "
    "its count of failures in a row reset. list_tasks shows why a task is paused."
)

UPDATE_DESCRIPTION = "\n\n".join([
    "Change a task by its id. Give only what changes: an argument you leave out stays as it "
    "is, and an explicit null clears it (script: null removes the gate script; recurrence: "
    "null makes the task one-time; processAfter: null moves the next run to the "
    "recurrence's next occurrence). Changing processAfter or recurrence reschedules the next "
    "run. The prompt cannot be cleared, and the task keeps its timezone.",
    TIME_RULES,
    CRON_HINT,
    GATE_RULES,
    POLICY_RULES,
])  # fmt: skip

TaskId = Annotated[
    str, Field(description="The task's id as schedule_task returned it (list_tasks shows it).")
]
Prompt = Annotated[
    str,
    Field(description="What the agent should do when the task runs, as a self-contained "
          "instruction (the agent will not remember this conversation)."),
]  # fmt: skip
ProcessAfter = Annotated[
    str | None,
    Field(description='When to run: "2026-01-15T21:00:00" (task zone), '
          '"2026-01-15T20:00:00Z", "+10m", "in 2 hours".'),
]  # fmt: skip
RecurrenceArg = Annotated[
    str | None,
    Field(description='Cron "0 9 * * MON-FRI", shorthand "@daily", or "@every 2h".'),
]
Script = Annotated[
    str | None,
    Field(description='Bash gate script; last stdout line {"wakeAgent": bool, "data": ...}.'),
]
Timezone = Annotated[
    str | None,
    Field(description='IANA zone such as "Europe/Berlin" for this task; default: the session\'s.'),
]
MissedArg = Annotated[
    Literal["latest", "all", "skip"] | None,
    Field(description='Recurring only. Slots that passed while the host was down: "latest" '
          '(default) runs once for the latest, "all" runs each in order (up to catchupLimit), '
          '"skip" runs none of them.'),
]  # fmt: skip
CatchupLimitArg = Annotated[
    int | None,
    Field(
        description='With missedPolicy "all": most missed slots replayed '
        f"(default {DEFAULT_CATCHUP_LIMIT})."
    ),
]
MaxFailuresArg = Annotated[
    int | None,
    Field(description="Recurring only. Pause the task after this many failed runs in a row "
          f"(default {DEFAULT_MAX_FAILURES}; 0 never pauses). Failed runs back off 2, 4, 8, 16, "
          "32, then 60 min."),
]  # fmt: skip
JitterArg = Annotated[
    int | None,
    Field(description="Recurring only. Delay each run by a fixed-per-run amount under this "
          "many seconds (spreads load; shorter than the time between runs)."),
]  # fmt: skip
IgnoreQuietArg = Annotated[
    bool | None,
    Field(description="true: run in the session's quiet hours too (by default a run due in "
          "them waits for their end)."),
]  # fmt: skip
AfterTaskArg = Annotated[
    str | None,
    Field(description="Chain: the id of a task of this session; this task then runs each time "
          "that one finishes (give no processAfter or recurrence)."),
]  # fmt: skip
AfterOutcomeArg = Annotated[
    Literal["ok", "error", "any"] | None,
    Field(description='With afterTask: which outcome of the parent fires it: "ok" (default), '
          '"error" (an error or timeout) or "any".'),
]  # fmt: skip
WhenOutputArg = Annotated[
    str | None,
    Field(description='With afterTask: fire only when the parent\'s output matches '
          '"contains:TEXT" or "regex:PATTERN" (at most 200 characters). Write '
          "{{parent.output}} in the prompt to receive that output."),
]  # fmt: skip
ApprovalArg = Annotated[
    bool | None,
    Field(description="true: each run waits for a person's approval before it runs (you can "
          "request this; only a person can approve)."),
]  # fmt: skip
ApprovalTimeoutArg = Annotated[
    str | None,
    Field(description='With approval: how long a run waits for an answer, e.g. "1h" '
          "(default: until answered)."),
]  # fmt: skip
OnTimeoutArg = Annotated[
    Literal["reject", "approve"] | None,
    Field(description='With approvalTimeout: what an unanswered run becomes: "reject" '
          '(default) or "approve".'),
]  # fmt: skip
IsolatedArg = Annotated[
    bool | None,
    Field(description="true: each run starts a fresh conversation, without the chat "
          "history (its reply still reaches the user); for self-contained jobs."),
]  # fmt: skip
StatusFilter = Annotated[
    Literal["pending", "paused"] | None,
    Field(description='"pending" or "paused"; leave out for both.'),
]

StatusChange = Literal[ActionKind.CANCEL, ActionKind.PAUSE, ActionKind.RESUME]
_STATUS_ACTIONS: dict[ActionKind, type[CancelTask | PauseTask | ResumeTask]] = {
    ActionKind.CANCEL: CancelTask,
    ActionKind.PAUSE: PauseTask,
    ActionKind.RESUME: ResumeTask,
}


# --- the tools ---------------------------------------------------------------------------


class TaskTools:
    """The six task tools over one session's files."""

    def __init__(self, config: ToolConfig) -> None:
        self.config = config

    def now(self) -> datetime:
        return self.config.clock.now()

    def session_zone(self) -> str | None:
        """The session's zone: as configured, else as its inbox tells; None if unknown."""
        return self.config.timezone or sv.session_zone(self.config.session_dir)

    def schedule(
        self,
        prompt: str,
        process_after: str | None = None,
        recurrence: str | None = None,
        script: str | None = None,
        timezone: str | None = None,
        policies: dict[str, Any] | None = None,
    ) -> str:
        """Validate a new task and ask the host to schedule it.

        ``policies`` holds the policy arguments given (``missedPolicy``, ``catchupLimit``,
        ``maxFailures``, ``jitter``).
        """
        now = self.now()
        given = {"processAfter": process_after, "recurrence": recurrence, "script": script,
                 "timezone": timezone, **(policies or {})}  # fmt: skip
        args = {"taskId": new_task_id(), "prompt": prompt}
        args |= {k: v for k, v in given.items() if v is not None}
        session_tz = self.session_zone()
        with _as_tool_error():
            valid = validate_schedule(
                ScheduleRequest.parse(args),
                default_tz=session_tz or "UTC",
                now=now,
                min_interval=self.config.min_interval,
            )
        limit = sv.wake_budget(self.config.session_dir)
        if limit is not None:
            expr = valid.recurrence.expr if valid.recurrence else None
            adding = wakes_per_day(expr, bool(valid.script), zone(valid.timezone), now, limit + 1)
            others = [
                (s.row.recurrence, bool(s.row.script), s.row.timezone)
                for s in sv.live_tasks(self.config.session_dir, now)
                if s.row.status is MessageStatus.PENDING
            ]
            with _as_tool_error():
                check_wakes(
                    adding, others, limit, now, (expr, bool(valid.script), zone(valid.timezone))
                )
        if sv.live_task_count(self.config.session_dir) >= self.config.max_tasks:
            raise ToolError(
                f"this session already has {self.config.max_tasks} live tasks, the limit; "
                "cancel tasks it no longer needs (list_tasks shows them) before scheduling more"
            )
        # The first run is sent as an absolute instant, so "+10m" means ten minutes from
        # this call, not from whenever the host gets to it.
        fields: dict[str, Any] = {"id": valid.id, "prompt": valid.prompt,
                                  "timezone": valid.timezone}  # fmt: skip
        if valid.after_task is None:
            fields["process_after"] = fmt(valid.first_run)
        else:
            fields |= {"after_task": valid.after_task, "after_outcome": valid.after_outcome,
                       "when_output": valid.when_output}  # fmt: skip
        if valid.approval:
            fields["approval"] = True
            if valid.approval_timeout:
                fields["approval_timeout"] = f"{valid.approval_timeout}s"
                fields["on_timeout"] = valid.on_timeout
        if valid.recurrence is not None:
            fields["recurrence"] = valid.recurrence.expr
        if valid.script:
            fields["script"] = valid.script
        fields |= {
            name: getattr(valid, name) for name in POLICY_FIELDS if getattr(valid, name) is not None
        }
        if valid.ignore_quiet:
            fields["ignore_quiet"] = True
        if valid.isolated:
            fields["isolated"] = True
        sv.write_action(self.config.session_dir, ScheduleTask(**fields), now)
        tz = zone(valid.timezone)
        if valid.after_task is not None:
            return "\n".join([*_chained_lines(valid), APPLY_NOTE])
        quiet = sv.quiet_hours(self.config.session_dir)
        jittered = due_at(valid.id, valid.first_run, valid.jitter)
        due = admitted(valid.id, valid.first_run, valid.jitter, quiet,
                       zone(session_tz or "UTC"), hold=not valid.ignore_quiet)  # fmt: skip
        first = f"First run: {_when(due, tz)}"
        if fmt(due) != fmt(valid.first_run):
            why = "the session's quiet hours" if due != jittered else "its jitter"
            first += f" (its slot is {_when(valid.first_run, tz)}; delayed by {why})"
        lines = [
            f"Scheduled task {valid.id} (use this id to cancel, pause, resume or update it).",
            f"{first}.",
            f"Repeats: {_repeats(valid.recurrence)}." if valid.recurrence else "Runs once.",
        ]
        if valid.recurrence is not None:
            lines.append(f"Policies: {_policies(valid)}.")
        if timezone is None and session_tz is None:
            lines.append(ZONE_UNKNOWN)
        if valid.script:
            lines.append("Gate script: yes; the agent is woken only when it says wakeAgent=true.")
        if valid.approval:
            lines.append(_approval_line(valid))
        expr = valid.recurrence.expr if valid.recurrence else None
        lines += [_note(n) for n in schedule_notes(expr, bool(valid.script), tz, now)]
        lines.append(APPLY_NOTE)
        return "\n".join(lines)

    def list(self, status: str | None = None) -> str:
        """One line per live series, soonest first; ``status`` is "pending" or "paused"."""
        wanted = {s for s in sv.LIVE if status in (None, s.value)}
        if not wanted:
            raise ToolError(f'status "{status}" cannot be listed; use "pending" or "paused"')
        states = [
            s for s in sv.live_tasks(self.config.session_dir, self.now()) if s.row.status in wanted
        ]
        what = f"{status} tasks" if status else "pending or paused tasks"
        if not states:
            return f"No {what}."
        head = f"{len(states)} {what} (next run in the task's zone and in UTC):"
        return "\n".join([head, *(_task_line(s) for s in states)])

    def change_status(self, kind: StatusChange, task_id: str) -> str:
        """Cancel, pause or resume a task's live occurrence."""
        state = self._live(kind, task_id)
        action = _STATUS_ACTIONS[kind](task_id=state.series_id)
        sv.write_action(self.config.session_dir, action, self.now())
        row = state.row
        name = state.series_id
        if kind is ActionKind.CANCEL:
            done = f"Cancelled task {name}: it will not run again"
            if row.recurrence:
                done += " (the whole recurring series ends)"
        elif kind is ActionKind.PAUSE:
            done = f"Paused task {name}: it keeps its schedule but does not run until resume_task"
        else:
            done = f"Resumed task {name}: next run {_next(row, self.now())}"
        return f"{done}. {APPLY_NOTE}"

    def update(self, args: dict[str, Any]) -> str:
        """Validate a change to a live task and ask the host to apply it.

        ``args`` holds only the arguments the caller gave (an explicit null included).
        """
        with _as_tool_error():
            req = UpdateRequest.parse(args)
        changed = sorted(set(args) - {"taskId"})
        if not changed:
            raise ToolError(
                "nothing to change; give at least one of prompt, processAfter, recurrence, "
                f"script, {', '.join(POLICY_ALIASES.values())} (null clears script, "
                "recurrence or processAfter, and puts a policy back at its default)"
            )
        state = self._live(ActionKind.UPDATE, req.task_id)
        now = self.now()
        with _as_tool_error():
            changes = validate_update(
                req, state.row, now=now, min_interval=self.config.min_interval
            )
        content: dict[str, Any] = {"taskId": state.series_id}
        content |= {k: v for k, v in args.items() if k != "taskId"}
        if isinstance(args.get("processAfter"), str) and changes.process_after is not None:
            content["processAfter"] = fmt(changes.process_after)
        sv.write_action(self.config.session_dir, UpdateTask.model_validate(content), now)
        tz = zone(state.row.timezone)
        lines = [f"Updated task {state.series_id} ({', '.join(changed)})."]
        if changes.process_after is not None or changes.due is not None:
            slot = changes.process_after or parse_utc(state.row.scheduled_for or fmt(now))
            jitter = changes.settings.get("jitter", state.row.jitter)
            hold = not changes.settings.get("ignore_quiet", state.row.ignore_quiet)
            due = admitted(state.series_id, slot, jitter if changes.recurrence else None,
                           sv.quiet_hours(self.config.session_dir),
                           zone(self.session_zone() or "UTC"), hold)  # fmt: skip
            lines.append(f"Next run: {_when(due, tz)}.")
        if changes.recurrence_changed:
            rec = _recurrence(changes.recurrence)
            lines.append(f"Repeats: {_repeats(rec)}." if rec else "Runs once (no recurrence).")
            lines += [_note(n) for n in recurrence_warnings(rec)] if rec else []
        lines.append(APPLY_NOTE)
        return "\n".join(lines)

    def _live(self, kind: TaskChange, task_id: str) -> sv.TaskState:
        """The series ``task_id`` names, if ``kind`` may change it (else a ToolError)."""
        state = sv.find_task(self.config.session_dir, task_id, self.now())
        if state is None:
            raise ToolError(
                f'no task with id "{task_id[:80]}" in this session; '
                "call list_tasks to see your tasks and their ids"
            )
        with _as_tool_error():
            transition(kind, state.row.status, task_id)
        return state


def _approval_line(valid: ValidTask) -> str:
    wait = (f"up to {valid.approval_timeout} s, then it is {valid.on_timeout}d"
            if valid.approval_timeout else "until a person answers")  # fmt: skip
    return (
        f"Approval: each run waits for a person's approval ({wait}); you cannot approve it "
        "yourself, so tell the user it needs their answer (cronbox task approve)."
    )


def _chained_lines(valid: ValidTask) -> list[str]:
    """What the agent is told about a chained task it scheduled."""
    lines = [
        f"Scheduled task {valid.id} (use this id to cancel, pause, resume or update it).",
        f"Runs each time task {valid.after_task} finishes with outcome {valid.after_outcome}"
        + (f" and its output matches {valid.when_output}" if valid.when_output else "")
        + "; {{parent.output}} in the prompt is replaced by that output.",
    ]
    if valid.approval:
        lines.append(_approval_line(valid))
    return lines


def register(server: MCPServer[Any], tools: TaskTools) -> None:
    """Add the six task tools, with their MCP names and argument names, to ``server``."""

    def schedule_task(
        prompt: Prompt,
        processAfter: ProcessAfter = None,
        recurrence: RecurrenceArg = None,
        script: Script = None,
        timezone: Timezone = None,
        missedPolicy: MissedArg = None,
        catchupLimit: CatchupLimitArg = None,
        maxFailures: MaxFailuresArg = None,
        jitter: JitterArg = None,
        ignoreQuiet: IgnoreQuietArg = None,
        afterTask: AfterTaskArg = None,
        afterOutcome: AfterOutcomeArg = None,
        whenOutput: WhenOutputArg = None,
        approval: ApprovalArg = None,
        approvalTimeout: ApprovalTimeoutArg = None,
        onTimeout: OnTimeoutArg = None,
        isolated: IsolatedArg = None,
    ) -> str:
        policies = {"missedPolicy": missedPolicy, "catchupLimit": catchupLimit,
                    "maxFailures": maxFailures, "jitter": jitter,
                    "ignoreQuiet": ignoreQuiet, "afterTask": afterTask,
                    "afterOutcome": afterOutcome, "whenOutput": whenOutput,
                    "approval": approval, "approvalTimeout": approvalTimeout,
                    "onTimeout": onTimeout, "isolated": isolated}  # fmt: skip
        return tools.schedule(
            prompt, processAfter, recurrence, script, timezone,
            {k: v for k, v in policies.items() if v is not None},
        )  # fmt: skip

    def list_tasks(status: StatusFilter = None) -> str:
        return tools.list(status)

    def cancel_task(taskId: TaskId) -> str:
        return tools.change_status(ActionKind.CANCEL, taskId)

    def pause_task(taskId: TaskId) -> str:
        return tools.change_status(ActionKind.PAUSE, taskId)

    def resume_task(taskId: TaskId) -> str:
        return tools.change_status(ActionKind.RESUME, taskId)

    def update_task(
        ctx: Context[Any, Any],
        taskId: TaskId,
        prompt: Annotated[str | None, Field(description="New instructions.")] = None,
        processAfter: ProcessAfter = None,
        recurrence: RecurrenceArg = None,
        script: Script = None,
        missedPolicy: MissedArg = None,
        catchupLimit: CatchupLimitArg = None,
        maxFailures: MaxFailuresArg = None,
        jitter: JitterArg = None,
        ignoreQuiet: IgnoreQuietArg = None,
        isolated: IsolatedArg = None,
    ) -> str:
        values = {"taskId": taskId, "prompt": prompt, "processAfter": processAfter,
                  "recurrence": recurrence, "script": script, "missedPolicy": missedPolicy,
                  "catchupLimit": catchupLimit, "maxFailures": maxFailures,
                  "jitter": jitter, "ignoreQuiet": ignoreQuiet,
                  "isolated": isolated}  # fmt: skip
        given = _given_arguments(ctx)
        if given is None:  # called without a request (in-process): None means "left out"
            given = {k for k, v in values.items() if v is not None}
        return tools.update({k: v for k, v in values.items() if k in given or k == "taskId"})

    def hints(title: str, *, read_only: bool = False, destructive: bool = False,
              idempotent: bool = False) -> ToolAnnotations:  # fmt: skip
        return ToolAnnotations(
            title=title, read_only_hint=read_only, destructive_hint=destructive,
            idempotent_hint=idempotent, open_world_hint=False,
        )  # fmt: skip

    # A tool that asks the host for something is named after the action it writes.
    table: list[tuple[str, Callable[..., str], str, ToolAnnotations]] = [
        (ActionKind.SCHEDULE, schedule_task, SCHEDULE_DESCRIPTION, hints("Schedule a task")),
        (LIST_TASKS, list_tasks, LIST_DESCRIPTION,
         hints("List tasks", read_only=True, idempotent=True)),
        (ActionKind.CANCEL, cancel_task, CANCEL_DESCRIPTION,
         hints("Cancel a task", destructive=True)),
        (ActionKind.PAUSE, pause_task, PAUSE_DESCRIPTION, hints("Pause a task")),
        (ActionKind.RESUME, resume_task, RESUME_DESCRIPTION, hints("Resume a task")),
        (ActionKind.UPDATE, update_task, UPDATE_DESCRIPTION,
         hints("Update a task", destructive=True)),
    ]  # fmt: skip
    for name, fn, description, hint in table:
        server.add_tool(
            fn, name=str(name), description=description, annotations=hint,
            structured_output=False,
        )  # fmt: skip


# --- helpers -----------------------------------------------------------------------------


@contextmanager
def _as_tool_error() -> Iterator[None]:
    """Turn a CronboxError into a ToolError with its sentence (plus cron help)."""
    try:
        yield
    except CronboxError as exc:
        text = str(exc)
        if isinstance(exc, InvalidRecurrence):
            text += f". {CRON_HINT}"
        raise ToolError(text) from exc


def _given_arguments(ctx: Context[Any, Any]) -> set[str] | None:
    """Names of the arguments the client actually sent (so an explicit null is seen)."""
    try:
        params = ctx.request_context.params
    except ValueError:
        return None
    arguments = (params or {}).get("arguments")
    return set(arguments) if isinstance(arguments, dict) else None


def _when(instant: datetime, tz: ZoneInfo) -> str:
    """An instant in the task's zone and as the exact UTC instant, the zone named once.

    In a UTC zone the readable time and the instant are the same time, so "UTC" is
    written once, after the instant (the e2e tests read the instant from "= ... UTC").
    """
    local = instant.astimezone(tz)
    if local.tzname() == "UTC":
        return f"{local:%a %Y-%m-%d %H:%M:%S} = {fmt(instant)} UTC"
    return f"{local:%a %Y-%m-%d %H:%M:%S %Z} ({tz.key}) = {fmt(instant)} UTC"


def _recurrence(expr: str | None) -> Recurrence | None:
    return stored_recurrence(expr) if expr else None


def _repeats(rec: Recurrence | None) -> str:
    if rec is None:
        return "once"
    words = rec.describe()
    return f'{words[:1].lower()}{words[1:]} ("{rec.expr}")'


def _note(note: str) -> str:
    """One of ``schedule_notes`` as a line of a tool's answer."""
    text = f"{note[:1].upper()}{note[1:]}"
    if note == COST_HINT:
        return f"Tip: {text} (update_task with script)."
    return f"Note: {text}."


def _next(row: InboundMessage, now: datetime) -> str:
    """When a resumed task runs (the store's rule, ``resume_at``)."""
    when = resume_at(row, now) or (parse_utc(row.process_after) if row.process_after else now)
    return _when(when, zone(row.timezone))


def _policies(task: ValidTask | InboundMessage) -> str:
    """A recurring task's scheduling policies in words (defaults spelled out)."""
    return describe_policies(task.missed_policy, task.catchup_limit, task.max_failures, task.jitter)


def _task_line(state: sv.TaskState) -> str:
    row = state.row
    tz = zone(row.timezone)
    when = _when(parse_utc(row.process_after), tz) if row.process_after else "now"
    rec = _recurrence(row.recurrence)
    status = row.status.value
    if row.status is MessageStatus.PAUSED and row.paused_reason:
        status += f": {row.paused_reason}"
    parts = [
        f"- {state.series_id} [{status}]",
        f"next: {when}",
        f"repeats: {_repeats(rec)}",
        f"gate script: {'yes' if row.script else 'no'}",
        f'prompt: "{preview(row.prompt, PROMPT_PREVIEW)}"',
    ]
    if row.ignore_quiet:
        parts.insert(3, "runs in quiet hours too")
    if row.isolated:
        parts.insert(3, "isolated (no chat history)")
    if rec is not None:
        parts.insert(3, f"policies: {_policies(row)}")
        if row.failures:
            parts.insert(4, f"failed {row.failures} times in a row")
    line = "; ".join(parts)
    if not state.applied:
        line += " (just scheduled; waiting for the host to apply it)"
    return line
