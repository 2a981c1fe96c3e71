"""Recurrence parsing, DST-correct evaluation and the catch-up decision (SPEC §5)."""

from __future__ import annotations

import functools
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cronbox_shared.errors import InvalidInput, InvalidRecurrence
from cronbox_shared.recurrence import (
    SKIPPED_FIRES_CAP,
    Recurrence,
    RunDecision,
    fire_times,
    latest_fire_at_or_before,
    next_fire,
    parse_recurrence,
    plan_due,
    recurrence_warnings,
)
from cronbox_shared.timeutil import fmt, parse_utc
from tests.recurrence_oracle import reference_fire_times, reference_fires, zone_transitions

UTC_ZONE = ZoneInfo("UTC")
ZONES = ["America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata"]


def fires(expr: str, tz: str, after: str, n: int) -> list[str]:
    return [fmt(t) for t in fire_times(parse_recurrence(expr), ZoneInfo(tz), parse_utc(after), n)]


def day_or(cron: str) -> bool:
    parts = cron.split()
    return not parts[2].startswith("*") and not parts[4].startswith("*")


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", 'recurrence "0 25 * * *": hour 25 is out of range 0-23'),
        ("60 9 * * *", 'recurrence "60 9 * * *": minute 60 is out of range 0-59'),
        ("0 9 0 * *", 'recurrence "0 9 0 * *": day of month 0 is out of range 1-31'),
        ("0 9 32 * *", 'recurrence "0 9 32 * *": day of month 32 is out of range 1-31'),
        ("0 9 * 13 *", 'recurrence "0 9 * 13 *": month 13 is out of range 1-12'),
        ("0 9 * 0 *", 'recurrence "0 9 * 0 *": month 0 is out of range 1-12'),
        ("0 9 * * 8", 'recurrence "0 9 * * 8": day of week 8 is out of range 0-7'),
        ("0 9-24 * * *", 'recurrence "0 9-24 * * *": hour 24 is out of range 0-23'),
        (
            "0 9 * *",
            'recurrence "0 9 * *": expected 5 fields '
            "(minute hour day-of-month month day-of-week), got 4",
        ),
        (
            "0 0 9 * * *",
            'recurrence "0 0 9 * * *": expected 5 fields '
            "(minute hour day-of-month month day-of-week), got 6; "
            "seconds and year fields are not supported",
        ),
        (
            "0 0 9 * * * 2026",
            'recurrence "0 0 9 * * * 2026": expected 5 fields '
            "(minute hour day-of-month month day-of-week), got 7; "
            "seconds and year fields are not supported",
        ),
        (
            "hello",
            'recurrence "hello": expected 5 fields '
            "(minute hour day-of-month month day-of-week), got 1",
        ),
        (
            "0 9 * * FUNDAY",
            'recurrence "0 9 * * FUNDAY": day of week "FUNDAY" is not a day name or number; '
            "use SUN-SAT or 0-7 (0 and 7 are Sunday)",
        ),
        (
            "0 9 * SMARCH *",
            'recurrence "0 9 * SMARCH *": month "SMARCH" is not a month name or number; '
            "use JAN-DEC or 1-12",
        ),
        ("0 MON * * *", 'recurrence "0 MON * * *": hour "MON" is not a number; use 0-23'),
        (
            "*/0 * * * *",
            'recurrence "*/0 * * * *": minute step "0" in "*/0" must be a whole number '
            "of 1 or more, as in */15",
        ),
        (
            "0 */x * * *",
            'recurrence "0 */x * * *": hour step "x" in "*/x" must be a whole number '
            "of 1 or more, as in */15",
        ),
        (
            "5/15 * * * *",
            'recurrence "5/15 * * * *": minute "5/15" has a step without a range; '
            "write 5-59/15 or */15",
        ),
        (
            "50-10 * * * *",
            'recurrence "50-10 * * * *": minute range "50-10" runs backwards; '
            "write the smaller value first or use a list",
        ),
        (
            "1,,2 * * * *",
            'recurrence "1,,2 * * * *": minute "1,,2" is not valid; use a number, a range '
            "such as 1-5, a step such as */15, or a list such as 1,15",
        ),
        (
            "0 9 L * *",
            'recurrence "0 9 L * *": day of month "L" is not a number; use 1-31',
        ),
        (
            "0 0 30 2 *",
            'recurrence "0 0 30 2 *": never fires because no month it names has that day; '
            "pick a day that exists",
        ),
        (
            "",
            'recurrence "" is empty; write a 5-field cron expression such as "0 9 * * *" '
            'or an interval such as "@every 1h"',
        ),
        (
            "   ",
            'recurrence "" is empty; write a 5-field cron expression such as "0 9 * * *" '
            'or an interval such as "@every 1h"',
        ),
        (
            "@reboot",
            'recurrence "@reboot": @reboot is not supported because cronbox schedules by '
            'the clock; use a time-based expression such as "@daily"',
        ),
        (
            "@fortnightly",
            'recurrence "@fortnightly": unknown shorthand "@fortnightly"; use @yearly, '
            "@annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>",
        ),
        (
            "@daily 9",
            'recurrence "@daily 9": @daily takes nothing after it; write just "@daily"',
        ),
        (
            "@every",
            'recurrence "@every": needs a duration after @every, such as "@every 30m"',
        ),
        (
            "@every 5x",
            'recurrence "@every 5x": "5x" is not a duration; write whole numbers with units '
            "w, d, h, m and s, such as 90s, 30m, 2h, 1d, 1w or 1h30m",
        ),
        (
            "@every 30m1x",
            'recurrence "@every 30m1x": "30m1x" is not a duration; write whole numbers with '
            "units w, d, h, m and s, such as 90s, 30m, 2h, 1d, 1w or 1h30m",
        ),
        (
            "@every 1.5h",
            'recurrence "@every 1.5h": "1.5h" is not a duration; write whole numbers with '
            "units w, d, h, m and s, such as 90s, 30m, 2h, 1d, 1w or 1h30m",
        ),
        (
            "@every 0m",
            'recurrence "@every 0m": the interval is zero; use a positive duration such as 30m',
        ),
        (
            "@every 30s",
            'recurrence "@every 30s" fires every 30 seconds, more often than the minimum '
            "of 60 seconds; use a longer interval",
        ),
    ],
)
def test_invalid_expression_is_rejected_with_one_sentence(expr: str, message: str) -> None:
    with pytest.raises(InvalidRecurrence) as caught:
        parse_recurrence(expr)
    assert str(caught.value) == message
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize(
    ("expr", "min_interval", "message"),
    [
        (
            "*/5 * * * *",
            timedelta(minutes=10),
            'recurrence "*/5 * * * *" fires as little as 300 seconds apart, more often than '
            "the minimum of 600 seconds; use a longer interval",
        ),
        (
            "0 0,23 * * *",
            timedelta(hours=2),
            'recurrence "0 0,23 * * *" fires as little as 3600 seconds apart, more often '
            "than the minimum of 7200 seconds; use a longer interval",
        ),
        (
            "0 0,23 1,31 * *",
            timedelta(hours=2),
            'recurrence "0 0,23 1,31 * *" fires as little as 3600 seconds apart, more often '
            "than the minimum of 7200 seconds; use a longer interval",
        ),
        (
            "@every 1h",
            timedelta(hours=2),
            'recurrence "@every 1h" fires every 3600 seconds, more often than the minimum '
            "of 7200 seconds; use a longer interval",
        ),
    ],
)
def test_recurrence_firing_more_often_than_the_minimum_is_rejected(
    expr: str, min_interval: timedelta, message: str
) -> None:
    with pytest.raises(InvalidRecurrence) as caught:
        parse_recurrence(expr, min_interval)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("expr", "min_interval"),
    [
        ("* * * * *", timedelta(seconds=60)),
        ("@every 1m", timedelta(seconds=60)),
        ("*/10 * * * *", timedelta(minutes=10)),
        ("0 0,23 1 * *", timedelta(hours=2)),
        ("0 0,23 * * MON,WED,FRI", timedelta(hours=2)),
        ("0 9 * * *", timedelta(days=1)),
    ],
)
def test_recurrence_at_or_above_the_minimum_is_accepted(expr: str, min_interval: timedelta) -> None:
    assert parse_recurrence(expr, min_interval).expr == expr


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "cron", "fixed_time"),
    [
        ("@yearly", "0 0 1 1 *", True),
        ("@annually", "0 0 1 1 *", True),
        ("@monthly", "0 0 1 * *", True),
        ("@weekly", "0 0 * * 0", True),
        ("@daily", "0 0 * * *", True),
        ("@midnight", "0 0 * * *", True),
        ("@hourly", "0 * * * *", False),
        ("@DAILY", "0 0 * * *", True),
        ("30 2 * * *", "30 2 * * *", True),
        ("0 9 * * MON-FRI", "0 9 * * MON-FRI", True),
        ("0,30 9 * * *", "0,30 9 * * *", True),
        ("0 9-17 * * *", "0 9-17 * * *", True),
        ("*/15 * * * *", "*/15 * * * *", False),
        ("0 * * * *", "0 * * * *", False),
        ("5 */2 * * *", "5 */2 * * *", False),
    ],
)
def test_shorthands_expand_and_fixed_time_follows_minute_and_hour_fields(
    expr: str, cron: str, fixed_time: bool
) -> None:
    rec = parse_recurrence(expr)
    assert rec.cron == cron
    assert rec.every is None
    assert rec.fixed_time is fixed_time


