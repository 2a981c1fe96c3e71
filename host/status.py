"""What ``cronbox status`` reads: the running host's published state and the counts the
central index keeps.

Kept apart from :mod:`host.daemon` so that the status command, and every command that
only asks whether a host is running, starts without importing the host itself.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from cronbox_shared.errors import AgentConfigError
from cronbox_shared.policies import parse_quiet, quiet_end
from cronbox_shared.timeutil import fmt, zone
from host.reading import Reader
from host.store.records import LIVE_STATES
from host.views import TokensTodayOut

# The host holds an exclusive lock on this file while it runs (one host per home).
LOCK = "host.lock"
# The host's published pool state, rewritten as it changes.
STATUS = "host.json"
# Sessions with quiet hours `cronbox status` lists by name (it counts them all).
QUIET_SHOWN = 20


def host_status(store: Reader) -> dict[str, Any]:
    """What ``cronbox status`` shows: the host's published pool state plus due counts.

    Only counts the central index keeps and index ranges are read, so it costs the same
    on a home of any size; of the sessions with quiet hours the first QUIET_SHOWN are
    listed (``quiet_sessions`` counts them all).
    """
    published: dict[str, Any] | None = None
    path = store.home / STATUS
    try:
        published = json.loads(path.read_text())
    except (OSError, ValueError):
        published = None
    if published is not None and not host_alive(store.home):
        published = None
    now = store.now()
    nxt = store.next_wake()
    counts = store.counts()
    try:
        budgets = {name: p.daily_token_budget for name, p in store.agent_profiles().items()}
    except AgentConfigError:
        budgets = {}  # the host reports the file; the counts are still worth showing
    # Only the sessions the report lists are read: those that used tokens today or run
    # a profile with a daily budget (not every session of a big home).
    budgeted = {name for name, budget in budgets.items() if budget is not None}
    tokens = TokensTodayOut.of(store.token_day(), store.token_use_today(budgeted), budgets)
    quiet_count, quiet = store.quiet_sessions(QUIET_SHOWN)
    return {
        "host": published
        and {
            "pid": published.get("pid"),
            "runtime": published.get("runtime"),
            "max_containers": published.get("max_containers"),
            "updated_at": published.get("updated_at"),
            "engine_down": published.get("engine_down"),
            "http": published.get("http"),
        },
        "live": (published or {}).get("live", []),
        "waiting": (published or {}).get("waiting", []),
        "problems": (published or {}).get("problems", []),
        "stale": (published or {}).get("stale", []),
        "sessions": counts.get("sessions", 0),
        "due_now": store.due_count(now),
        "live_tasks": sum(counts.get(f"tasks.{state.value}", 0) for state in LIVE_STATES),
        "tasks": {key.removeprefix("tasks."): n for key, n in counts.items()
                  if key.startswith("tasks.") and n},
        "awaiting_approval": store.awaiting_count(),
        "next_wake": fmt(nxt) if nxt else None,
        "quiet_sessions": quiet_count,
        "quiet": [
            {"session": name, "window": window, "timezone": timezone,
             "until": _quiet_until(window, timezone, now)}
            for name, window, timezone in quiet
        ],
        "tokens_today": tokens.model_dump(mode="json"),
    }  # fmt: skip


def _quiet_until(window: str, timezone: str, now: datetime) -> str | None:
    """When the quiet window ``now`` falls in ends, or None outside it."""
    end = quiet_end(parse_quiet(window), zone(timezone), now)
    return fmt(end) if end else None


def host_alive(home: Path) -> bool:
    """Whether a host holds the home's lock right now."""
    path = home / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
