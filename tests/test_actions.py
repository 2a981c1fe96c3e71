"""System actions: what the MCP server writes is exactly what the host parses, and hostile
content is always one InvalidAction sentence; status transitions by table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronbox_shared.actions import (
    ACTION_NAMES,
    ActionKind,
    CancelTask,
    PauseTask,
    ResumeTask,
    ScheduleTask,
    TaskChange,
    UpdateTask,
    parse_action,
    transition,
)
from cronbox_shared.errors import InvalidAction, InvalidInput, TaskStateError
from cronbox_shared.models import MessageStatus
from cronbox_shared.tasks import ScheduleRequest, UpdateRequest

UNKNOWN = "; expected one of schedule_task, cancel_task, pause_task, resume_task, update_task"


def test_action_names_are_defined_once_in_the_documented_order() -> None:
    assert ACTION_NAMES == (
        "schedule_task", "cancel_task", "pause_task", "resume_task", "update_task",
    )  # fmt: skip
    assert tuple(ActionKind) == ACTION_NAMES


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        ({"action": "schedule_task", "taskId": "t1", "prompt": "p", "processAfter": "+1h",
          "recurrence": "@daily", "script": "true", "timezone": "UTC", "misfireGrace": 60,
          "timeout": 30}, ScheduleTask),
        ({"action": "schedule_task", "prompt": "p", "recurrence": "@daily"}, ScheduleTask),
        ({"action": "cancel_task", "taskId": "t1"}, CancelTask),
        ({"action": "pause_task", "taskId": "t1"}, PauseTask),
        ({"action": "resume_task", "taskId": "t1"}, ResumeTask),
        ({"action": "update_task", "taskId": "t1", "script": None}, UpdateTask),
        ({"action": "update_task", "taskId": "t1", "prompt": "new", "processAfter": None,
          "recurrence": "@hourly"}, UpdateTask),
    ],
)  # fmt: skip
def test_content_parses_to_its_action_and_writes_back_the_same(
    content: dict[str, Any], kind: type[Any]
) -> None:
    action = parse_action(content)
    assert type(action) is kind
    assert action.action == content["action"]
    assert action.to_content() == content


def test_schedule_and_update_actions_are_the_shared_requests() -> None:
    schedule = parse_action({"action": "schedule_task", "taskId": "t", "prompt": "p"})
    update = parse_action({"action": "update_task", "taskId": "t"})
    assert isinstance(schedule, ScheduleRequest) and schedule.id == "t"
    assert isinstance(update, UpdateRequest) and update.task_id == "t"


def test_an_update_tells_a_field_left_out_from_an_explicit_null() -> None:
    cleared = parse_action({"action": "update_task", "taskId": "t", "script": None})
    kept = parse_action({"action": "update_task", "taskId": "t", "prompt": "p"})
    assert isinstance(cleared, UpdateTask) and isinstance(kept, UpdateTask)
    assert "script" in cleared.model_fields_set and "script" not in kept.model_fields_set
    assert cleared.to_content() == {"action": "update_task", "taskId": "t", "script": None}
    assert kept.to_content() == {"action": "update_task", "taskId": "t", "prompt": "p"}


def test_actions_built_in_code_write_only_what_was_set() -> None:
    assert CancelTask(task_id="t").to_content() == {"action": "cancel_task", "taskId": "t"}
    built = ScheduleTask(id="t", prompt="p", process_after="2026-01-01T00:00:00.000Z")
    assert built.to_content() == {
        "action": "schedule_task", "taskId": "t", "prompt": "p",
        "processAfter": "2026-01-01T00:00:00.000Z",
    }  # fmt: skip
    assert parse_action(built.to_content()) == built


@pytest.mark.parametrize(
    ("action", "shown"),
    [
        ("drop_tables", "drop_tables"),
        ("x" * 100, "x" * 40),
        (None, "None"),
        (7, "7"),
        pytest.param(10**5000, "<int>", id="an-int-too-long-to-print"),
        ("\ud800oops", "\\ud800oops"),
        (["cancel_task"], "['cancel_task']"),
    ],
)
def test_an_unknown_action_names_itself_and_the_known_ones(action: Any, shown: str) -> None:
    with pytest.raises(InvalidAction) as info:
        parse_action({"action": action, "taskId": "t"})
    assert str(info.value) == f'unknown action "{shown}"{UNKNOWN}'


def test_content_without_an_action_is_an_unknown_action() -> None:
    with pytest.raises(InvalidAction, match=r'^unknown action "None"; expected one of'):
        parse_action({"taskId": "t"})


@pytest.mark.parametrize("content", [[], "cancel_task", None, 3, [{"action": "cancel_task"}]])
def test_content_that_is_not_an_object_is_refused(content: Any) -> None:
    with pytest.raises(InvalidAction, match=r"^an action must be a JSON object"):
        parse_action(content)


@pytest.mark.parametrize("verb", ["cancel_task", "pause_task", "resume_task"])
@pytest.mark.parametrize(
    "arguments",
    [{}, {"taskId": 7}, {"taskId": None}, {"taskId": ["t"]}, {"taskId": "t", "prompt": "p"},
     {"task_id": "t", "extra": 1}, {"taskId": "t", "\ud800": 1}],
)  # fmt: skip
def test_a_task_ref_action_takes_exactly_one_string_task_id(
    verb: str, arguments: dict[str, Any]
) -> None:
    with pytest.raises(InvalidAction) as info:
        parse_action({"action": verb, **arguments})
    assert str(info.value) == f"{verb} takes exactly one argument, taskId, a string"


@pytest.mark.parametrize(
    "arguments",
    [
        {"prompt": 5, "processAfter": "+1h"},
        {"processAfter": "+1h"},
        {"prompt": "p", "misfireGrace": -1},
        pytest.param({"prompt": "p", "misfireGrace": 10**5000}, id="huge-grace"),
        {"prompt": "p", "timeout": True},
        {"prompt": "p", "wakeAgent": True},
    ],
)
def test_a_bad_schedule_request_says_what_schedule_request_parse_says(
    arguments: dict[str, Any],
) -> None:
    with pytest.raises(InvalidInput) as expected:
        ScheduleRequest.parse(arguments)
    with pytest.raises(InvalidAction) as info:
        parse_action({"action": "schedule_task", **arguments})
    assert str(info.value) == str(expected.value)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({}, "taskId: Field required"),
        ({"taskId": "t", "prompt": 3}, "prompt: Input should be a valid string"),
        ({"taskId": "t", "when": "now"}, "when: Extra inputs are not permitted"),
        ({"taskId": "t", "k" * 500: 1}, f"{'k' * 40}: Extra inputs are not permitted"),
    ],
)
def test_a_bad_update_request_names_the_field(arguments: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidAction) as info:
        parse_action({"action": "update_task", **arguments})
    assert str(info.value) == says


def deeply_nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("where", ["action", "taskId", "prompt", "extra"])
def test_deep_nesting_anywhere_is_a_sentence_not_a_crash(where: str) -> None:
    content: dict[str, Any] = {"action": "schedule_task", "prompt": "p", "processAfter": "+1h"}
    content[where] = deeply_nested(100_000)
    with pytest.raises(InvalidAction):
        parse_action(content)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
NAMES = st.sampled_from([*ACTION_NAMES, "taskId", "prompt", "processAfter", "recurrence",
                         "script", "timezone", "misfireGrace", "timeout"]) | st.text()  # fmt: skip


@given(
    action=st.sampled_from(ACTION_NAMES) | JSON,
    arguments=st.dictionaries(NAMES, JSON | st.integers(min_value=2**64), max_size=6),
)
def test_hostile_content_is_an_action_or_one_printable_sentence(
    action: Any, arguments: dict[str, Any]
) -> None:
    content = {**arguments, "action": action}
    try:
        parsed = parse_action(content)
    except InvalidAction as exc:
        text = str(exc)
        assert text and "\n" not in text
        text.encode("utf-8")  # a lone surrogate would not get into a log or database
    else:
        assert parse_action(parsed.to_content()) == parsed


# --- status transitions ------------------------------------------------------------------

P, Z, C = MessageStatus.PENDING, MessageStatus.PAUSED, MessageStatus.CANCELLED
ENDED = [MessageStatus.COMPLETED, MessageStatus.FAILED, MessageStatus.CANCELLED,
         MessageStatus.SKIPPED]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "before", "after"),
    [
        (ActionKind.CANCEL, P, C), (ActionKind.CANCEL, Z, C),
        (ActionKind.PAUSE, P, Z),
        (ActionKind.RESUME, Z, P),
        (ActionKind.UPDATE, P, P), (ActionKind.UPDATE, Z, Z),
    ],
)  # fmt: skip
def test_allowed_transitions(kind: TaskChange, before: MessageStatus, after: MessageStatus) -> None:
    assert transition(kind, before, "t1") is after


@pytest.mark.parametrize("status", ENDED)
@pytest.mark.parametrize(
    ("kind", "verb"),
    [(ActionKind.CANCEL, "cancelled"), (ActionKind.PAUSE, "paused"),
     (ActionKind.RESUME, "resumed"), (ActionKind.UPDATE, "updated")],
)  # fmt: skip
def test_an_ended_task_cannot_change(kind: TaskChange, verb: str, status: MessageStatus) -> None:
    with pytest.raises(TaskStateError) as info:
        transition(kind, status, "t1")
    assert str(info.value) == (
        f'task "t1" has already ended (it is {status.value}), so it cannot be {verb}; '
        "schedule a new task instead"
    )


def test_pausing_a_paused_task_and_resuming_a_pending_one_are_refused() -> None:
    with pytest.raises(TaskStateError, match=r'^task "t1" is already paused; resume it'):
        transition(ActionKind.PAUSE, Z, "t1")
    with pytest.raises(TaskStateError) as info:
        transition(ActionKind.RESUME, P, "t1")
    assert str(info.value) == 'task "t1" is not paused (it is pending); nothing to resume'