@pytest.mark.parametrize(
    ("expr", "every"),
    [
        ("@every 30m", timedelta(minutes=30)),
        ("@every 2h", timedelta(hours=2)),
        ("@every 1d", timedelta(days=1)),
        ("@every 2d", timedelta(days=2)),
        ("@every 90s", timedelta(seconds=90)),
        ("@every 1h30m", timedelta(hours=1, minutes=30)),
        ("@every 1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("@EVERY 2H", timedelta(hours=2)),
        ("  @every   1h 30m ", timedelta(hours=1, minutes=30)),
    ],
)
def test_every_durations_parse_into_intervals(expr: str, every: timedelta) -> None:
    rec = parse_recurrence(expr)
    assert rec.every == every
    assert rec.fixed_time is False
    assert rec.cron is None
    assert rec.expr == " ".join(expr.split())


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("0 9 * * MON-FRI", "At 09:00, Monday through Friday"),
        ("30 14 * * *", "At 14:30"),
        ("@daily", "At 00:00"),
        ("*/15 * * * *", "Every 15 minutes"),
        ("@every 1h30m", "every 1 hour 30 minutes"),
        ("@every 90s", "every 1 minute 30 seconds"),
        ("@every 2d", "every 2 days"),
    ],
)
def test_describe_puts_the_recurrence_in_words(expr: str, words: str) -> None:
    assert parse_recurrence(expr).describe() == words


def test_recurrence_is_a_frozen_value() -> None:
    rec = parse_recurrence("0 9 * * *")
    assert rec == Recurrence("0 9 * * *", None, True)
    with pytest.raises(AttributeError):
        rec.expr = "x"  # type: ignore[misc]


