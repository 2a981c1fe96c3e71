"""Shared helpers of the benchmarks: percentiles and plain-text tables."""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


# -- processes: CPU and memory from /proc -------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def children_cpu() -> float:
    """User + system CPU of this process's reaped children (and theirs, reaped in turn)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (all its threads); with ``children``, of the children
    it has reaped instead. 0 for a process that is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    first = 13 if children else 11  # cutime, cstime / utime, stime (fields 16-17 / 14-15)
    return (int(fields[first]) + int(fields[first + 1])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid``'s live descendants (children, their children…), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parent[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [p for p, pp in parent.items() if pp in frontier]
        found += nxt
        frontier = nxt
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """``(RSS, PSS)`` of ``pid`` in KiB (PSS shares each page among the processes that
    map it, so forked runners' shared pages count once in a sum); (0, 0) when gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return values.get("Rss", 0), values.get("Pss", 0)


@contextmanager
def host_process(
    env: dict[str, str], log: Path, code: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real host (``python -m host.cli run``) with ``env`` over this environment, its
    output appended to ``log``; stopped with SIGTERM (SIGKILL after 2 minutes) at the end.
    ``code`` is the tree it and its runners run from (a :func:`baseline_tree`, through
    :func:`tree_python`), by default this one."""
    python = sys.executable if code is None else str(tree_python(code))
    with log.open("ab") as out:
        host = subprocess.Popen(
            [python, "-m", "host.cli", "run"], env={**os.environ, **env},
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=code,
        )  # fmt: skip
        try:
            yield host
        finally:
            host.send_signal(signal.SIGTERM)
            try:
                host.wait(timeout=120)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()


# --- the code to compare with -------------------------------------------------------


def baseline_tree(rev: str | None) -> tuple[Path, str]:
    """A temporary worktree of the code to compare with (by default the merge base with
    ``main``), and its short revision; remove it with :func:`drop_tree`."""
    git = ["git", "-C", str(REPO)]
    if rev is None:
        rev = subprocess.run(
            [*git, "merge-base", "HEAD", "main"], check=True, capture_output=True, text=True
        ).stdout.strip()
    where = Path(tempfile.mkdtemp(prefix="cronbox-baseline-")) / "tree"
    subprocess.run([*git, "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    short = subprocess.run(
        [*git, "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    return where, short


def drop_tree(tree: Path) -> None:
    """Remove a worktree :func:`baseline_tree` made."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False
    )
    shutil.rmtree(tree.parent, ignore_errors=True)


def tree_python(tree: Path) -> Path:
    """An interpreter that imports cronbox from ``tree`` (and every other package from
    this one's environment), for the processes that code starts too: a runner the host
    spawns is ``sys.executable -m agent_runner`` with the environment allowlist, so
    ``PYTHONPATH`` would not reach it, and this environment's editable install would
    hand it this tree's runner."""
    venv = tree.parent / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        [site] = (venv / "lib").glob("python3*/site-packages")
        here = [p for p in sys.path if p.endswith("site-packages")]
        (site / "cronbox-tree.pth").write_text("\n".join([str(tree), *here]) + "\n")
    return venv / "bin" / "python"


PACKAGES = ("host", "cronbox_shared", "mcp_tools", "agent_runner")


def compiled(code: Path) -> None:
    """Compile a tree's modules to bytecode, as installing the package does."""
    present = [str(code / name) for name in PACKAGES if (code / name).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *present], check=True)
