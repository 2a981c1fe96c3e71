"""What a real ``python -m agent_runner`` loads: a plain wake imports neither pydantic nor
sqlite-utils (nor the gate scripts' machinery); a wake that must migrate its outbox does.

The runner runs as the process runtime starts it, with one addition: a ``sitecustomize``
on its ``PYTHONPATH`` that writes the names in ``sys.modules`` to a file as the
interpreter exits, so the test sees what the whole wake loaded, not an import alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.settings import RunnerSettings
from host.service import Cronbox
from tests.hosting import replies_to

SUBPROCESS_GUARD = 60
HEAVY = ("pydantic", "pydantic_core", "sqlite_utils", "agent_runner.gate")

SITECUSTOMIZE = """
import atexit, json, os, sys

def _dump():
    with open(os.environ["CRONBOX_TEST_MODULES_OUT"], "w") as out:
        json.dump(sorted(sys.modules), out)

atexit.register(_dump)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wake(store: Cronbox, session_id: str, tmp_path: Path) -> tuple[set[str], str]:
    """Run one runner of the session to its idle exit; the modules it had loaded, and
    its log."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    settings = RunnerSettings(
        session_dir=store.session_dir(session_id), idle_timeout=0.2, poll_interval=0.05
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRONBOX_")}
    env = {
        **base, **settings.to_env(), "CRONBOX_TEST_MODULES_OUT": str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), base.get("PYTHONPATH")])),
    }  # fmt: skip
    with anyio.fail_after(SUBPROCESS_GUARD):
        done = await anyio.run_process([sys.executable, "-m", "agent_runner"], env=env, check=False)
    log = done.stderr.decode()
    assert done.returncode == 0, log
    return set(json.loads(out.read_text())), log


@pytest.mark.anyio
async def test_a_plain_wake_imports_neither_pydantic_nor_sqlite_utils(tmp_path: Path) -> None:
    store = Cronbox(tmp_path / "home")
    session_id = store.create_session("light").id
    outbound = store.session_dir(session_id) / sdb.OUTBOUND

    # A wake that finds no outbox creates and migrates one (a session an older release
    # made: sessions are made with theirs now): that one loads the migrations
    # (sqlite-utils, and the host's models beside them), which shows the hook sees what
    # a wake imports.
    outbound.unlink()
    first = store.send_message(session_id, "first").id
    loaded, _ = await wake(store, session_id, tmp_path)
    assert {"pydantic", "sqlite_utils"} <= loaded
    assert replies_to(store, session_id, first) == ["echo: first"]
    assert outbound.is_file()

    # Nothing due: the runner sets up, polls, finds nothing, exits.
    loaded, log = await wake(store, session_id, tmp_path)
    assert {"agent_runner.runner", "agent_runner.mailbox.sqlite", "anyio"} <= loaded
    assert "runner idle" in log
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))

    # One chat answered: claimed, handed to the provider, settled with its reply.
    chat = store.send_message(session_id, "hello").id
    loaded, log = await wake(store, session_id, tmp_path)
    assert replies_to(store, session_id, chat) == ["echo: hello"]
    assert "batch of 1 row(s): 1 completed" in log
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
