"""Quiet hours as a pure decision: which instants fall in a session's window (table)."""

from __future__ import annotations

from datetime import time
from zoneinfo import ZoneInfo

import pytest

from cronbox_shared.errors import InvalidInput
from cronbox_shared.policies import QuietHours, admit, parse_quiet, quiet_end
from cronbox_shared.timeutil import fmt, parse_utc

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
