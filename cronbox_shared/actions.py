"""The system actions an agent sends the host, and how each changes a task's status.

The MCP server writes an action to ``messages_out`` (``kind=system``) with
:meth:`to_content`; the host reads it back with :func:`parse_action`, which treats the
content as hostile (the container is untrusted) and turns anything wrong into one
:class:`~cronbox_shared.errors.InvalidAction` sentence. Which status a cancel, pause,
resume or update leaves a task in is decided by :func:`transition` alone, for the host's
store and the MCP server's projection of requests the host has not applied yet.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cronbox_shared.errors import InvalidAction, TaskStateError, shown
from cronbox_shared.models import MessageStatus
from cronbox_shared.tasks import ScheduleRequest, UpdateRequest, validation_sentence


class ActionKind(StrEnum):
    """The ``action`` of a system action: the MCP tool that asked for it."""

    SCHEDULE = "schedule_task"
    CANCEL = "cancel_task"
    PAUSE = "pause_task"
    RESUME = "resume_task"
    UPDATE = "update_task"


ACTION_NAMES: tuple[str, ...] = tuple(kind.value for kind in ActionKind)
"""Every action name, in the order the tools are documented."""

TaskChange = Literal[ActionKind.CANCEL, ActionKind.PAUSE, ActionKind.RESUME, ActionKind.UPDATE]
"""The actions that change an existing task (every one but ``schedule_task``)."""


class _Action(BaseModel):
    """What every action model has: its name, and the content it is written as."""

    action: ActionKind

    def to_content(self) -> dict[str, Any]:
        """The JSON object to write to ``messages_out``: by alias, only the fields set.

        An update's explicit null stays (it clears the field); a field never set is left
        out, so :func:`parse_action` reads back exactly this action.
        """
        dumped = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        dumped.pop("action", None)
        return {"action": self.action.value, **dumped}


class ScheduleTask(ScheduleRequest, _Action):
    """``schedule_task``: the fields and aliases of a ScheduleRequest."""

    action: Literal[ActionKind.SCHEDULE] = ActionKind.SCHEDULE


class UpdateTask(UpdateRequest, _Action):
    """``update_task``: an UpdateRequest, where a field left out differs from a null.

    ``model_fields_set`` tells them apart (see ``validate_update``).
    """

    action: Literal[ActionKind.UPDATE] = ActionKind.UPDATE


class _TaskRef(_Action):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, strict=True, defer_build=True
    )

    task_id: str = Field(alias="taskId")


class CancelTask(_TaskRef):
    """``cancel_task``: end the task's live occurrence, and so its series."""

    action: Literal[ActionKind.CANCEL] = ActionKind.CANCEL


class PauseTask(_TaskRef):
    """``pause_task``: keep a pending task's schedule but do not run it."""

    action: Literal[ActionKind.PAUSE] = ActionKind.PAUSE


class ResumeTask(_TaskRef):
    """``resume_task``: let a paused task run again."""

    action: Literal[ActionKind.RESUME] = ActionKind.RESUME


AgentAction = Annotated[
    ScheduleTask | CancelTask | PauseTask | ResumeTask | UpdateTask,
    Field(discriminator="action"),
]
"""One system action, told apart by its ``action`` field."""

DECISIONS = ("approve", "reject", "approval", "decide")
"""Action names a container may try to answer an approval with: each is refused."""

_ADAPTER: TypeAdapter[AgentAction] = TypeAdapter(AgentAction)
_TASK_REFS = (ActionKind.CANCEL, ActionKind.PAUSE, ActionKind.RESUME)


def parse_action(content: object) -> AgentAction:
    """Validate the content of a ``kind=system`` row (untrusted) as one action.

    Raises InvalidAction with one sentence: for content that is not an object, an
    unknown action, an action that only takes ``taskId`` given anything else, or the
    first problem with a schedule or update request. Never lets anything else escape,
    however deep, long or badly encoded the content is.
    """
    if not isinstance(content, dict):
        raise InvalidAction(
            f'an action must be a JSON object with an "action" field, not {type(content).__name__}'
        )
    name = content.get("action")
    if isinstance(name, str) and name.lower().removesuffix("_task") in DECISIONS:
        raise InvalidAction(
            "an agent cannot approve or reject a task, not even its own: an approval is a "
            "person's answer (cronbox task approve or reject); tell the user it waits for them"
        )
    if not isinstance(name, str) or name not in ACTION_NAMES:
        raise InvalidAction(
            f'unknown action "{shown(name)}"; expected one of {", ".join(ACTION_NAMES)}'
        )
    kind = ActionKind(name)
    try:
        return _ADAPTER.validate_python(content)
    except ValidationError as exc:
        if kind in _TASK_REFS:
            raise InvalidAction(f"{kind} takes exactly one argument, taskId, a string") from None
        # Locations start with the union's tag, the action name the sentence leaves out.
        raise validation_sentence(exc, InvalidAction, skip=1) from None


# --- status transitions --------------------------------------------------------------------

_TRANSITIONS: dict[ActionKind, tuple[dict[MessageStatus, MessageStatus], str]] = {
    ActionKind.CANCEL: (
        {MessageStatus.PENDING: MessageStatus.CANCELLED,
         MessageStatus.PAUSED: MessageStatus.CANCELLED,
         MessageStatus.WAITING: MessageStatus.CANCELLED,
         MessageStatus.AWAITING_APPROVAL: MessageStatus.CANCELLED},
        "cancelled",
    ),
    ActionKind.PAUSE: ({MessageStatus.PENDING: MessageStatus.PAUSED}, "paused"),
    ActionKind.RESUME: ({MessageStatus.PAUSED: MessageStatus.PENDING}, "resumed"),
    ActionKind.UPDATE: (
        {MessageStatus.PENDING: MessageStatus.PENDING, MessageStatus.PAUSED: MessageStatus.PAUSED},
        "updated",
    ),
}  # fmt: skip


def transition(kind: TaskChange, status: MessageStatus, ref: str) -> MessageStatus:
    """The status a task in ``status`` has after ``kind``; ``ref`` names it in errors.

    cancel: pending or paused → cancelled; pause: pending → paused; resume: paused →
    pending; update: pending or paused → unchanged. Anything else raises TaskStateError
    with one sentence saying why.
    """
    allowed, verb = _TRANSITIONS[kind]
    after = allowed.get(status)
    if after is not None:
        return after
    ref = shown(ref, 80)
    if not status.live:
        raise TaskStateError(
            f'task "{ref}" has already ended (it is {status.value}), so it cannot be {verb}; '
            "schedule a new task instead"
        )
    if status is MessageStatus.WAITING:
        raise TaskStateError(
            f'task "{ref}" waits for its parent task, so it cannot be {verb}; cancel it instead'
        )
    if status is MessageStatus.AWAITING_APPROVAL:
        raise TaskStateError(
            f'task "{ref}" is awaiting approval, so it cannot be {verb}; approve, reject or '
            "cancel it"
        )
    if kind is ActionKind.PAUSE:
        raise TaskStateError(f'task "{ref}" is already paused; resume it to let it run again')
    raise TaskStateError(f'task "{ref}" is not paused (it is {status.value}); nothing to resume')
