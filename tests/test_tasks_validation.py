"""Validation of task requests: every rejection is one sentence and writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import (
    InvalidInput,
    InvalidRecurrence,
    InvalidTime,
    InvalidTimezone,
    TooManyTasks,
)
from cronbox_shared.tasks import (
    ScheduleRequest,
    UpdateRequest,
    parse_duration,
    parse_when,
    validate_schedule,
)
from cronbox_shared.timeutil import ManualClock
from host.service import Cronbox, Limits
from host.store.records import Session

START = "2026-01-15T12:00:00.000Z"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
BERLIN = ZoneInfo("Europe/Berlin")
MAX = 64 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Cronbox:
    return Cronbox(tmp_path, clock=ManualClock(START))


@pytest.fixture
def session(store: Cronbox) -> Session:
    return store.create_session("work", timezone="America/New_York")


def assert_nothing_written(store: Cronbox, session: Session) -> None:
    with sdb.inbound(store.session_dir(session.id), readonly=True) as db:
        assert db.table("messages_in").count == 0
    assert store.list_tasks(session.id, include_all=True) == []
    assert [e.action for e in store.audit_entries(session.id)] == ["session.create"]
    assert store.get_session(session.id).next_due_at is None


# --- every rejection of schedule_task --------------------------------------------------

REJECTED: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("empty prompt", {"prompt": ""}, InvalidInput, "prompt is empty"),
    ("whitespace prompt", {"prompt": " \n\t "}, InvalidInput, "prompt is empty"),
    (
        "prompt over 64 KiB",
        {"prompt": "x" * (MAX + 1)},
        InvalidInput,
        "prompt is 65,537 bytes, over the limit of 65,536 bytes (64 KiB)",
    ),
    (
        "multibyte prompt over 64 KiB",
        {"prompt": "é" * (MAX // 2 + 1)},
        InvalidInput,
        "prompt is 65,538 bytes",
    ),
    (
        "script over 64 KiB",
        {"script": "x" * (MAX + 1)},
        InvalidInput,
        "script is 65,537 bytes, over the limit of 65,536 bytes (64 KiB)",
    ),
    ("unparsable time", {"processAfter": "tomorrow-ish"}, InvalidTime, '"tomorrow-ish" is not'),
    ("impossible date", {"processAfter": "2026-02-30T09:00:00"}, InvalidTime, "is not a time"),
    (
        "invalid cron",
        {"processAfter": None, "recurrence": "0 25 * * *"},
        InvalidRecurrence,
        'recurrence "0 25 * * *": hour 25 is out of range 0-23',
    ),
    (
        "cron with too few fields",
        {"processAfter": None, "recurrence": "0 9 * *"},
        InvalidRecurrence,
        '"0 9 * *"',
    ),
    (
        "unknown timezone",
        {"timezone": "Mars/Olympus_Mons"},
        InvalidTimezone,
        'timezone "Mars/Olympus_Mons" (from the task\'s timezone) is not a known IANA zone',
    ),
    (
        "every more often than the default minimum",
        {"processAfter": None, "recurrence": "@every 30s"},
        InvalidRecurrence,
        "more often than the minimum of 60 seconds",
    ),
    (
        "cron with a seconds field",
        {"processAfter": None, "recurrence": "* * * * * *"},
        InvalidRecurrence,
        "expected 5 fields",
    ),
    (
        "past one-time processAfter",
        {"processAfter": "2026-01-15T10:00:00Z"},
        InvalidTime,
        "processAfter 2026-01-15T10:00:00.000Z is in the past (now is 2026-01-15T12:00:00.000Z)",
    ),
    (
        "neither processAfter nor recurrence",
        {"processAfter": None},
        InvalidInput,
        "a task needs processAfter (when to run once) or recurrence",
    ),
    ("prompt of the wrong type", {"prompt": 5}, InvalidInput, "prompt: Input should be"),
    ("missing prompt", {"prompt": None}, InvalidInput, "prompt"),
    ("recurrence of the wrong type", {"recurrence": 60}, InvalidInput, "recurrence: Input"),
    ("unknown field", {"cron": "0 9 * * *"}, InvalidInput, "cron: Extra inputs"),
    ("bad task id", {"taskId": "has space"}, InvalidInput, 'task id "has space" is not valid'),
    ("negative misfire grace", {"misfireGrace": -1}, InvalidInput, "misfireGrace"),
]


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_a_rejected_schedule_is_one_sentence_and_writes_nothing(
    store: Cronbox, session: Session, fields: dict[str, Any], error: type[Exception], words: str
) -> None:
    merged: dict[str, Any] = {"prompt": "do it", "processAfter": "+1h", **fields}
    request = {k: v for k, v in merged.items() if v is not None}
    with pytest.raises(error) as info:
        store.schedule_task(session.id, request)
    message = str(info.value)
    assert words in message
    assert "\n" not in message
    assert_nothing_written(store, session)


def test_a_recurrence_below_a_configured_minimum_is_rejected(tmp_path: Path) -> None:
    store = Cronbox(
        tmp_path,
        clock=ManualClock(START),
        limits=Limits(min_interval=timedelta(seconds=120)),
    )
    session = store.create_session("work")
    with pytest.raises(InvalidRecurrence) as info:
        store.schedule_task(session.id, {"prompt": "p", "recurrence": "*/1 * * * *"})
    assert '"*/1 * * * *"' in str(info.value)
    assert "120 seconds" in str(info.value)
    assert_nothing_written(store, session)
    view = store.schedule_task(session.id, {"prompt": "p", "recurrence": "*/2 * * * *"})
    assert view.recurrence == "*/2 * * * *"


def test_a_lower_minimum_admits_a_faster_recurrence(tmp_path: Path) -> None:
    store = Cronbox(
        tmp_path,
        clock=ManualClock(START),
        limits=Limits(min_interval=timedelta(seconds=10)),
    )
    session = store.create_session("work")
    view = store.schedule_task(session.id, {"prompt": "p", "recurrence": "@every 30s"})
    assert view.next_run == "2026-01-15T12:00:30.000Z"


def test_more_than_max_tasks_per_session_is_rejected_and_writes_nothing(tmp_path: Path) -> None:
    store = Cronbox(tmp_path, clock=ManualClock(START), limits=Limits(max_tasks_per_session=3))
    session = store.create_session("work")
    for i in range(3):
        store.schedule_task(session.id, {"taskId": f"t{i}", "prompt": "p", "processAfter": "+1h"})
    before = store.audit_entries(session.id)
    with pytest.raises(TooManyTasks, match="already has 3 live tasks"):
        store.schedule_task(session.id, {"taskId": "t3", "prompt": "p", "processAfter": "+1h"})
    with sdb.inbound(store.session_dir(session.id), readonly=True) as db:
        assert db.table("messages_in").count == 3
    assert [v.id for v in store.list_tasks(session.id, include_all=True)] == ["t0", "t1", "t2"]
    assert store.audit_entries(session.id) == before
    # Rescheduling an existing id is not a new task, so the limit does not apply.
    assert (
        store.schedule_task(session.id, {"taskId": "t0", "prompt": "p", "processAfter": "+1h"}).id
        == "t0"
    )


@pytest.mark.parametrize("field", ["prompt", "script"])
def test_exactly_64_kib_is_accepted(store: Cronbox, session: Session, field: str) -> None:
    request = {"prompt": "p", "processAfter": "+1h", field: "x" * MAX}
    view = store.schedule_task(session.id, request)
    assert store.get_task(view.id).status == "pending"


def test_a_slightly_past_one_time_time_runs_now(store: Cronbox, session: Session) -> None:
    view = store.schedule_task(session.id, {"prompt": "p", "processAfter": "2026-01-15T11:59:30Z"})
    assert view.next_run == START


def test_a_past_process_after_with_a_recurrence_is_kept(store: Cronbox, session: Session) -> None:
    view = store.schedule_task(
        session.id,
        {"prompt": "p", "processAfter": "2026-01-15T10:00:00Z", "recurrence": "0 9 * * *"},
    )
    assert view.next_run == "2026-01-15T10:00:00.000Z"


def test_only_a_recurrence_first_runs_at_its_next_occurrence(
    store: Cronbox, session: Session
) -> None:
    view = store.schedule_task(session.id, {"prompt": "p", "recurrence": "0 9 * * MON-FRI"})
    assert view.next_run == "2026-01-15T14:00:00.000Z"  # Thursday 09:00 in New York


def test_a_task_timezone_overrides_the_session_zone(store: Cronbox, session: Session) -> None:
    view = store.schedule_task(
        session.id, {"prompt": "p", "recurrence": "0 9 * * *", "timezone": "Asia/Tokyo"}
    )
    assert view.timezone == "Asia/Tokyo"
    assert view.next_run == "2026-01-16T00:00:00.000Z"


# --- the request models ----------------------------------------------------------------


def test_schedule_request_accepts_the_mcp_argument_names() -> None:
    req = ScheduleRequest.parse(
        {"taskId": "t1", "prompt": "p", "processAfter": "+1h", "misfireGrace": 60}
    )
    assert (req.id, req.process_after, req.misfire_grace) == ("t1", "+1h", 60)


def test_update_request_tells_an_omitted_field_from_an_explicit_null() -> None:
    req = UpdateRequest.parse({"taskId": "t1", "script": None})
    assert req.model_fields_set == {"task_id", "script"}


def test_update_request_needs_a_task_id() -> None:
    with pytest.raises(InvalidInput, match="taskId"):
        UpdateRequest.parse({"prompt": "p"})


def test_validate_schedule_computes_the_first_run_without_writing() -> None:
    req = ScheduleRequest.parse({"prompt": "p", "processAfter": "2026-01-15T09:00:00"})
    valid = validate_schedule(
        req, default_tz="Asia/Tokyo", now=NOW - timedelta(days=1), min_interval=timedelta(60)
    )
    assert valid.first_run == datetime(2026, 1, 15, 0, 0, tzinfo=UTC)
    assert valid.timezone == "Asia/Tokyo"
    assert valid.id.startswith("task-")
    assert valid.content == {"prompt": "p", "script": None}


def test_an_empty_script_is_stored_as_none() -> None:
    req = ScheduleRequest.parse({"prompt": "p", "processAfter": "now", "script": ""})
    valid = validate_schedule(req, default_tz="UTC", now=NOW, min_interval=timedelta(60))
    assert valid.script is None


# --- parse_when --------------------------------------------------------------------------

WHEN = [
    ("naive New York winter", "2026-01-15T09:00:00", NEW_YORK, "2026-01-15T14:00:00+00:00"),
    ("naive Tokyo", "2026-01-15T09:00:00", TOKYO, "2026-01-15T00:00:00+00:00"),
    ("Z taken as is", "2026-01-15T09:00:00Z", TOKYO, "2026-01-15T09:00:00+00:00"),
    ("offset taken as is", "2026-01-15T09:00:00+02:00", TOKYO, "2026-01-15T07:00:00+00:00"),
    ("New York spring-forward gap", "2026-03-08T02:30:00", NEW_YORK, "2026-03-08T07:00:00+00:00"),
    ("New York fall-back first", "2026-11-01T01:30:00", NEW_YORK, "2026-11-01T05:30:00+00:00"),
    ("Berlin spring-forward gap", "2026-03-29T02:30:00", BERLIN, "2026-03-29T01:00:00+00:00"),
    ("Berlin summer", "2026-07-01T09:00:00", BERLIN, "2026-07-01T07:00:00+00:00"),
    ("relative plus minutes", "+10m", NEW_YORK, "2026-01-15T12:10:00+00:00"),
    ("relative plus compound", "+1h30m", NEW_YORK, "2026-01-15T13:30:00+00:00"),
    ("in two hours", "in 2 hours", NEW_YORK, "2026-01-15T14:00:00+00:00"),
    ("in one minute", "In 1 Minute", NEW_YORK, "2026-01-15T12:01:00+00:00"),
    ("in compact", "in 10m", NEW_YORK, "2026-01-15T12:10:00+00:00"),
    ("now", "now", NEW_YORK, "2026-01-15T12:00:00+00:00"),
    ("now with spaces", "  NOW ", NEW_YORK, "2026-01-15T12:00:00+00:00"),
]


@pytest.mark.parametrize(
    ("text", "tz", "expected"), [w[1:] for w in WHEN], ids=[w[0] for w in WHEN]
)
def test_parse_when_reads_times_as_utc(text: str, tz: ZoneInfo, expected: str) -> None:
    got = parse_when(text, tz, NOW)
    assert got == datetime.fromisoformat(expected)
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["garbage", "", "+", "+10", "in two hours", "9am", "+10 parsecs"])
def test_parse_when_rejects_garbage_with_one_sentence(text: str) -> None:
    with pytest.raises(InvalidTime) as info:
        parse_when(text, NEW_YORK, NOW)
    message = str(info.value)
    assert message.startswith(f'processAfter "{text}" is not a time')
    assert "America/New_York" in message and "+10m" in message
    assert "\n" not in message


def test_parse_when_names_the_field_it_read() -> None:
    with pytest.raises(InvalidTime, match=r'^--at "x" is not a time'):
        parse_when("x", NEW_YORK, NOW, field="--at")


DURATIONS = [
    ("30m", timedelta(minutes=30)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("90s", timedelta(seconds=90)),
    ("2d", timedelta(days=2)),
    ("1w", timedelta(weeks=1)),
    ("1H 30M", timedelta(hours=1, minutes=30)),
    ("", None),
    ("10", None),
    ("m", None),
    ("1x", None),
    ("1h-30m", None),
]


@pytest.mark.parametrize(("text", "expected"), DURATIONS)
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected
