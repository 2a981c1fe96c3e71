"""End to end: the host as a real `cronbox run` process, killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from cronbox_shared.models import MessageStatus, RunOutcome
from host.runtimes.docker import SESSION_LABEL
from host.service import Cronbox
from tests.hosting import acks, delivered_seqs, make_settings, replies, runner_pids, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def host_env(home: Path, runtime: str = "process") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TZ="UTC",
        CRONBOX_HOME=str(home),
        CRONBOX_RUNTIME=runtime,
        CRONBOX_IDLE_TIMEOUT="1",
        CRONBOX_MIN_INTERVAL="1",
        CRONBOX_SWEEP_INTERVAL="60",
        CRONBOX_HTTP_PORT="0",
    )
    return env


@contextmanager
def host_process(
    home: Path, log: Path, runtime: str = "process", *, args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """``cronbox run [args]`` in its own session, its output appended to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "run", *args],
            env=dict(env) if env is not None else host_env(home, runtime),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def test_second_host_on_the_same_home_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Cronbox.from_settings(make_settings(home))
    with host_process(home, tmp_path / "host1.log") as first:
        await wait_for(lambda: (home / "host.json").exists())
        with anyio.fail_after(60):
            second = await anyio.run_process(
                [sys.executable, "-m", "host.cli", "run"], env=host_env(home), check=False
            )
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    stderr = second.stderr.decode()
    assert second.returncode != 0
    assert "already running" in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def live_runners(home: Path, runtime: str) -> list[str]:
    """The runners of this home alive right now: pids, or the sessions of containers."""
    if runtime == "process":
        return [str(pid) for pid in runner_pids(home)]
    from tests.docker_support import containers_of, ready_engine

    return [c.labels[SESSION_LABEL] for c in containers_of(ready_engine(), home)]


async def test_host_killed_and_restarted_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    home = tmp_path / "home"
    store = Cronbox.from_settings(make_settings(home))
    session = store.create_session("phoenix")
    slow = store.schedule_task(
        session.id,
        {"taskId": "slow", "prompt": "slow one", "processAfter": "now",
         "script": "sleep 2; echo '{\"wakeAgent\": true}'"},
    )  # fmt: skip
    later = store.schedule_task(
        session.id, {"taskId": "later", "prompt": "later one", "processAfter": "+3s"}
    )
    series = store.schedule_task(
        session.id, {"taskId": "tick", "prompt": "tick", "recurrence": "@every 2s"}
    )
    log = tmp_path / "host.log"
    with host_process(home, log, runtime) as first:
        await wait_for(lambda: acks(store, session.id, slow.id))
        orphans = live_runners(home, runtime)
        assert orphans, "the slow task's runner is alive when the host dies"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    with host_process(home, log, runtime) as second:
        await wait_for(lambda: store.runs_for(slow.id) and store.runs_for(slow.id)[0].outcome)
        # Adopted, not started again: never two runners for one session.
        assert len(live_runners(home, runtime)) <= 1
        await wait_for(lambda: store.runs_for(later.id) and store.runs_for(later.id)[0].outcome)
        await wait_for(
            lambda: len([r for r in store.runs_for(series.id) if r.outcome]) >= 3, limit=60
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0

    assert live_runners(home, runtime) == [], "no runner outlives the host"
    for task in (slow, later):
        [run] = store.runs_for(task.id)
        assert run.outcome is RunOutcome.OK
    rows = store.inbound_rows(session.id)
    tick_rows = [r for r in rows if r.series_id == series.id]
    slots = Counter(r.scheduled_for for r in tick_rows)
    assert all(n == 1 for n in slots.values()), f"duplicate occurrences: {slots}"
    assert len([r for r in tick_rows if r.status.live]) == 1
    assert all(r.status is MessageStatus.COMPLETED for r in tick_rows if not r.status.live)
    sent = replies(store, session.id)
    reply_targets = Counter(r["in_reply_to"] for r in sent)
    assert reply_targets[slow.id] == 1
    assert reply_targets[later.id] == 1
    assert delivered_seqs(store, session.id) == sorted(r["seq"] for r in sent)
