"""The one time format, the injectable clock and timezone helpers.

Every instant cronbox stores is UTC ISO-8601 with milliseconds and a ``Z``
(``2026-03-09T13:00:00.000Z``) so that string order is time order everywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronbox_shared.errors import InvalidTime, InvalidTimezone

_ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class Clock(Protocol):
    """Source of the current instant. Implementations must return an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | str) -> None:
        self._now = parse_utc(start) if isinstance(start, str) else start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime | str) -> None:
        self._now = parse_utc(when) if isinstance(when, str) else when.astimezone(UTC)

    def advance(self, seconds: float = 0, **kwargs: float) -> datetime:
        self._now += timedelta(seconds=seconds, **kwargs)
        return self._now


def fmt(when: datetime) -> str:
    """Format an aware datetime in the canonical stored form (UTC, ms, ``Z``)."""
    if when.tzinfo is None:
        raise ValueError("fmt() needs an aware datetime")
    utc = when.astimezone(UTC)
    # %Y is not zero-padded below year 1000 on glibc; pad by hand so order holds.
    return f"{utc.year:04d}" + utc.strftime("-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_utc(text: str) -> datetime:
    """Parse a stored instant (or any ISO-8601 instant with zone) into aware UTC."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidTime(f'"{text}" is not an ISO-8601 instant') from exc
    if parsed.tzinfo is None:
        raise InvalidTime(f'"{text}" has no zone; stored instants end in Z')
    return parsed.astimezone(UTC)


def is_canonical(text: str) -> bool:
    """True when ``text`` is exactly in the stored format."""
    return bool(_ISO_Z.match(text))


def _canonical(text: str) -> str:
    if not is_canonical(text):
        raise ValueError(f'"{text[:40]}" is not a stored instant (UTC, milliseconds, Z)')
    return text


class _Canonical:
    """Pydantic metadata checking the stored spelling; pydantic is imported only when a
    model using it is built, so a runner that reads these values imports none of it."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(_canonical, handler(source))


Instant = Annotated[str, _Canonical()]
"""An instant as stored and passed between modules: ``2026-03-09T13:00:00.000Z``.

String order is time order; pydantic records reject any other spelling."""


def zone(name: str, source: str | None = None) -> ZoneInfo:
    """Return the IANA zone ``name``, or raise InvalidTimezone naming the value and source."""
    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        raise InvalidTimezone(name, source)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidTimezone(name, source) from exc


def _dotenv_tz(path: Path) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for raw in lines:
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        if line.startswith("TZ="):
            return _dotenv_value(line[3:])
    return None


def _dotenv_value(raw: str) -> str:
    """A ``.env`` value: quoted text as is, or unquoted text up to an inline `` #`` comment."""
    value = raw.strip()
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        return value[1:end] if end > 0 else value[1:]
    return re.split(r"\s#", value, maxsplit=1)[0].strip().strip("'\"")


def _system_zone_name(etc: Path) -> str | None:
    localtime = etc / "localtime"
    try:
        target = localtime.resolve(strict=True)
    except OSError:
        target = None
    if target is not None and "zoneinfo" in target.parts:
        parts = target.parts
        name = "/".join(parts[parts.index("zoneinfo") + 1 :])
        # Loading the one zone, not listing every zone file (available_timezones walks
        # the whole tz database, a good part of a CLI command's start).
        try:
            zone(name)
        except InvalidTimezone:
            pass
        else:
            return name
    try:
        name = (etc / "timezone").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return name or None


def resolve_host_timezone(
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    etc: Path = Path("/etc"),
) -> tuple[ZoneInfo, str]:
    """Resolve the host's zone: ``TZ`` env, else ``TZ=`` in ``./.env``, else system, else UTC.

    Returns the zone and a description of where it came from. An invalid name is an
    InvalidTimezone naming the value and its source (the system zone, being outside the
    user's control, falls back to UTC instead).
    """
    env = os.environ if environ is None else environ
    value = env.get("TZ")
    if value:
        # A leading ":" is POSIX syntax for "a zone file name".
        return zone(value.removeprefix(":"), "the TZ environment variable"), "TZ"
    dotenv = (cwd or Path.cwd()) / ".env"
    value = _dotenv_tz(dotenv)
    if value:
        return zone(value, f"TZ= in {dotenv}"), str(dotenv)
    system = _system_zone_name(etc)
    if system:
        try:
            return zone(system), "system"
        except InvalidTimezone:
            pass
    return ZoneInfo("UTC"), "default"


def local_to_utc(naive: datetime, tz: ZoneInfo) -> datetime:
    """Read a naive wall-clock time in ``tz``.

    A time inside a spring-forward gap resolves to the first valid instant after it
    (the transition); a repeated fall-back time resolves to its first occurrence.
    """
    first = naive.replace(tzinfo=tz, fold=0)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive:
        return first.astimezone(UTC)
    # Nonexistent: the wall time is skipped. The transition instant is where the
    # UTC offset changes; fold=0 gives the pre-transition offset, fold=1 the post.
    before = naive.replace(tzinfo=tz, fold=0).utcoffset() or timedelta()
    after = naive.replace(tzinfo=tz, fold=1).utcoffset() or timedelta()
    gap_start_utc = (naive - before).replace(tzinfo=UTC)
    gap_end_utc = (naive - after).replace(tzinfo=UTC)
    # The transition lies between the two readings; search to the minute then second.
    lo, hi = min(gap_start_utc, gap_end_utc), max(gap_start_utc, gap_end_utc)
    return find_transition(lo, hi, tz)


def find_transition(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime:
    """The first UTC instant in ``(lo, hi]`` whose offset in ``tz`` differs from ``lo``'s.

    Expects one offset change in the span; found to the second, and exactly when ``lo``
    and ``hi`` are whole seconds (zone transitions always are).
    """
    base = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).utcoffset() == base:
            lo = mid
        else:
            hi = mid
    return hi


def exists_locally(naive: datetime, tz: ZoneInfo) -> bool:
    """Whether the wall-clock time ``naive`` occurs in ``tz`` (False inside a DST gap)."""
    aware = naive.replace(tzinfo=tz, fold=0)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def is_ambiguous(naive: datetime, tz: ZoneInfo) -> bool:
    """Whether ``naive`` occurs twice in ``tz`` (inside a fall-back repeated hour)."""
    a = naive.replace(tzinfo=tz, fold=0).utcoffset()
    b = naive.replace(tzinfo=tz, fold=1).utcoffset()
    return exists_locally(naive, tz) and a != b