# --- plain evaluation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * sun", "0 9 * * 7-7", "0 9 * * 0,7"],
)
def test_zero_seven_and_sun_all_mean_sunday(expr: str) -> None:
    # 2026-01-04 is a Sunday.
    assert fires(expr, "UTC", "2026-01-01T00:00:00Z", 2) == [
        "2026-01-04T09:00:00.000Z",
        "2026-01-11T09:00:00.000Z",
    ]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "0 9 * * mon-fri",
            ["2026-01-01T09:00:00.000Z", "2026-01-02T09:00:00.000Z", "2026-01-05T09:00:00.000Z"],
        ),
        (
            "0 9 1 jan,Jul *",
            ["2026-01-01T09:00:00.000Z", "2026-07-01T09:00:00.000Z", "2027-01-01T09:00:00.000Z"],
        ),
        (
            "0 9 1 FEB-DEC/5 *",
            ["2026-02-01T09:00:00.000Z", "2026-07-01T09:00:00.000Z", "2026-12-01T09:00:00.000Z"],
        ),
        (
            "15,45 9-10 * * *",
            ["2026-01-01T09:15:00.000Z", "2026-01-01T09:45:00.000Z", "2026-01-01T10:15:00.000Z"],
        ),
    ],
)
def test_names_ranges_steps_and_lists_select_the_right_times(
    expr: str, expected: list[str]
) -> None:
    assert fires(expr, "UTC", "2026-01-01T00:00:00Z", 3) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # Both day fields restricted: the 15th (a Thursday) OR any Monday.
        (
            "0 9 15 * MON",
            [
                "2026-01-05T09:00:00.000Z",
                "2026-01-12T09:00:00.000Z",
                "2026-01-15T09:00:00.000Z",
                "2026-01-19T09:00:00.000Z",
            ],
        ),
        # Day of month starts with '*': only Mondays that fall on odd days (AND).
        (
            "0 9 */2 * MON",
            [
                "2026-01-05T09:00:00.000Z",
                "2026-01-19T09:00:00.000Z",
                "2026-02-09T09:00:00.000Z",
                "2026-02-23T09:00:00.000Z",
            ],
        ),
        # Day of month unrestricted: only Mondays.
        (
            "0 9 * * MON",
            [
                "2026-01-05T09:00:00.000Z",
                "2026-01-12T09:00:00.000Z",
                "2026-01-19T09:00:00.000Z",
                "2026-01-26T09:00:00.000Z",
            ],
        ),
    ],
)
def test_day_of_month_and_day_of_week_follow_the_vixie_or_rule(
    expr: str, expected: list[str]
) -> None:
    assert fires(expr, "UTC", "2026-01-01T00:00:00Z", 4) == expected


def test_next_fire_is_strictly_after_the_given_instant() -> None:
    rec = parse_recurrence("0 9 * * *")
    assert fmt(next_fire(rec, UTC_ZONE, parse_utc("2026-01-01T09:00:00Z"))) == (
        "2026-01-02T09:00:00.000Z"
    )
    assert fmt(next_fire(rec, UTC_ZONE, parse_utc("2026-01-01T08:59:59.999Z"))) == (
        "2026-01-01T09:00:00.000Z"
    )


def test_every_counts_real_time_from_the_given_instant_across_dst() -> None:
    rec = parse_recurrence("@every 1h30m")
    got = fire_times(rec, ZoneInfo("America/New_York"), parse_utc("2026-03-08T05:10:00Z"), 3)
    assert [fmt(t) for t in got] == [
        "2026-03-08T06:40:00.000Z",
        "2026-03-08T08:10:00.000Z",
        "2026-03-08T09:40:00.000Z",
    ]


def test_results_are_aware_utc() -> None:
    got = next_fire(
        parse_recurrence("0 9 * * *"), ZoneInfo("Asia/Kolkata"), parse_utc("2026-01-01T00:00:00Z")
    )
    assert got.tzinfo is UTC
    assert fmt(got) == "2026-01-01T03:30:00.000Z"


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire(parse_recurrence("0 9 * * *"), UTC_ZONE, datetime(2026, 1, 1))


