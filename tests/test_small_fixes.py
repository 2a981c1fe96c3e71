"""Small fixes from issue 8: one duration grammar, .env comments, unknown settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cronbox_shared.errors import InvalidTimezone
from cronbox_shared.recurrence import parse_recurrence
from cronbox_shared.tasks import parse_duration, parse_when
from cronbox_shared.timeutil import resolve_host_timezone

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

SHARED_DURATIONS = [
    ("1w", timedelta(weeks=1)),
    ("2w", timedelta(weeks=2)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("30m1h", timedelta(hours=1, minutes=30)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("1W 2D", timedelta(days=9)),
    ("90s", timedelta(seconds=90)),
]


@pytest.mark.parametrize(("text", "expected"), SHARED_DURATIONS)
def test_every_accepts_the_same_durations_as_at(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_when(f"+{text}", ZoneInfo("UTC"), NOW) == NOW + expected
    assert parse_recurrence(f"@every {text}").every == expected


@pytest.mark.parametrize("text", ["5x", "1.5h", "h", "10", "1h-30m", "١m"])
def test_every_and_at_reject_the_same_non_durations(text: str) -> None:
    assert parse_duration(text) is None
    with pytest.raises(ValueError, match="is not a duration"):
        parse_recurrence(f"@every {text}")


def test_every_with_a_huge_number_is_too_long_not_a_crash() -> None:
    with pytest.raises(ValueError, match="too long an interval"):
        parse_recurrence("@every " + "9" * 5000 + "w")
    assert parse_duration("9" * 5000 + "s") is None


@pytest.mark.parametrize(
    "line",
    [
        "TZ=Asia/Tokyo # comment",
        "TZ=Asia/Tokyo\t# comment",
        'TZ="Asia/Tokyo" # comment',
        "export TZ='Asia/Tokyo'  # the office",
        "TZ=Asia/Tokyo",
    ],
)
def test_dotenv_tz_ignores_an_inline_comment(tmp_path: Path, line: str) -> None:
    (tmp_path / ".env").write_text(f"# zone\n{line}\n", encoding="utf-8")
    tz, source = resolve_host_timezone(environ={}, cwd=tmp_path)
    assert tz.key == "Asia/Tokyo"
    assert source.endswith(".env")


def test_dotenv_tz_keeps_a_hash_inside_quotes(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('TZ="Asia/Tokyo #x"\n', encoding="utf-8")
    with pytest.raises(InvalidTimezone, match="Asia/Tokyo #x"):
        resolve_host_timezone(environ={}, cwd=tmp_path)
