"""Random host SIGKILLs over a run of one-time tasks, recurring series and chats lose
nothing, run nothing twice, leave nothing out of the history and deliver nothing twice
(the console and a real webhook receiver counting Idempotency-Keys)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import MessageKind
from cronbox_shared.timeutil import fmt
from host.service import Cronbox
from tests.crashes import Workload, crash_run
from tests.hosting import make_settings, running_host, wait_for

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


async def test_a_reply_its_runner_wrote_before_both_were_killed_is_delivered_without_a_wake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("orphaned")
    # What a host killed together with its runner leaves: the runner's lease, and a reply
    # it wrote after that host's last read of its outbox; nothing of the session is due.
    store.acquire_lease(session.id, "killed-host:1", "999999")
    with sdb.outbound(store.session_dir(session.id)) as out:
        sdb.insert_outbound(out, "out-last", MessageKind.CHAT, {"text": "last words"},
                            fmt(store.now()))  # fmt: skip
    async with running_host(settings):
        await wait_for(lambda: [r for r in caplog.records if "last words" in r.getMessage()])
    assert store.undelivered(session.id) == []
