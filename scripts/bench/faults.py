"""Fault injection against a real host (issue 14): what one hostile session costs the others.

For each fault, done from outside as an attacker or a crash would (garbage bytes, a
directory, a symbolic link to another session's outbox or to cronbox.db, a file past
the size cap, a lock held by a stopped writer, a hot journal left by a killed writer,
a flood of invalid rows), one run with three sessions on the ``process`` runtime:

* a bystander's one-time task lateness while the fault lasts, beside the same figure
  with no fault in the same run (the baseline);
* whether the hostile session was quarantined and with which reason;
* whether any reply of the victim session was printed as the hostile one's;
* for the flood, the rejection rate and the notes the agent got.

Then a real runner SIGKILLed while it commits a large reply (its journal written, a
reader holding the commit back), a gate script running beside it: how long until the
same host has answered again, and whether the gate died with it.

Then 30 random SIGKILLs of a real ``cronbox run`` process (half alone, half with its
runners) over 300 one-time tasks, 10 recurring series and 60 chats, every reply going
to the console and to a local webhook receiver counting ``Idempotency-Key`` headers
(:mod:`tests.crashes`): what was lost, run twice, missing from history, delivered twice.

Usage: python scripts/bench/faults.py
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import secs, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import RunOutcome
from cronbox_shared.timeutil import fmt, parse_utc
from host.service import Cronbox
from host.sweep import Sweeper
from tests.crashes import Workload, crash_run
from tests.hosting import fast_sweep, make_settings, running_host, wait_for
from tests.test_faults import (
    CAP,
    HOSTILE,
    _hold_lock,
    _killed_mid_write,
    answered,
    big_writer,
    flood,
    gone,
    hot,
    kill_runner_mid_write,
    rejected,
)

FLOOD = 10_000


class Printed(logging.Handler):
    """Every reply the console channel printed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def bystander_lateness(sweeper: Sweeper, store: Cronbox, session_id: str) -> float:
    due = store.now() + timedelta(seconds=1)
    task = store.schedule_task(session_id, {"prompt": "on time", "processAfter": fmt(due)})
    await wait_for(lambda: any(r.outcome is RunOutcome.OK for r in store.runs_for(task.id)))
    [start] = [
        s for s in sweeper.starts if s.session_id == session_id and s.due_at == parse_utc(fmt(due))
    ]
    return start.lateness


async def scenario(name: str, inject: Callable[[Path, Path, Path], object] | None) -> list[str]:
    printed = Printed()
    logging.getLogger("cronbox.reply").addHandler(printed)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        cap = 16 * CAP if name == "flood" else CAP
        settings = make_settings(home, outbox_max_bytes=cap)
        store = Cronbox.from_settings(settings)
        ids = {n: store.create_session(n).id for n in ("victim", "hostile", "bystander")}
        hostile = store.session_dir(ids["hostile"])
        victim = store.session_dir(ids["victim"])
        holder = None
        async with running_host(settings, fast_sweep(settings, outbox_stall=1.0)) as sweeper:
            store.send_message(ids["victim"], "VICTIM-PRIVATE-1")
            store.send_message(ids["hostile"], "hello")
            await wait_for(lambda: all(answered(store, ids[n]) for n in ("victim", "hostile")))
            await wait_for(lambda: not sweeper.live)
            began = time.perf_counter()
            if name == "flood":
                flood(hostile, FLOOD)
            elif name == "lock held by a stopped writer":
                holder = _hold_lock(hostile / sdb.OUTBOUND)
                os.kill(holder.pid, signal.SIGSTOP)
            elif name == "hot journal":
                _killed_mid_write(hostile / sdb.OUTBOUND)
            elif inject is not None:
                inject(hostile / sdb.OUTBOX, home, victim)
            sdb.ring_doorbell(hostile)
            store.send_message(ids["hostile"], "second")
            lateness = await bystander_lateness(sweeper, store, ids["bystander"])
            extra = ""
            if name == "flood":
                await wait_for(lambda: len(rejected(store, ids["hostile"])) >= FLOOD, limit=300)
                rate = FLOOD / (time.perf_counter() - began)
                notes = [r for r in store.inbound_rows(ids["hostile"]) if r.kind.value == "system"]
                extra = f"{rate:,.0f} rows/s, {len(notes)} notes"
            elif inject is not None or holder is not None:
                await wait_for(lambda: ids["hostile"] in sweeper.sick)
            elif name == "hot journal":
                await wait_for(lambda: answered(store, ids["hostile"], 2))
                extra = "recovered without a restart"
            sick = sweeper.sick.get(ids["hostile"])
            if holder is not None:
                holder.kill()
                holder.wait()
                if holder.stdout is not None:
                    holder.stdout.close()
    logging.getLogger("cronbox.reply").removeHandler(printed)
    leaked = any("VICTIM" in line for line in printed.lines if line.startswith("[hostile]"))
    return [
        name,
        secs(lateness),
        sick.reason if sick else "-",
        "yes" if leaked else "no",
        extra,
    ]


async def runner_killed_mid_write() -> str:
    """A real runner SIGKILLed while it commits a large reply, a gate script beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        big_writer(home)
        settings = make_settings(home)
        store = Cronbox.from_settings(settings)
        session = store.create_session("big", agent="big")
        bystander = store.create_session("bystander").id
        marker = Path(tmp) / "gate-started"
        script = f"touch {marker}; sleep 600; echo '{{\"wakeAgent\": false}}'"
        store.schedule_task(session.id, {"prompt": "p", "processAfter": "now", "script": script})
        async with running_host(settings) as sweeper:
            await wait_for(marker.exists)
            gates = await kill_runner_mid_write(sweeper, store, session.id, home)
            killed = time.perf_counter()
            await wait_for(lambda: answered(store, session.id))
            recovered = time.perf_counter() - killed
            await wait_for(lambda: gone(gates))
            lateness = await bystander_lateness(sweeper, store, bystander)
            journal = hot(store.session_dir(session.id) / sdb.OUTBOUND)
            sick = session.id in sweeper.sick
    return (
        f"real runner SIGKILLed mid-write (hot journal): recovered without a restart in "
        f"{secs(recovered)} (journal left: {'yes' if journal else 'no'}, quarantined: "
        f"{'yes' if sick else 'no'}), {len(gates)} gate script(s) died with it, "
        f"bystander lateness {secs(lateness)}"
    )


async def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("cronbox.reply").setLevel(logging.INFO)
    logging.getLogger("cronbox.reply").propagate = False
    rows = [await scenario("no fault (baseline)", None)]
    for name, (inject, _reason) in HOSTILE.items():
        rows.append(await scenario(name, inject))
    rows.append(await scenario("lock held by a stopped writer", None))
    rows.append(await scenario("hot journal", None))
    rows.append(await scenario("flood", None))
    table(["fault", "bystander lateness", "quarantined because", "victim leaked", ""], rows)
    print(await runner_killed_mid_write())
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        verdict = await crash_run(Path(tmp), Workload(kills=30, one_time=300, series=10, chats=60))
        print(f"{verdict.line()} [{time.perf_counter() - began:.0f} s]")


if __name__ == "__main__":
    anyio.run(main)