# --- DST -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            ["2026-03-08T07:00:00.000Z", "2026-03-09T06:30:00.000Z"],
        ),
        (
            "0,30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            ["2026-03-08T07:00:00.000Z", "2026-03-09T06:00:00.000Z"],
        ),
        (
            "*/30 * * * *",
            "America/New_York",
            "2026-03-08T06:00:00Z",
            ["2026-03-08T06:30:00.000Z", "2026-03-08T07:00:00.000Z", "2026-03-08T07:30:00.000Z"],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-03-08T06:30:00Z",
            ["2026-03-08T07:00:00.000Z", "2026-03-08T08:00:00.000Z"],
        ),
        # America/New_York: 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            ["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"],
        ),
        (
            "*/30 * * * *",
            "America/New_York",
            "2026-11-01T04:45:00Z",
            [
                "2026-11-01T05:00:00.000Z",
                "2026-11-01T05:30:00.000Z",
                "2026-11-01T06:00:00.000Z",
                "2026-11-01T06:30:00.000Z",
                "2026-11-01T07:00:00.000Z",
            ],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T04:30:00Z",
            ["2026-11-01T05:00:00.000Z", "2026-11-01T06:00:00.000Z", "2026-11-01T07:00:00.000Z"],
        ),
        # Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            ["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"],
        ),
        (
            "0 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:30:00Z",
            ["2026-03-29T01:00:00.000Z", "2026-03-29T02:00:00.000Z"],
        ),
        # Europe/Berlin: 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"],
        ),
        (
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-10-25T00:15:00Z",
            [
                "2026-10-25T00:30:00.000Z",
                "2026-10-25T01:00:00.000Z",
                "2026-10-25T01:30:00.000Z",
                "2026-10-25T02:00:00.000Z",
            ],
        ),
        # Australia/Sydney: 2026-10-04 02:00 AEST -> 03:00 AEDT (2026-10-03T16:00Z).
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2026-10-03T00:00:00Z",
            ["2026-10-03T16:00:00.000Z", "2026-10-04T15:30:00.000Z"],
        ),
        (
            "0 * * * *",
            "Australia/Sydney",
            "2026-10-03T15:30:00Z",
            ["2026-10-03T16:00:00.000Z", "2026-10-03T17:00:00.000Z"],
        ),
        # Australia/Sydney: 2026-04-05 03:00 AEDT -> 02:00 AEST (2026-04-04T16:00Z).
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2026-04-04T00:00:00Z",
            ["2026-04-04T15:30:00.000Z", "2026-04-05T16:30:00.000Z"],
        ),
        (
            "*/30 * * * *",
            "Australia/Sydney",
            "2026-04-04T15:15:00Z",
            [
                "2026-04-04T15:30:00.000Z",
                "2026-04-04T16:00:00.000Z",
                "2026-04-04T16:30:00.000Z",
                "2026-04-04T17:00:00.000Z",
            ],
        ),
        # Asia/Kolkata: no DST, a constant +05:30.
        (
            "30 2 * * *",
            "Asia/Kolkata",
            "2026-03-07T12:00:00Z",
            ["2026-03-07T21:00:00.000Z", "2026-03-08T21:00:00.000Z"],
        ),
        (
            "*/30 * * * *",
            "Asia/Kolkata",
            "2026-11-01T05:00:00Z",
            ["2026-11-01T05:30:00.000Z", "2026-11-01T06:00:00.000Z", "2026-11-01T06:30:00.000Z"],
        ),
    ],
)
def test_dst_gap_fires_fixed_jobs_once_at_the_transition_and_repeated_hour_once(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    assert fires(expr, tz, after, len(expected)) == expected


def test_fixed_job_fires_once_on_fall_back_day_although_croniter_alone_fires_twice() -> None:
    rec = parse_recurrence("30 1 * * *")
    tz = ZoneInfo("America/New_York")
    day_start, day_end = parse_utc("2026-11-01T04:00:00Z"), parse_utc("2026-11-02T04:00:00Z")
    got = [t for t in fire_times(rec, tz, day_start, 3) if t < day_end]
    assert [fmt(t) for t in got] == ["2026-11-01T05:30:00.000Z"]
    native = croniter("30 1 * * *", day_start.astimezone(tz))
    native_fires = [native.get_next(datetime) for _ in range(3)]
    assert sum(t < day_end for t in native_fires) == 2


def test_next_fire_chained_equals_fire_times() -> None:
    rec = parse_recurrence("*/20 * * * *")
    tz = ZoneInfo("Europe/Berlin")
    after = parse_utc("2026-10-24T23:00:00Z")
    chained = []
    for _ in range(12):
        after = next_fire(rec, tz, after)
        chained.append(after)
    assert chained == fire_times(rec, tz, parse_utc("2026-10-24T23:00:00Z"), 12)


# --- properties ------------------------------------------------------------------------

MINUTES = ["*", "*/15", "0", "30", "0,30", "5-10", "*/7", "59"]
HOURS = ["*", "*/2", "1", "2", "3", "1-3", "0,12", "9-17/4", "2,3"]
DAYS = ["*", "1", "15", "1-7", "*/10", "28-31", "5,25"]
MONTHS = ["*", "1", "3,10", "MAR-NOV", "*/3", "apr", "3-4,10"]
WEEKDAYS = ["*", "MON-FRI", "0", "7", "sat,sun", "1-5/2", "SUN"]
TRANSITIONS = [
    "2026-03-08T07:00:00Z",
    "2026-11-01T06:00:00Z",
    "2026-03-29T01:00:00Z",
    "2026-10-25T01:00:00Z",
    "2026-10-03T16:00:00Z",
    "2026-04-04T16:00:00Z",
]

expressions = st.tuples(
    st.sampled_from(MINUTES),
    st.sampled_from(HOURS),
    st.sampled_from(DAYS),
    st.sampled_from(MONTHS),
    st.sampled_from(WEEKDAYS),
).map(" ".join)
instants_in_2026 = st.one_of(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-30 * 60, 6 * 60)).map(
        lambda p: parse_utc(p[0]) + timedelta(minutes=p[1])
    ),
)


def is_gap_transition(instant: datetime, tz: ZoneInfo) -> bool:
    before = (instant - timedelta(seconds=1)).astimezone(tz).utcoffset()
    at = instant.astimezone(tz).utcoffset()
    return before is not None and at is not None and at > before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, st.sampled_from(ZONES), instants_in_2026)
def test_fire_times_increase_strictly_and_match_the_expression_locally(
    expr: str, tz_name: str, after: datetime
) -> None:
    try:
        rec = parse_recurrence(expr)
    except InvalidRecurrence:
        assume(False)
        raise
    tz = ZoneInfo(tz_name)
    got = fire_times(rec, tz, after, 8)
    assert len(got) == 8
    assert got[0] > after
    assert all(a < b for a, b in itertools.pairwise(got))
    for fire in got:
        local = fire.astimezone(tz)
        assert local.second == 0
        if rec.fixed_time and is_gap_transition(fire, tz):
            continue
        assert croniter.match(expr, local.replace(tzinfo=None), day_or=day_or(expr))
        if rec.fixed_time:
            assert local.fold == 0


