"""The one duration grammar: ``30m``, ``1h30m``, ``90s``, ``2d``, ``1w``.

Shared by relative times (``+1w``, ``in 1h30m``), task durations and ``@every`` so that
anything one accepts the others accept too. Whole numbers with units w, d, h, m, s,
combined in any order; spaces and case do not matter.
"""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
UNIT_HINT = "write whole numbers with units w, d, h, m and s, such as 90s, 30m, 2h, 1d, 1w or 1h30m"
_COMPACT = re.compile(r"(?:\d+[smhdw])+", re.ASCII)
_PART = re.compile(r"(\d+)([smhdw])", re.ASCII)
# More digits than this cannot be a deliberate duration; counting them as this many
# seconds keeps every limit check honest without converting a huge string to int.
_MAX_DIGITS = 30
_TOO_LONG: int = 10**_MAX_DIGITS


def duration_seconds(text: str) -> int | None:
    """Seconds in ``text``, or None when it is not a duration in the grammar above.

    No upper bound is applied: callers compare against their own limit (a number too long
    to read counts as ``10**30`` seconds, beyond any of them).
    """
    compact = text.strip().lower().replace(" ", "")
    if not _COMPACT.fullmatch(compact):
        return None
    total = 0
    for number, unit in _PART.findall(compact):
        digits = number.lstrip("0")
        if len(digits) > _MAX_DIGITS:
            return _TOO_LONG
        total += int(digits or "0") * UNITS[unit]
    return min(total, _TOO_LONG)
