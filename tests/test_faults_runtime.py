"""Fault injection from inside: the hostile outbox is written by the session's own runner
(a gate script it runs, so in the docker runtime by its container), on each runtime.

The act runs once, from the session's workspace, on ``../outbox/outbound.db``: replaced
by garbage, by a directory, by a relative symbolic link to another session's outbox or
to cronbox.db (a relative link resolves on the host the same way), grown past the cap,
or locked by a writer that is then stopped (SIGSTOP, or ``docker pause``). The other
sessions are served on time, nothing of the victim is read as the hostile session's,
and the hostile session is served again once its outbox is sane.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.timeutil import fmt
from host.runtimes.docker import SESSION_LABEL
from host.service import Cronbox
from host.sweep import Sweeper
from tests.hosting import fast_sweep, make_settings, quarantines, running_host, wait_for
from tests.test_faults import (
    CAP,
    _bystander_served,
    _restore,
    _victim_and_hostile_answered,
    printed,
    three_sessions,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

OUTBOX = "../outbox/outbound.db"
GROW = (
    "import sqlite3\n"
    f"c = sqlite3.connect({OUTBOX!r})\n"
    "for i in range(6):\n"
    "    c.execute(\"INSERT INTO session_state VALUES (?, hex(randomblob(60000)))\", [f'b{i}'])\n"
    "    c.commit()\n"
)
HOLD = (
    "import pathlib, sqlite3, time\n"
    f"c = sqlite3.connect({OUTBOX!r}, isolation_level=None)\n"
    "c.execute('BEGIN EXCLUSIVE')\n"
    "c.execute(\"INSERT INTO session_state VALUES ('held', 'x')\")\n"
    "pathlib.Path('locked').touch()\n"
    "time.sleep(600)\n"
)
# A directory takes the outbox's place in one step: renameat2's RENAME_EXCHANGE swaps
# the two names (a plain rename cannot put a directory over a file). Removing the file
# first would leave a moment with no outbox, in which the runner, polling beside its
# gate, makes a fresh one, and a crash of the runner there kills the act half done.
SWAP = (
    "import ctypes, os\n"
    "os.mkdir('../outbox/.act')\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.renameat2(-100, b'../outbox/.act', -100, {OUTBOX.encode()!r}, 2) != 0:\n"
    "    raise OSError(ctypes.get_errno(), 'renameat2 failed')\n"
)
# Each act replaces the outbox in one step (a rename, or an exchange of two names): the
# runner may open ``outbound.db`` while the act runs, and a window in which the path is
# missing or empty would let SQLite make a fresh database there, undoing the act.
ACTS = {
    "garbage": (
        f"yes garbage | head -c 40000 > ../outbox/.act && mv -f ../outbox/.act {OUTBOX}",
        "unreadable",
    ),
    "directory": ("python3 swap.py", "is a directory"),
    "symlink to another session": (
        f"ln -s ../../VICTIM/outbox/outbound.db ../outbox/.act && mv -fT ../outbox/.act {OUTBOX}",
        "symbolic link",
    ),
    "symlink to cronbox.db": (
        f"ln -s ../../../cronbox.db ../outbox/.act && mv -fT ../outbox/.act {OUTBOX}",
        "symbolic link",
    ),
    "growth past the cap": ("python3 grow.py", "over the"),
    "lock held by a stopped writer": ("python3 hold.py", "locked"),
}


# How a read the act's rename overtook is told.
OVERTAKEN = ("replaced while it was read", "swapped for another file")


def plant(store: Cronbox, session_id: str, victim: str, act: str) -> None:
    """The act, as a gate script of a task due now; it acts once, then only skips."""
    workspace = store.session_dir(session_id) / "workspace"
    workspace.mkdir(exist_ok=True)
    (workspace / "grow.py").write_text(GROW)
    (workspace / "hold.py").write_text(HOLD)
    (workspace / "swap.py").write_text(SWAP)
    script = (
        "if [ ! -e acted ]; then touch acted; "
        f"{act.replace('VICTIM', victim)}; fi; "
        "echo '{\"wakeAgent\": false}'"
    )
    store.schedule_task(session_id, {"prompt": "act", "processAfter": "now", "script": script})


def holder_pids(workspace: Path) -> list[int]:
    """Processes whose working directory is this workspace (the gate and its writer)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == workspace.resolve():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def stop_the_writer(sweeper: Sweeper, store: Cronbox, session_id: str, runtime: str) -> None:
    """Stop the runner that holds its outbox's lock, with its gate: frozen, not gone."""
    workspace = store.session_dir(session_id) / "workspace"
    await wait_for(lambda: (workspace / "locked").exists(), limit=60)
    if runtime == "docker":
        from tests.docker_support import containers_of, ready_engine

        [container] = [
            c for c in containers_of(ready_engine(), store.home)
            if c.labels[SESSION_LABEL] == session_id
        ]  # fmt: skip
        container.pause()
        return
    for pid in [int(sweeper.live[session_id].handle.ref), *holder_pids(workspace)]:
        os.kill(pid, signal.SIGSTOP)


@pytest.mark.parametrize("kind", list(ACTS))
async def test_an_outbox_its_own_runner_made_hostile_quarantines_only_that_session(
    tmp_path: Path, runtime: str, kind: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TZ", "UTC")
    act, reason = ACTS[kind]
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    with three_sessions(tmp_path, runtime=runtime) as (store, home, ids):
        settings = make_settings(home, runtime=runtime, outbox_max_bytes=CAP)
        sweep = fast_sweep(settings, outbox_stall=1.0)
        hostile_dir = store.session_dir(ids["hostile"])
        async with running_host(settings, sweep) as sweeper:
            put_in = quarantines(sweeper, monkeypatch)
            await _victim_and_hostile_answered(sweeper, store, ids)
            saved = tmp_path / "saved.db"
            shutil.copy(hostile_dir / sdb.OUTBOUND, saved)
            plant(store, ids["hostile"], ids["victim"], act)
            if kind.startswith("lock"):
                await stop_the_writer(sweeper, store, ids["hostile"], runtime)
            if kind.startswith("lock") and runtime == "docker":
                # A paused container does no work: the host removes it (which frees its
                # lock) and settles what it held, as for any runner that is gone.
                await wait_for(lambda: ids["hostile"] not in sweeper.live, limit=60)
            else:
                # Seen as it happens: a lock freed by killing its holder lifts it again
                # on the next pass.
                [(_, found, was_live), *_] = await wait_for(
                    lambda: [q for q in put_in if q[0] == ids["hostile"]], limit=60
                )
                # A read that the act's rename overtook is told as such: also the act
                # (replaced after SQLite opened it, or before: SQLite then opened another).
                assert reason in found or any(o in found for o in OVERTAKEN), found
                assert not was_live
            await _bystander_served(sweeper, store, ids["bystander"])
            assert not [m for m in printed(caplog, "hostile") if "VICTIM" in m]
            if not kind.startswith("lock"):
                _restore(saved)(hostile_dir / sdb.OUTBOX)
            await wait_for(lambda: ids["hostile"] not in sweeper.sick, limit=60)
            store.send_message(ids["hostile"], f"after the fault {fmt(store.now())}")
            # Seen printed, not read from the outbox its new runner may be writing.
            await wait_for(
                lambda: [m for m in printed(caplog, "hostile") if "after the fault" in m],
                limit=60,
            )
    assert not [m for m in printed(caplog, "hostile") if "VICTIM" in m]
    assert len(printed(caplog, "victim")) == 1