def oracle(expr: str, fixed: bool, tz: ZoneInfo, after: datetime, until: datetime) -> list[str]:
    """Every fire in (after, until] found by scanning each UTC minute."""
    walls = croniter(expr, (after - timedelta(days=1)).replace(tzinfo=None), day_or=day_or(expr))
    matching: set[datetime] = set()
    limit = (until + timedelta(days=1)).replace(tzinfo=None)
    while True:
        wall: datetime = walls.get_next(datetime)
        if wall > limit:
            break
        matching.add(wall)
    expected = []
    minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute <= until:
        local = minute.astimezone(tz)
        wall = local.replace(tzinfo=None)
        fires_now = wall in matching and not (fixed and local.fold == 1)
        if fixed and is_gap_transition(minute, tz):
            # Wall times skipped by the transition run at the transition itself.
            skipped = (minute - timedelta(minutes=1)).astimezone(tz).replace(tzinfo=None)
            while not fires_now and (skipped := skipped + timedelta(minutes=1)) < wall:
                fires_now = skipped in matching
        if fires_now and minute > after:
            expected.append(fmt(minute))
        minute += timedelta(minutes=1)
    return expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expressions,
    st.sampled_from(ZONES[:3]),
    st.sampled_from(TRANSITIONS),
    st.integers(-20 * 60, 2 * 60),
)
def test_no_fire_is_missed_or_invented_around_dst_transitions(
    expr: str, tz_name: str, transition: str, offset_minutes: int
) -> None:
    try:
        rec = parse_recurrence(expr)
    except InvalidRecurrence:
        assume(False)
        raise
    tz = ZoneInfo(tz_name)
    after = parse_utc(transition) + timedelta(minutes=offset_minutes)
    until = after + timedelta(hours=26)
    got: list[str] = []
    cursor = after
    while cursor <= until:
        batch = fire_times(rec, tz, cursor, 64)
        got += [fmt(t) for t in batch if t <= until]
        cursor = batch[-1]
    assert got == oracle(expr, rec.fixed_time, tz, after, until)


# --- catch-up --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "start", "now", "expected"),
    [
        (
            "* * * * *",
            "UTC",
            "2021-01-01T00:00:00Z",
            "2026-01-01T00:00:30Z",
            "2026-01-01T00:00:00Z",
        ),
        (
            "* * * * *",
            "America/New_York",
            "2021-01-01T00:00:00Z",
            "2026-06-01T12:34:56Z",
            "2026-06-01T12:34:00.000Z",
        ),
        (
            "0 0 1 1 *",
            "America/New_York",
            "2020-01-01T05:00:00Z",
            "2026-06-01T00:00:00Z",
            "2026-01-01T05:00:00.000Z",
        ),
        (
            "0 9 * * *",
            "UTC",
            "2026-01-01T09:00:00Z",
            "2026-01-02T08:59:59Z",
            "2026-01-01T09:00:00Z",
        ),
        (
            "0 9 * * *",
            "UTC",
            "2026-01-01T09:00:00Z",
            "2026-01-01T09:00:00Z",
            "2026-01-01T09:00:00Z",
        ),
        (
            "0 9 * * *",
            "UTC",
            "2026-01-01T09:00:00Z",
            "2026-01-04T09:00:00Z",
            "2026-01-04T09:00:00Z",
        ),
        # Second pass of the repeated hour is on the grid for a real-time job.
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T04:00:00Z",
            "2026-11-01T06:10:00Z",
            "2026-11-01T06:00:00Z",
        ),
        (
            "@every 7m",
            "UTC",
            "2021-01-01T00:03:00Z",
            "2026-01-01T00:00:00Z",
            "2025-12-31T23:54:00Z",
        ),
        (
            "@every 1h",
            "UTC",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:59:00Z",
            "2026-01-01T00:00:00Z",
        ),
    ],
)
def test_latest_fire_at_or_before_finds_the_last_grid_time_quickly(
    expr: str, tz: str, start: str, now: str, expected: str
) -> None:
    got = latest_fire_at_or_before(
        parse_recurrence(expr), ZoneInfo(tz), parse_utc(start), parse_utc(now)
    )
    assert fmt(got) == fmt(parse_utc(expected))


DAILY = parse_recurrence("0 9 * * *")
HOURLY_EVERY = parse_recurrence("@every 1h")


@pytest.mark.parametrize(
    ("rec", "scheduled", "now", "grace", "expected"),
    [
        # On time.
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-05T09:00:00.200Z",
            timedelta(minutes=5),
            ("run", "2026-01-05T09:00:00Z", 0),
        ),
        # Late, within grace.
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-05T09:04:00Z",
            timedelta(minutes=5),
            ("run", "2026-01-05T09:00:00Z", 0),
        ),
        # Late, past grace.
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-05T09:10:00Z",
            timedelta(minutes=5),
            ("missed", "2026-01-05T09:00:00Z", 0),
        ),
        # No grace: however late, it runs.
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-05T20:00:00Z",
            None,
            ("run", "2026-01-05T09:00:00Z", 0),
        ),
        # Host down three days: coalesce to the latest grid time.
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-07T10:00:00Z",
            None,
            ("run", "2026-01-07T09:00:00Z", 2),
        ),
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-07T10:00:00Z",
            timedelta(hours=2),
            ("run", "2026-01-07T09:00:00Z", 2),
        ),
        (
            DAILY,
            "2026-01-05T09:00:00Z",
            "2026-01-07T10:00:00Z",
            timedelta(minutes=30),
            ("missed", "2026-01-07T09:00:00Z", 2),
        ),
        (
            HOURLY_EVERY,
            "2026-01-05T09:00:00Z",
            "2026-01-05T12:30:00Z",
            None,
            ("run", "2026-01-05T12:00:00Z", 3),
        ),
        # One-time occurrences stand for themselves.
        (
            None,
            "2026-01-05T09:00:00Z",
            "2026-01-08T09:00:00Z",
            None,
            ("run", "2026-01-05T09:00:00Z", 0),
        ),
        (
            None,
            "2026-01-05T09:00:00Z",
            "2026-01-05T09:01:00Z",
            timedelta(minutes=5),
            ("run", "2026-01-05T09:00:00Z", 0),
        ),
        (
            None,
            "2026-01-05T09:00:00Z",
            "2026-01-05T09:06:00Z",
            timedelta(minutes=5),
            ("missed", "2026-01-05T09:00:00Z", 0),
        ),
    ],
)
def test_plan_due_coalesces_late_fires_and_applies_misfire_grace(
    rec: Recurrence | None,
    scheduled: str,
    now: str,
    grace: timedelta | None,
    expected: tuple[str, str, int],
) -> None:
    decision = plan_due(rec, UTC_ZONE, parse_utc(scheduled), parse_utc(now), grace)
    action, scheduled_for, skipped = expected
    assert decision == RunDecision(action, parse_utc(scheduled_for), skipped)  # type: ignore[arg-type]


