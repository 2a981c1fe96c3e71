"""Shared helpers of the benchmarks: percentiles and plain-text tables."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

# The benchmarks import the product (installed editable) and tests/hosting.py.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(baseline: float, measured: float) -> str:
    """How many times smaller ``measured`` is than ``baseline``, as ``"12.3x"``."""
    if measured <= 0:
        return "inf" if baseline > 0 else "n/a"
    times = baseline / measured
    if times >= 1:
        return f"{times:,.1f}x"
    # Slower than the baseline: one decimal would round most of these to 0.0.
    return f"{times:.2f}x" if times >= 0.1 else f"{times:.2g}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a left-aligned first column and right-aligned figures."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(c) for c in cells)
        parts = [first.ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts)

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def secs(value: float, unit: str = "s") -> str:
    """Seconds as ``"1.234 s"`` or, with ``unit="ms"``, ``"1.23 ms"``."""
    if math.isnan(value):
        return "-"
    if unit == "ms":
        return f"{value * 1000:,.2f} ms"
    return f"{value:,.3f} s"
