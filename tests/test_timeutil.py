"""The one time format, the manual clock, zone lookup and the host timezone chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronbox_shared.errors import InvalidTime, InvalidTimezone
from cronbox_shared.timeutil import (
    ManualClock,
    exists_locally,
    fmt,
    is_ambiguous,
    is_canonical,
    local_to_utc,
    parse_utc,
    resolve_host_timezone,
    zone,
)

TOKYO_FILE = Path("/usr/share/zoneinfo/Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")

instants = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)

# --- fmt and parse_utc -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (datetime(2026, 3, 9, 13, 0, tzinfo=UTC), "2026-03-09T13:00:00.000Z"),
        (datetime(2026, 3, 9, 13, 0, 0, 123456, tzinfo=UTC), "2026-03-09T13:00:00.123Z"),
        (
            datetime(2026, 3, 9, 14, 0, tzinfo=timezone(timedelta(hours=1))),
            "2026-03-09T13:00:00.000Z",
        ),
        (datetime(2026, 1, 15, 9, 0, tzinfo=NEW_YORK), "2026-01-15T14:00:00.000Z"),
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "0999-01-02T03:04:05.000Z"),
    ],
    ids=["utc", "milliseconds-truncated", "offset", "zone", "year-below-1000"],
)
def test_fmt_writes_utc_with_milliseconds_and_z(when: datetime, text: str) -> None:
    assert fmt(when) == text
    assert is_canonical(text)


def test_fmt_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        fmt(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-09T13:00:00.000Z", datetime(2026, 3, 9, 13, 0, tzinfo=UTC)),
        ("2026-03-09T14:00:00+01:00", datetime(2026, 3, 9, 13, 0, tzinfo=UTC)),
        ("2026-03-09T13:00:00.5Z", datetime(2026, 3, 9, 13, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_parse_utc_reads_any_instant_with_a_zone(text: str, expected: datetime) -> None:
    got = parse_utc(text)
    assert got == expected
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "words"),
    [("2026-03-09T13:00:00", "has no zone"), ("yesterday", "is not an ISO-8601 instant")],
)
def test_parse_utc_rejects_text_without_an_instant(text: str, words: str) -> None:
    with pytest.raises(InvalidTime, match=words):
        parse_utc(text)


@pytest.mark.parametrize(
    "text",
    ["2026-03-09T13:00:00Z", "2026-03-09 13:00:00.000Z", "2026-03-09T13:00:00.000+00:00", ""],
)
def test_is_canonical_rejects_other_spellings(text: str) -> None:
    assert not is_canonical(text)


@given(instants)
def test_fmt_and_parse_utc_round_trip_to_the_millisecond(when: datetime) -> None:
    text = fmt(when)
    assert is_canonical(text)
    assert parse_utc(text) == when.replace(microsecond=when.microsecond // 1000 * 1000)
    assert fmt(parse_utc(text)) == text


@given(instants, instants)
def test_string_order_is_time_order(a: datetime, b: datetime) -> None:
    a, b = (x.replace(microsecond=x.microsecond // 1000 * 1000) for x in (a, b))
    assert (fmt(a) < fmt(b)) == (a < b)
    assert (fmt(a) == fmt(b)) == (a == b)


# --- ManualClock ------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock("2026-01-15T12:00:00.000Z")
    assert clock.now() == datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    assert clock.now() == clock.now()
    assert clock.advance(90) == datetime(2026, 1, 15, 12, 1, 30, tzinfo=UTC)
    assert clock.advance(hours=1) == datetime(2026, 1, 15, 13, 1, 30, tzinfo=UTC)
    clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NEW_YORK))
    assert clock.now() == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC


# --- zone -------------------------------------------------------------------------------


def test_zone_returns_a_known_zone() -> None:
    assert zone("Europe/Berlin").key == "Europe/Berlin"


@pytest.mark.parametrize("name", ["Mars/Olympus", "", " UTC", "/etc/passwd", "../UTC", "Europe"])
def test_zone_rejects_a_name_that_is_not_an_iana_zone(name: str) -> None:
    with pytest.raises(InvalidTimezone) as info:
        zone(name, "--timezone")
    message = str(info.value)
    assert f'"{name}"' in message
    assert "(from --timezone)" in message
    assert info.value.value == name


# --- the host timezone chain -------------------------------------------------------------


@pytest.fixture
def etc_tokyo(tmp_path: Path) -> Path:
    if not TOKYO_FILE.exists():
        pytest.skip("the system has no zoneinfo database")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "localtime").symlink_to(TOKYO_FILE)
    return etc


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    directory = tmp_path / "cwd"
    directory.mkdir()
    return directory


def test_tz_environment_variable_wins(cwd: Path, etc_tokyo: Path) -> None:
    (cwd / ".env").write_text("TZ=Europe/Berlin\n")
    tz, source = resolve_host_timezone({"TZ": "America/New_York"}, cwd, etc_tokyo)
    assert (tz.key, source) == ("America/New_York", "TZ")


def test_tz_environment_variable_may_start_with_a_colon(cwd: Path) -> None:
    tz, _ = resolve_host_timezone({"TZ": ":Europe/Berlin"}, cwd, cwd / "etc")
    assert tz.key == "Europe/Berlin"


@pytest.mark.parametrize(
    "line",
    ["TZ=Europe/Berlin", 'TZ="Europe/Berlin"', "export TZ='Europe/Berlin'", "  TZ=Europe/Berlin  "],
)
def test_dotenv_tz_is_used_when_the_environment_has_none(
    cwd: Path, etc_tokyo: Path, line: str
) -> None:
    (cwd / ".env").write_text(f"# settings\nCRONBOX_HOME=/tmp/x\n{line}\n")
    tz, source = resolve_host_timezone({}, cwd, etc_tokyo)
    assert tz.key == "Europe/Berlin"
    assert source == str(cwd / ".env")


def test_an_empty_tz_environment_variable_is_ignored(cwd: Path, etc_tokyo: Path) -> None:
    (cwd / ".env").write_text("TZ=Europe/Berlin\n")
    tz, _ = resolve_host_timezone({"TZ": ""}, cwd, etc_tokyo)
    assert tz.key == "Europe/Berlin"


def test_the_system_zone_is_used_without_tz_or_dotenv(cwd: Path, etc_tokyo: Path) -> None:
    (cwd / ".env").write_text("CRONBOX_HOME=/tmp/x\n")
    tz, source = resolve_host_timezone({}, cwd, etc_tokyo)
    assert (tz.key, source) == ("Asia/Tokyo", "system")


def test_the_system_zone_may_come_from_etc_timezone(cwd: Path) -> None:
    etc = cwd / "etc"
    etc.mkdir()
    (etc / "timezone").write_text("Australia/Sydney\n")
    tz, source = resolve_host_timezone({}, cwd, etc)
    assert (tz.key, source) == ("Australia/Sydney", "system")


def test_nothing_configured_means_utc(cwd: Path) -> None:
    tz, source = resolve_host_timezone({}, cwd, cwd / "etc")
    assert (tz.key, source) == ("UTC", "default")


def test_a_broken_system_zone_falls_back_to_utc(cwd: Path) -> None:
    etc = cwd / "etc"
    etc.mkdir()
    (etc / "timezone").write_text("Not/AZone\n")
    tz, source = resolve_host_timezone({}, cwd, etc)
    assert (tz.key, source) == ("UTC", "default")


def test_an_invalid_tz_environment_variable_names_value_and_source(
    cwd: Path, etc_tokyo: Path
) -> None:
    with pytest.raises(InvalidTimezone) as info:
        resolve_host_timezone({"TZ": "Moon/Base"}, cwd, etc_tokyo)
    message = str(info.value)
    assert '"Moon/Base"' in message
    assert "TZ environment variable" in message


def test_an_invalid_dotenv_tz_names_value_and_file(cwd: Path, etc_tokyo: Path) -> None:
    (cwd / ".env").write_text("TZ=Moon/Base\n")
    with pytest.raises(InvalidTimezone) as info:
        resolve_host_timezone({}, cwd, etc_tokyo)
    message = str(info.value)
    assert '"Moon/Base"' in message
    assert str(cwd / ".env") in message


# --- local_to_utc and DST ---------------------------------------------------------------

LOCAL = [
    ("New York winter", "America/New_York", datetime(2026, 1, 15, 9), "2026-01-15T14:00:00Z"),
    ("Tokyo", "Asia/Tokyo", datetime(2026, 1, 15, 9), "2026-01-15T00:00:00Z"),
    ("New York gap", "America/New_York", datetime(2026, 3, 8, 2, 30), "2026-03-08T07:00:00Z"),
    ("New York gap start", "America/New_York", datetime(2026, 3, 8, 2, 0), "2026-03-08T07:00:00Z"),
    ("New York after gap", "America/New_York", datetime(2026, 3, 8, 3, 0), "2026-03-08T07:00:00Z"),
    ("New York repeat", "America/New_York", datetime(2026, 11, 1, 1, 30), "2026-11-01T05:30:00Z"),
    ("Berlin gap", "Europe/Berlin", datetime(2026, 3, 29, 2, 30), "2026-03-29T01:00:00Z"),
    ("Berlin repeat", "Europe/Berlin", datetime(2026, 10, 25, 2, 30), "2026-10-25T00:30:00Z"),
    ("Sydney gap", "Australia/Sydney", datetime(2026, 10, 4, 2, 30), "2026-10-03T16:00:00Z"),
    ("Sydney repeat", "Australia/Sydney", datetime(2026, 4, 5, 2, 30), "2026-04-04T15:30:00Z"),
    ("Kolkata", "Asia/Kolkata", datetime(2026, 3, 8, 2, 30), "2026-03-07T21:00:00Z"),
    (
        "Lord Howe half-hour gap",
        "Australia/Lord_Howe",
        datetime(2026, 10, 4, 2, 15),
        "2026-10-03T15:30:00Z",
    ),
]


@pytest.mark.parametrize(
    ("tz", "naive", "expected"), [c[1:] for c in LOCAL], ids=[c[0] for c in LOCAL]
)
def test_local_to_utc_reads_wall_clock_time(tz: str, naive: datetime, expected: str) -> None:
    assert local_to_utc(naive, ZoneInfo(tz)) == parse_utc(expected)


@pytest.mark.parametrize(
    ("naive", "exists", "ambiguous"),
    [
        (datetime(2026, 1, 15, 9), True, False),
        (datetime(2026, 3, 8, 2, 30), False, False),
        (datetime(2026, 11, 1, 1, 30), True, True),
    ],
    ids=["ordinary", "gap", "repeat"],
)
def test_wall_clock_existence_and_ambiguity(naive: datetime, exists: bool, ambiguous: bool) -> None:
    assert exists_locally(naive, NEW_YORK) is exists
    assert is_ambiguous(naive, NEW_YORK) is ambiguous