def test_plan_due_caps_the_count_of_skipped_fires() -> None:
    decision = plan_due(
        parse_recurrence("* * * * *"),
        ZoneInfo("Europe/Berlin"),
        parse_utc("2021-01-01T00:00:00Z"),
        parse_utc("2026-01-01T00:00:30Z"),
        None,
    )
    assert decision.scheduled_for == parse_utc("2026-01-01T00:00:00Z")
    assert decision.skipped_fires == SKIPPED_FIRES_CAP


# --- the field-jumping evaluation against the old one ----------------------------------

# The old evaluation (croniter over wall times, a heap and a 3-hour window) is kept as
# an oracle in tests/recurrence_oracle.py; the new one must give exactly its answers.
ORACLE_ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Dublin",  # negative DST in tzdata: winter is the "summer" offset
    "Australia/Sydney",
    "Australia/Lord_Howe",  # 30-minute shift
    "Pacific/Chatham",  # +12:45/+13:45, changing at 02:45 standard time
    "Asia/Kolkata",
    "America/Santiago",  # changes at midnight
    "America/St_Johns",  # -03:30/-02:30
    "America/Havana",  # changes at midnight or 01:00
    "Antarctica/Troll",  # a 2-hour shift
    "Africa/Casablanca",  # four changes a year around Ramadan
    "Pacific/Apia",  # skipped the whole of 2011-12-30
    "UTC",
]
SAMPLE_FROM = datetime(2000, 1, 1, tzinfo=UTC)
SAMPLE_TO = datetime(2038, 1, 1, tzinfo=UTC)


@functools.cache
def offset_changes(zone: str) -> list[datetime]:
    return zone_transitions(ZoneInfo(zone), SAMPLE_FROM, SAMPLE_TO)


@st.composite
def cron_fields(draw: st.DrawFn, low: int, high: int, names: tuple[str, ...] = ()) -> str:
    """One field: a list of *, values, ranges (some a single value) and steps, some named."""

    def spell(value: int) -> str:
        if value - low < len(names) and draw(st.booleans()):
            name = names[value - low]
            return draw(st.sampled_from([name, name.upper(), name.title()]))
        return str(value)

    items = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["*", "*", "value", "range", "single", "*/", "range/"]))
        step = f"/{draw(st.integers(1, high - low + 2))}"
        a, b = sorted(draw(st.lists(st.integers(low, high), min_size=2, max_size=2)))
        if kind == "*":
            items.append("*")
        elif kind == "value":
            items.append(spell(a))
        elif kind == "range":
            items.append(f"{spell(a)}-{spell(b)}")
        elif kind == "single":  # such as 12-12/6, which selects 12 alone
            items.append(f"{spell(a)}-{spell(a)}{step}")
        elif kind == "*/":
            items.append(f"*{step}")
        else:
            items.append(f"{spell(a)}-{spell(b)}{step}")
    return ",".join(items)


MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
random_expressions = st.one_of(
    st.tuples(
        cron_fields(0, 59),
        cron_fields(0, 23),
        cron_fields(1, 31),
        cron_fields(1, 12, MONTH_NAMES),
        cron_fields(0, 7, DAY_NAMES),
    ).map(" ".join),
    st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "* * * * *"]),
)


