"""Small fixes from issue 8: one duration grammar, .env comments, unknown settings."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner, Result

from cronbox_shared.errors import InvalidTimezone
from cronbox_shared.recurrence import parse_recurrence
from cronbox_shared.tasks import parse_duration, parse_when
from cronbox_shared.timeutil import resolve_host_timezone
from host.cli import app, relative
from host.daemon import home_lock
from host.environ import known_setting_names, unknown_setting_warnings

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


# --- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home with one session; no .env, no stray CRONBOX_* variables."""
    monkeypatch.setenv("TZ", "UTC")
    for name in list(os.environ):
        if name.upper().startswith("CRONBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    created = CliRunner().invoke(app, ["session", "create", "work", "--home", str(home)])
    assert created.exit_code == 0, created.output
    return home


def cronbox(home: Path, *args: str) -> Result:
    result = CliRunner().invoke(app, [*args, "--home", str(home)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("behind", [timedelta(0), timedelta(seconds=2), timedelta(minutes=5)])
def test_a_week_ahead_reads_seven_days_even_a_moment_later(behind: timedelta) -> None:
    assert relative(NOW + timedelta(weeks=1) - behind, NOW) == "in 7 days"
    assert relative(NOW - timedelta(weeks=1) + behind, NOW) == "7 days ago"


def test_relative_keeps_shorter_spans() -> None:
    assert relative(NOW + timedelta(minutes=10), NOW) == "in 10 minutes"
    assert relative(NOW + timedelta(days=2, hours=3), NOW) == "in 2 days"
    assert relative(NOW + timedelta(milliseconds=300), NOW) == "now"


def test_schedule_plus_one_week_shows_in_seven_days(home: Path) -> None:
    result = cronbox(home, "task", "schedule", "work", "--prompt", "p", "--at", "+1w")
    assert "(in 7 days)" in result.stdout
    listed = cronbox(home, "task", "list")
    assert "in 7 days" in listed.stdout


def test_unknown_cronbox_variable_is_warned_about_once_with_the_closest_name(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_MAX_CONTAINER", "3")
    result = cronbox(home, "status")
    assert result.stderr.splitlines() == [
        "warning: CRONBOX_MAX_CONTAINER is not a cronbox setting; "
        "did you mean CRONBOX_MAX_CONTAINERS?"
    ]


def test_unknown_cronbox_key_in_dotenv_is_warned_about(home: Path) -> None:
    Path(".env").write_text("CRONBOX_SWEEP_INTERVL=5\nOTHER_THING=1\n", encoding="utf-8")
    result = cronbox(home, "session", "list")
    assert result.stderr == (
        "warning: CRONBOX_SWEEP_INTERVL is not a cronbox setting; "
        "did you mean CRONBOX_SWEEP_INTERVAL?\n"
    )


def test_known_host_and_runner_variables_are_not_warned_about(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_MAX_CONTAINERS", "3")
    monkeypatch.setenv("cronbox_idle_timeout", "5")
    monkeypatch.setenv("CRONBOX_POLL_INTERVAL", "1")
    monkeypatch.setenv("CRONBOX_HOST_HOME", "/x")
    assert cronbox(home, "status").stderr == ""


def test_an_unlike_name_gets_no_suggestion() -> None:
    assert unknown_setting_warnings(["CRONBOX_ZZZZZZZZ", "PATH"], known_setting_names()) == [
        "CRONBOX_ZZZZZZZZ is not a cronbox setting"
    ]


NO_HOST = "note: no cronbox host is running on this home; start one with cronbox run\n"


@pytest.mark.parametrize(
    "command",
    [
        ("send", "work", "hello"),
        ("task", "schedule", "work", "--prompt", "p", "--at", "+1h"),
        ("task", "schedule", "work", "--prompt", "p", "--cron", "@daily", "--json"),
    ],
)
def test_queueing_work_without_a_host_notes_it_on_stderr(
    home: Path, command: tuple[str, ...]
) -> None:
    result = cronbox(home, *command)
    assert result.stderr == NO_HOST
    assert NO_HOST.strip() not in result.stdout


@pytest.mark.parametrize(
    "command",
    [("send", "work", "hello"), ("task", "schedule", "work", "--prompt", "p", "--at", "+1h")],
)
def test_queueing_work_while_a_host_holds_the_home_says_nothing_more(
    home: Path, command: tuple[str, ...]
) -> None:
    with home_lock(home):
        result = cronbox(home, *command)
    assert result.stderr == ""
