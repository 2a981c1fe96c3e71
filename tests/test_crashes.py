"""Random host SIGKILLs over a run of one-time tasks, recurring series and chats lose
nothing, run nothing twice, leave nothing out of the history and deliver nothing twice
(the console and a real webhook receiver counting Idempotency-Keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crashes import Workload, crash_run

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_random_host_kills_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    verdict = await crash_run(tmp_path, Workload(kills=8, one_time=40, series=3, chats=16))
    assert verdict.kills_alone + verdict.kills_with_runners == 8
    assert verdict.lost == 0
    assert verdict.run_twice == 0
    assert verdict.missing_from_history == 0
    assert verdict.printed_twice == 0
    assert verdict.posted_under_two_keys == 0
    assert verdict.replies >= 40 + 16