@st.composite
def zones_and_instants(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant, three times in four within a day of an offset change."""
    zone = draw(st.sampled_from(ORACLE_ZONES))
    changes = offset_changes(zone)
    if changes and draw(st.integers(0, 3)) > 0:
        change = draw(st.sampled_from(changes))
        seconds = draw(st.one_of(st.integers(-86400, 86400), st.integers(-3 * 3600, 3 * 3600)))
        micros = draw(st.sampled_from([0, 0, 1, 500_000, 999_999]))
        return zone, change + timedelta(seconds=seconds, microseconds=micros)
    instant = draw(st.datetimes(SAMPLE_FROM.replace(tzinfo=None), SAMPLE_TO.replace(tzinfo=None)))
    return zone, instant.replace(tzinfo=UTC)


def parsed_or_skipped(expr: str) -> Recurrence:
    try:
        return parse_recurrence(expr)
    except InvalidRecurrence:  # e.g. the 31st of months that have no 31st
        assume(False)
        raise


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_expressions, zones_and_instants())
def test_fire_times_are_the_old_evaluations_fire_times(
    expr: str, zone_and_instant: tuple[str, datetime]
) -> None:
    rec = parsed_or_skipped(expr)
    zone, after = zone_and_instant
    tz = ZoneInfo(zone)
    got = fire_times(rec, tz, after, 10)
    assert got == reference_fire_times(rec, tz, after, 10)
    assert next_fire(rec, tz, after) == got[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_expressions, zones_and_instants(), st.integers(0, 86400))
def test_catch_up_agrees_with_the_old_evaluation(
    expr: str, zone_and_instant: tuple[str, datetime], late_seconds: int
) -> None:
    rec = parsed_or_skipped(expr)
    zone, after = zone_and_instant
    tz = ZoneInfo(zone)
    old = reference_fires(rec, tz, after)
    start = next(old)
    now = start + timedelta(seconds=late_seconds)
    passed = list(itertools.takewhile(lambda t: t <= now, old))
    assert latest_fire_at_or_before(rec, tz, start, now) == (passed[-1] if passed else start)
    decision = plan_due(rec, tz, start, now, None)
    assert decision.skipped_fires == min(len(passed), SKIPPED_FIRES_CAP)


def fires_as_before(expr: str, tz: str, after: str, n: int) -> list[str]:
    """``fires``, once the old evaluation is seen to give the same."""
    got = fires(expr, tz, after, n)
    old = reference_fire_times(parse_recurrence(expr), ZoneInfo(tz), parse_utc(after), n)
    assert got == [fmt(t) for t in old]
    return got


# cronsim 2.8 reads a stepped range of one value, "12-12/6", as "12/6" (12-23/6).
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # cronsim: 01-01 12:00, 01-01 18:00, 01-02 12:00.
        (
            "0 12-12/6 * * *",
            ["2026-01-01T12:00:00.000Z", "2026-01-02T12:00:00.000Z", "2026-01-03T12:00:00.000Z"],
        ),
        # cronsim: 09:30 and 09:45 every day.
        (
            "30-30/15 9 * * *",
            ["2026-01-01T09:30:00.000Z", "2026-01-02T09:30:00.000Z", "2026-01-03T09:30:00.000Z"],
        ),
        # cronsim: the 5th, 15th and 25th.
        (
            "0 0 5-5/10 * *",
            ["2026-01-05T00:00:00.000Z", "2026-02-05T00:00:00.000Z", "2026-03-05T00:00:00.000Z"],
        ),
        # cronsim: June, September and December.
        (
            "0 0 1 JUN-JUN/3 *",
            ["2026-06-01T00:00:00.000Z", "2027-06-01T00:00:00.000Z", "2028-06-01T00:00:00.000Z"],
        ),
        # cronsim: Monday, Wednesday, Friday and Sunday (Fri 01-02, Sun 01-04, Mon 01-05).
        (
            "0 9 * * MON-MON/2",
            ["2026-01-05T09:00:00.000Z", "2026-01-12T09:00:00.000Z", "2026-01-19T09:00:00.000Z"],
        ),
    ],
)
def test_a_stepped_range_of_one_value_selects_that_value_alone(
    expr: str, expected: list[str]
) -> None:
    assert fires_as_before(expr, "UTC", "2026-01-01T00:00:00Z", 3) == expected


# Australia/Lord_Howe, 30-minute shifts: 2026-04-05 02:00 +11:00 -> 01:30 +10:30
# (2026-04-04T15:00Z, 01:30-01:59 repeat); 2026-10-04 02:00 +10:30 -> 02:30 +11:00
# (2026-10-03T15:30Z, 02:00-02:29 skipped).
# Pacific/Chatham, changing at 02:45 standard time: 2026-04-05 03:45 +13:45 -> 02:45
# +12:45 (2026-04-04T14:00Z, 02:45-03:44 repeat); 2026-09-27 02:45 +12:45 -> 03:45
# +13:45 (2026-09-26T14:00Z, 02:45-03:44 skipped).
# America/Santiago, changing at midnight: 2026-09-06 00:00 -04:00 -> 01:00 -03:00
# (2026-09-06T04:00Z, midnight skipped).
@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # Fixed time in the gap: once, at the transition (cronsim agrees).
        (
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-03T12:00:00Z",
            ["2026-10-03T15:30:00.000Z", "2026-10-04T15:15:00.000Z"],
        ),
        (
            "0 3 * * *",
            "Pacific/Chatham",
            "2026-09-26T12:00:00Z",
            ["2026-09-26T14:00:00.000Z", "2026-09-27T13:15:00.000Z"],
        ),
        (
            "0 0 * * *",
            "America/Santiago",
            "2026-09-05T12:00:00Z",
            ["2026-09-06T04:00:00.000Z", "2026-09-07T03:00:00.000Z"],
        ),
        # Fixed time in the repeated span: once, on the first pass (cronsim agrees).
        (
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T12:00:00Z",
            ["2026-04-04T14:45:00.000Z", "2026-04-05T15:15:00.000Z"],
        ),
        (
            "0 3 * * *",
            "Pacific/Chatham",
            "2026-04-04T12:00:00Z",
            ["2026-04-04T13:15:00.000Z", "2026-04-05T14:15:00.000Z"],
        ),
        # From inside the second pass, a fixed time already run today waits for
        # tomorrow. cronsim answers today's first pass, before the start instant:
        # 2026-04-04T14:45Z and 2026-04-04T13:35Z.
        (
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T15:05:00Z",
            ["2026-04-05T15:15:00.000Z"],
        ),
        (
            "20 3 * * *",
            "Pacific/Chatham",
            "2026-04-04T14:24:00Z",
            ["2026-04-05T14:35:00.000Z"],
        ),
        # Real time: every 15 minutes straight through both passes (cronsim agrees).
        (
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-04-04T14:00:00Z",
            [
                "2026-04-04T14:15:00.000Z",
                "2026-04-04T14:30:00.000Z",
                "2026-04-04T14:45:00.000Z",
                "2026-04-04T15:00:00.000Z",
                "2026-04-04T15:15:00.000Z",
                "2026-04-04T15:30:00.000Z",
                "2026-04-04T15:45:00.000Z",
            ],
        ),
        (
            "*/15 * * * *",
            "Pacific/Chatham",
            "2026-04-04T13:00:00Z",
            [
                "2026-04-04T13:15:00.000Z",
                "2026-04-04T13:30:00.000Z",
                "2026-04-04T13:45:00.000Z",
                "2026-04-04T14:00:00.000Z",
                "2026-04-04T14:15:00.000Z",
                "2026-04-04T14:30:00.000Z",
                "2026-04-04T14:45:00.000Z",
                "2026-04-04T15:00:00.000Z",
            ],
        ),
        # Real time across a gap: the skipped wall times do not fire (cronsim agrees).
        (
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-10-03T15:00:00Z",
            ["2026-10-03T15:15:00.000Z", "2026-10-03T15:30:00.000Z", "2026-10-03T15:45:00.000Z"],
        ),
        (
            "*/15 * * * *",
            "Pacific/Chatham",
            "2026-09-26T13:30:00Z",
            ["2026-09-26T13:45:00.000Z", "2026-09-26T14:00:00.000Z", "2026-09-26T14:15:00.000Z"],
        ),
        # A real-time wall time whose first pass is behind the start fires again in
        # the second pass, although the fall-back is still most of a shift away
        # (cronsim agrees).
        (
            "*/60 1 * * *",
            "America/New_York",
            "2026-11-01T05:10:00Z",
            ["2026-11-01T06:00:00.000Z", "2026-11-02T06:00:00.000Z"],
        ),
        (
            "*/35 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T14:40:00Z",
            ["2026-04-04T15:05:00.000Z", "2026-04-05T14:30:00.000Z"],
        ),
        # cronsim drops the second pass of 01:30: 14:30, 16:00, 17:00.
        (
            "30 * * * *",
            "Australia/Lord_Howe",
            "2026-04-04T13:45:00Z",
            ["2026-04-04T14:30:00.000Z", "2026-04-04T15:00:00.000Z", "2026-04-04T16:00:00.000Z"],
        ),
        # cronsim drops 02:30, which exists (only 02:00-02:29 are skipped): 15:00,
        # 16:30, 17:30.
        (
            "30 * * * *",
            "Australia/Lord_Howe",
            "2026-10-03T14:45:00Z",
            ["2026-10-03T15:00:00.000Z", "2026-10-03T15:30:00.000Z", "2026-10-03T16:30:00.000Z"],
        ),
        # 02:00 comes once, at +10:30, after the fall-back; cronsim drops it: 17:30, ...
        (
            "0 */2 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T13:30:00Z",
            ["2026-04-04T15:30:00.000Z", "2026-04-04T17:30:00.000Z", "2026-04-04T19:30:00.000Z"],
        ),
        # 02:45's second pass; cronsim goes straight to tomorrow's 02:00.
        (
            "*/15 2 * * *",
            "Pacific/Chatham",
            "2026-04-04T13:00:00Z",
            ["2026-04-04T14:00:00.000Z", "2026-04-05T13:15:00.000Z"],
        ),
        # cronsim does not return at all here (it loops in advance_hour).
        (
            "50 */3 * * *",
            "Pacific/Chatham",
            "2026-04-04T14:10:00Z",
            ["2026-04-04T15:05:00.000Z", "2026-04-04T18:05:00.000Z"],
        ),
    ],
)
def test_half_hour_and_quarter_hour_dst_shifts_follow_the_debian_rules(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    assert fires_as_before(expr, tz, after, len(expected)) == expected


# The only answers the rewrite changed: fall-backs of more than three hours, beyond the
# old evaluation's window, whose second passes it lost. Expected instants were checked
# against a scan of every UTC second (a fire wherever the wall clock shows a matching
# whole minute), not against the old evaluation.
@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # Vostok, 1994-02-01 00:00 +07 -> 1994-01-31 17:00 -00 (17:00Z): seven hours
        # repeat. The old evaluation began at 20:00Z, losing 18:00's second pass.
        (
            "0 */2 * * *",
            "Antarctica/Vostok",
            "1994-01-31T15:01:00Z",
            [
                "1994-01-31T18:00:00.000Z",
                "1994-01-31T20:00:00.000Z",
                "1994-01-31T22:00:00.000Z",
                "1994-02-01T00:00:00.000Z",
            ],
        ),
        # Apia, 1892-07-05 00:00 +12:33:04 -> 1892-07-04 00:00 -11:26:56 (11:26:56Z): a
        # whole day repeats. The old evaluation lost its second pass and began at
        # 1892-07-05T05:26:56Z.
        (
            "0 */6 * * *",
            "Pacific/Apia",
            "1892-07-04T08:02:48Z",
            [
                "1892-07-04T11:26:56.000Z",
                "1892-07-04T17:26:56.000Z",
                "1892-07-04T23:26:56.000Z",
                "1892-07-05T05:26:56.000Z",
            ],
        ),
    ],
)
def test_a_fall_back_of_many_hours_fires_every_second_pass_of_a_real_time_job(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    assert fires(expr, tz, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "warnings"),
    [
        ("*/90 * * * *",
         ('the minute step "*/90" is larger than its range (0-59), so it fires only at minute 0',)),
        ("0 */30 * * *",
         ('the hour step "*/30" is larger than its range (0-23), so it fires only at hour 0',)),
        ("5-10/20 * * * *",
         ('the minute step "5-10/20" is larger than its range (5-10), so it fires only at '
          "minute 5",)),
        ("*/15 * * * *", ()),
        ("0 0 * * 1-5/2", ()),
        ("@hourly", ()),
        ("@every 2h", ()),
    ],
)  # fmt: skip
def test_a_step_larger_than_its_field_is_accepted_with_a_warning(
    expr: str, warnings: tuple[str, ...]
) -> None:
    assert recurrence_warnings(parse_recurrence(expr)) == warnings
