"""A host SIGKILLed while it settles a parent neither loses nor doubles its child.

Each trial forks a process that runs the host's settlement of a finished parent (the
code the sweep runs) and SIGKILLs it at a random point of that work; a fresh service
over the same files then does what a restarted host does (re-derive the central view,
settle again). Whatever point the kill hit, the parent ends once and its child has
exactly one run, because the child's row is inserted in the parent's settlement
transaction under a unique key (the parent occurrence's id).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus, MessageStatus, RunOutcome
from cronbox_shared.timeutil import fmt
from host.chains import chain_run_id
from host.service import Cronbox

TRIALS = 30
TIMEOUT = timedelta(minutes=10)


def prepared(home: Path, n: int) -> str:
    """A session whose parent finished (its ack is in the outbox) and whose child waits."""
    store = Cronbox(home)
    session = store.create_session(f"trial-{n}").id
    store.schedule_task(session, {"taskId": f"parent-{n}", "prompt": "p", "processAfter": "now"})
    store.schedule_task(session, {"taskId": f"child-{n}", "prompt": "c {{parent.output}}",
                                  "afterTask": f"parent-{n}"})  # fmt: skip
    with sdb.outbound(store.session_dir(session)) as out:
        sdb.set_ack(out, f"parent-{n}", 0, AckStatus.COMPLETED, fmt(store.now()), None, "out")
    return session


def settle(home: Path, session: str) -> None:
    """What the host's sweep does with the finished parent (run in the forked process)."""
    Cronbox(home).settle_acks(session, TIMEOUT)
    os._exit(0)


def restart(home: Path, session: str) -> Cronbox:
    """What a host started after the crash does: re-derive, then settle the acks again."""
    store = Cronbox(home)
    for stale in store.stale_sessions():
        store.sync_session(stale)
    store.settle_acks(session, TIMEOUT)
    return store


def test_a_sigkill_while_the_parent_settles_neither_loses_nor_doubles_its_child(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    fork = multiprocessing.get_context("fork")
    home = tmp_path / "home"
    # How long one settlement takes here, so the kills land across all of it.
    spans = []
    for n in range(3):
        session = prepared(home, 1000 + n)
        began = time.perf_counter()
        Cronbox(home).settle_acks(session, TIMEOUT)
        spans.append(time.perf_counter() - began)
    span = statistics.median(spans)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    before = after = 0
    for n in range(TRIALS):
        session = prepared(home, n)
        worker = fork.Process(target=settle, args=(home, session))
        worker.start()
        time.sleep(rng.uniform(0, 1.5 * span))  # the fault's random point, not a wait
        if worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it finished first
                os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=30)
        assert worker.exitcode is not None, f"trial {n} (seed {seed}): the worker hangs"
        # Opened for writing, as the host does: a journal the kill left is rolled back.
        with sdb.inbound(Cronbox(home).session_dir(session)) as db:
            settled = sdb.get_inbound(db, f"parent-{n}")
        after += bool(settled and settled.status is MessageStatus.COMPLETED)
        before += not (settled and settled.status is MessageStatus.COMPLETED)
        store = restart(home, session)
        rows = [r for r in store.inbound_rows(session) if r.series_id == f"child-{n}"]
        runs = [r for r in rows if r.chain_key is not None]
        assert [r.id for r in runs] == [chain_run_id(f"child-{n}", f"parent-{n}")], (
            f"trial {n} (seed {seed})"
        )
        assert store.message(session, f"parent-{n}").status is MessageStatus.COMPLETED
        assert [r.outcome for r in store.runs_for(f"parent-{n}")] == [RunOutcome.OK]
        assert store.get_task(f"child-{n}").status is MessageStatus.COMPLETED
        # Settling once more (another pass, another restart) changes nothing.
        restart(home, session)
        assert len([r for r in store.inbound_rows(session) if r.chain_key]) == 1
    # Where the kills landed (in the junit report): before the commit, or after it.
    record_property("seed", seed)
    record_property("kills_before_commit", before)
    record_property("kills_after_commit", after)
