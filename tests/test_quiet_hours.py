"""Quiet hours as a pure decision: which instants fall in a session's window (table)."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cronbox_shared.errors import InvalidInput
from cronbox_shared.models import InboundMessage, MessageKind, MessageStatus, RunOutcome
from cronbox_shared.policies import QuietHours, admit, parse_quiet, quiet_end
from cronbox_shared.timeutil import ManualClock, fmt, parse_utc
from host.service import Cronbox, Limits
from host.settlement import Policy, next_occurrence, preview_runs
from host.store.records import Session

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours(time(22), time(7))


@pytest.mark.parametrize(
    ("window", "at", "held_until"),
    [
        # Berlin is UTC+1 in winter: 22:00-07:00 local is 21:00-06:00 UTC.
        (NIGHT, "2026-01-15T20:59:59.000Z", None),
        (NIGHT, "2026-01-15T21:00:00.000Z", "2026-01-16T06:00:00.000Z"),
        (NIGHT, "2026-01-16T02:30:00.000Z", "2026-01-16T06:00:00.000Z"),
        (NIGHT, "2026-01-16T06:00:00.000Z", None),
        # A window inside one day.
        (QuietHours(time(12), time(13, 30)), "2026-01-15T11:15:00.000Z",
         "2026-01-15T12:30:00.000Z"),
        (QuietHours(time(12), time(13, 30)), "2026-01-15T12:30:00.000Z", None),
        # Spring forward (29 March 2026, 02:00 -> 03:00): the night is an hour shorter
        # in real time, and still ends at 07:00 local (now UTC+2).
        (NIGHT, "2026-03-29T01:30:00.000Z", "2026-03-29T05:00:00.000Z"),
        (NIGHT, "2026-03-28T21:00:00.000Z", "2026-03-29T05:00:00.000Z"),
        # Fall back (25 October 2026, 03:00 -> 02:00): ends at 07:00 local, UTC+1 again.
        (NIGHT, "2026-10-25T05:30:00.000Z", "2026-10-25T06:00:00.000Z"),
        (NIGHT, "2026-10-24T20:00:00.000Z", "2026-10-25T06:00:00.000Z"),
        (NIGHT, "2026-10-24T19:59:00.000Z", None),
    ],
)  # fmt: skip
def test_quiet_end_is_the_end_of_the_window_an_instant_falls_in(
    window: QuietHours, at: str, held_until: str | None
) -> None:
    end = quiet_end(window, BERLIN, parse_utc(at))
    assert (fmt(end) if end else None) == held_until


def test_admit_holds_only_what_falls_in_the_window_and_not_what_ignores_it() -> None:
    inside = parse_utc("2026-01-16T02:30:00.000Z")
    outside = parse_utc("2026-01-16T12:00:00.000Z")
    end = parse_utc("2026-01-16T06:00:00.000Z")
    assert admit(inside, NIGHT, BERLIN) == end
    assert admit(inside, NIGHT, BERLIN, ignore_quiet=True) == inside
    assert admit(outside, NIGHT, BERLIN) == outside
    assert admit(inside, None, BERLIN) == inside


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22:00-07:00", NIGHT),
        (" 9:30-10:00 ", QuietHours(time(9, 30), time(10))),
        ("22:00:30-07:00", QuietHours(time(22, 0, 30), time(7))),
    ],
)
def test_parse_quiet_reads_start_end_in_24_hour_time(text: str, expected: QuietHours) -> None:
    assert parse_quiet(text) == expected
    assert parse_quiet(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10pm-7am", "is not a window"),
        ("22:00", "is not a window"),
        ("25:00-07:00", "does not exist"),
        ("07:00-07:00", "is empty"),
    ],
)
def test_parse_quiet_refuses_anything_else_in_one_sentence(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        parse_quiet(text)


# --- the host applies them ----------------------------------------------------------------

NIGHT_NOW = parse_utc("2026-01-15T22:30:00.000Z")  # 23:30 in Berlin, inside 22:00-07:00
MORNING = "2026-01-16T06:00:00.000Z"  # 07:00 in Berlin


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NIGHT_NOW)


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Cronbox:
    return Cronbox(tmp_path / "home", clock=clock, limits=Limits(min_interval=timedelta(0)))


@pytest.fixture
def session(store: Cronbox) -> Session:
    made = store.create_session("night", timezone="Europe/Berlin")
    return store.update_session(made.id, quiet="22:00-07:00")


def test_a_task_due_in_quiet_hours_waits_for_their_end_and_chat_does_not(
    store: Cronbox, session: Session
) -> None:
    held = store.schedule_task(session.id, {"taskId": "held", "prompt": "p", "processAfter": "now"})
    loud = store.schedule_task(
        session.id, {"taskId": "loud", "prompt": "p", "processAfter": "now", "ignoreQuiet": True}
    )
    chat = store.send_message(session.id, "still up?")
    assert held.next_run == MORNING
    assert loud.next_run == fmt(NIGHT_NOW)
    assert set(store.due_ids(session.id)) == {loud.id, chat.id}
    assert session.quiet == "22:00-07:00"


def test_a_recurring_occurrence_due_in_quiet_hours_is_held_and_keeps_its_slot(
    store: Cronbox, session: Session
) -> None:
    task = store.schedule_task(session.id, {"taskId": "h", "prompt": "p", "recurrence": "@hourly"})
    assert task.next_run == MORNING
    [row] = [r for r in store.inbound_rows(session.id) if r.id == task.id]
    assert row.scheduled_for == "2026-01-15T23:00:00.000Z"


def test_new_quiet_hours_move_pending_tasks_and_clearing_them_releases_them(
    store: Cronbox, clock: ManualClock
) -> None:
    session = store.create_session("later", timezone="Europe/Berlin")
    task = store.schedule_task(session.id, {"taskId": "t", "prompt": "p", "processAfter": "+1h"})
    assert task.next_run == "2026-01-15T23:30:00.000Z"
    store.update_session(session.id, quiet="22:00-07:00")
    assert store.get_task(task.id).next_run == MORNING
    assert store.update_session(session.id, quiet="off").quiet is None
    assert store.get_task(task.id).next_run == "2026-01-15T23:30:00.000Z"


def test_bad_quiet_hours_are_one_sentence_and_change_nothing(store: Cronbox) -> None:
    session = store.create_session("typo", timezone="Europe/Berlin")
    with pytest.raises(InvalidInput, match='--quiet "10pm" is not a window'):
        store.update_session(session.id, quiet="10pm")
    assert store.get_session(session.id).quiet is None


def test_the_next_occurrence_due_in_quiet_hours_is_held_to_their_end() -> None:
    policy = Policy(quiet=NIGHT, zone="Europe/Berlin")
    finished = InboundMessage(
        id="h", seq=2, kind=MessageKind.TASK, created_at="2026-01-15T08:00:00.000Z",
        status=MessageStatus.PENDING, process_after="2026-01-15T20:00:00.000Z",
        scheduled_for="2026-01-15T20:00:00.000Z", recurrence="@hourly", timezone="UTC",
        series_id="h", tries=0, trigger=1, content={"prompt": "p"},
    )  # fmt: skip
    nxt = next_occurrence(finished, parse_utc("2026-01-15T20:00:05.000Z"), RunOutcome.OK, None,
                          policy)  # fmt: skip
    assert nxt is not None
    assert (nxt.scheduled_for, nxt.process_after) == ("2026-01-15T21:00:00.000Z", MORNING)
    loud = finished.model_copy(update={"ignore_quiet": True})
    nxt = next_occurrence(loud, parse_utc("2026-01-15T20:00:05.000Z"), RunOutcome.OK, None, policy)
    assert nxt is not None
    assert nxt.process_after == "2026-01-15T21:00:00.000Z"


def hourly(**fields: object) -> InboundMessage:
    values: dict[str, object] = {
        "id": "h", "seq": 2, "kind": MessageKind.TASK, "created_at": "2026-01-15T08:00:00.000Z",
        "status": MessageStatus.PENDING, "process_after": "2026-01-15T20:00:00.000Z",
        "scheduled_for": "2026-01-15T20:00:00.000Z", "recurrence": "@hourly",
        "timezone": "UTC", "series_id": "h", "tries": 0, "trigger": 1,
        "content": {"prompt": "p"},
    }  # fmt: skip
    values.update(fields)
    return InboundMessage.model_validate(values)


NIGHT_POLICY = Policy(quiet=NIGHT, zone="Europe/Berlin")  # 21:00-06:00 UTC in January


@pytest.mark.parametrize(
    ("row", "policy", "expected"),
    [
        # Without quiet hours: each slot, on time.
        (hourly(), Policy(), [("20:00", "20:00"), ("21:00", "21:00"), ("22:00", "22:00")]),
        # latest: the slots the night holds coalesce onto the one at its end.
        (hourly(missed_policy="latest"), NIGHT_POLICY,
         [("20:00", "20:00"), ("06:00", "06:00"), ("07:00", "07:00")]),
        # skip: the same, the latest slot being on time at the night's end.
        (hourly(missed_policy="skip"), NIGHT_POLICY,
         [("20:00", "20:00"), ("06:00", "06:00"), ("07:00", "07:00")]),
        # all: each slot of the night replays at its end, oldest first, up to the limit.
        (hourly(missed_policy="all", catchup_limit=3), NIGHT_POLICY,
         [("20:00", "20:00"), ("04:00", "06:00"), ("05:00", "06:00"), ("06:00", "06:00"),
          ("07:00", "07:00")]),
    ],
)  # fmt: skip
def test_preview_runs_shows_the_runs_as_the_host_will_make_them(
    row: InboundMessage, policy: Policy, expected: list[tuple[str, str]]
) -> None:
    runs = preview_runs(row, policy, len(expected))
    assert [(s.strftime("%H:%M"), a.strftime("%H:%M")) for s, a in runs] == expected


def test_preview_runs_of_a_one_time_task_is_its_run() -> None:
    once = hourly(recurrence=None, process_after="2026-01-16T06:00:00.000Z")
    assert preview_runs(once, NIGHT_POLICY, 10) == [
        (parse_utc("2026-01-15T20:00:00.000Z"), parse_utc("2026-01-16T06:00:00.000Z"))
    ]
