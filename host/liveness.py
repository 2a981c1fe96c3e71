"""Liveness of running agent runners and the retry of the work they held.

Pure decisions (SPEC §4 steps 3 and 4), modelled on nanoclaw's ``decideStuckAction``:
the sweep gathers the facts (runner start, heartbeat mtime, claimed rows), asks
:func:`decide_liveness` whether to kill the runner, and after a kill or crash asks
:func:`plan_retry` what becomes of each row the runner left ``processing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cronbox_shared.models import MessageStatus

__all__ = [
    "Claim",
    "LivenessAction",
    "LivenessVerdict",
    "RetryPlan",
    "decide_liveness",
    "plan_retry",
]


class LivenessAction(StrEnum):
    OK = "ok"
    KILL_HUNG = "kill_hung"
    """The runner stopped beating: kill it and retry its rows."""
    KILL_TIMEOUT = "kill_timeout"
    """A claimed row ran past its timeout: kill the runner, record those rows ``timeout``."""


@dataclass(frozen=True)
class Claim:
    """A row the runner acked ``processing``, with its run timeout."""

    message_id: str
    claimed_at: datetime
    timeout: timedelta


@dataclass(frozen=True)
class LivenessVerdict:
    action: LivenessAction
    reason: str | None
    """One sentence for the log and the run history; ``None`` when OK."""
    timed_out: tuple[str, ...]
    """Message ids past their timeout (only for ``KILL_TIMEOUT``)."""


_OK = LivenessVerdict(LivenessAction.OK, None, ())


def decide_liveness(
    now: datetime,
    started_at: datetime,
    heartbeat_at: datetime | None,
    claims: Sequence[Claim],
    heartbeat_ceiling: timedelta,
    startup_grace: timedelta,
) -> LivenessVerdict:
    """Decide whether a running runner must be killed.

    * A claim older than its timeout → ``KILL_TIMEOUT`` naming every such message. This
      wins over a missing heartbeat, so the occurrence is recorded as a timeout.
    * Otherwise a runner that has not beaten since it started, ``startup_grace`` after
      its start, or whose last beat is older than ``heartbeat_ceiling`` → ``KILL_HUNG``.
      A heartbeat from before ``started_at`` (left by an earlier runner of the session)
      counts as no heartbeat.
    * Otherwise ``OK``. Limits are exclusive: exactly at the limit is still OK.
    """
    timed_out = [c for c in claims if now - c.claimed_at > c.timeout]
    if timed_out:
        ids = tuple(c.message_id for c in sorted(timed_out, key=lambda c: c.message_id))
        if len(timed_out) == 1:
            reason = f"ran longer than its timeout of {_duration(timed_out[0].timeout)}"
        else:
            reason = f"{len(timed_out)} messages ran longer than their timeouts"
        return LivenessVerdict(LivenessAction.KILL_TIMEOUT, reason, ids)

    if heartbeat_at is None or heartbeat_at < started_at:
        silent = now - started_at
        if silent > startup_grace:
            return LivenessVerdict(
                LivenessAction.KILL_HUNG, f"no heartbeat {_duration(silent)} after start", ()
            )
        return _OK

    silent = now - heartbeat_at
    if silent > heartbeat_ceiling:
        return LivenessVerdict(
            LivenessAction.KILL_HUNG, f"no heartbeat for {_duration(silent)}", ()
        )
    return _OK


@dataclass(frozen=True)
class RetryPlan:
    """What becomes of a row left ``processing`` by a runner that crashed or was killed."""

    status: MessageStatus
    tries: int
    process_after: datetime | None


def plan_retry(
    tries: int,
    now: datetime,
    max_tries: int = 5,
    base: timedelta = timedelta(seconds=5),
) -> RetryPlan:
    """Plan the retry of a row whose runner crashed or was killed (SPEC §4 step 4).

    ``tries`` is the count stored on the row before this failure; the plan carries
    ``tries + 1``. While that stays below ``max_tries`` the row goes back to
    ``pending`` after ``base * 2**tries``: 5 s, 10 s, 20 s, 40 s with the defaults.
    The failure that brings the count to ``max_tries`` ends the row ``failed``. With the
    defaults: failures 1 to 4 (``tries`` 0 to 3 in) are retried after 5, 10, 20 and
    40 s; the 5th failure (``tries=4`` in, 5 out) leaves the row ``failed``.
    """
    new_tries = tries + 1
    if new_tries >= max_tries:
        return RetryPlan(status=MessageStatus.FAILED, tries=new_tries, process_after=None)
    return RetryPlan(
        status=MessageStatus.PENDING, tries=new_tries, process_after=now + base * 2**tries
    )


def _duration(span: timedelta) -> str:
    """``10 min`` for whole minutes, ``95 s`` otherwise (rounded down to the second)."""
    seconds = int(span.total_seconds())
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
