"""The runner template: a forked runner behaves like a spawned one (the process runtime's
own tests run for both); what is particular to forking is tested here."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from cronbox_shared.environment import runner_environment
from host.runtimes import ProcessRuntime, RunnerHandle, RunnerSpec
from host.runtimes.forkserver import ForkServer
from host.runtimes.process import HOME_LABEL, PID_FILE, RUNNER_LOG, SESSION_DIR_VAR
from host.service import Cronbox
from tests.hosting import make_settings, running_host, wait_for
from tests.test_runtime_process import (
    HANG_GUARD,
    Runners,
    process_alive,
    script,
    until,
    until_exited,
)

pytestmark = pytest.mark.anyio

READY_AND_WAIT = script(
    """
    import pathlib, time
    pathlib.Path("ready").write_text("1")
    time.sleep(60)
    """
)
SHELL_VARS = {"PWD", "OLDPWD", "SHLVL", "_"}
REPORTS_RANDOM = script(
    """
    import json, random, uuid
    json.dump({"random": random.random(), "uuid": str(uuid.uuid4())}, open("random.json", "w"))
    """
)


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(e.decode().split("=", 1) for e in raw.split(b"\0") if b"=" in e)


@pytest.fixture
async def forked(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Runners]:
    pool = Runners(tmp_path, forked=True)
    try:
        yield pool
    finally:
        await pool.aclose()


async def test_a_forked_runner_has_exactly_the_allowlisted_environment_and_its_own_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the host has and no runner may see.
    monkeypatch.setenv("CRONBOX_LEFTOVER_TOKEN", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-only")
    home = tmp_path / "home"
    settings = make_settings(home, idle_timeout=30.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("forked")
    gate = (
        f"{sys.executable} -c 'import json, os; json.dump(dict(os.environ), "
        'open("gate.json.tmp", "w"))\' '
        "&& mv gate.json.tmp gate.json "
        "&& while [ ! -e go ]; do sleep 0.05; done; echo '{\"wakeAgent\": false}'"
    )
    task = store.schedule_task(
        session.id, {"taskId": "peek", "prompt": "p", "processAfter": "now", "script": gate}
    )
    workspace = store.session_dir(session.id) / "workspace"
    async with running_host(settings) as sweeper:
        gate_env = json.loads(await wait_for(lambda: _read(workspace / "gate.json")))
        pid_file = store.session_dir(session.id) / PID_FILE
        runner = int(json.loads(pid_file.read_text())["pid"])
        runtime = sweeper.runtime
        assert isinstance(runtime, ProcessRuntime) and runtime.template is not None
        expected = runner_environment(
            os.environ,
            sweeper.default_runner_env(session),
            {},
            {
                SESSION_DIR_VAR: str(store.session_dir(session.id).resolve()),
                HOME_LABEL: str(home),
            },
        )
        try:
            assert parent_of(runner) == runtime.template.pid, "forked from the template"
            assert proc_environ(runner) == expected
            # What the gate's shell adds of its own aside.
            assert {k: v for k, v in gate_env.items() if k not in SHELL_VARS} == expected
            assert os.getsid(runner) == runner
            assert os.getpgid(runner) == runner
            assert proc_environ(runtime.template.pid).keys() <= {
                "PATH", "HOME", "LANG", "TZ", "CRONBOX_TEMPLATE_ROOM",
            } | {k for k in os.environ if k.startswith("LC_")}  # fmt: skip
        finally:
            (workspace / "go").write_text("1")
        await wait_for(lambda: [r for r in store.runs_for(task.id) if r.outcome])
    log = (store.session_dir(session.id) / RUNNER_LOG).read_text()
    assert "Warning" not in log and "Traceback" not in log


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def test_a_dead_template_is_restarted_and_the_runners_it_forked_are_still_tended(
    forked: Runners,
) -> None:
    runtime = forked.runtime(READY_AND_WAIT)
    assert runtime.template is not None
    orphan = await forked.start(runtime, "s1")
    await until(lambda: (forked.session_dir("s1") / "workspace" / "ready").exists())
    first_template = runtime.template.pid
    assert first_template is not None
    os.kill(first_template, signal.SIGKILL)

    second = await forked.start(runtime, "s2")
    assert runtime.template.starts == 2
    assert parent_of(int(second.ref)) == runtime.template.pid != first_template

    assert await runtime.is_running(orphan)
    with anyio.fail_after(HANG_GUARD):
        await runtime.stop(orphan, grace=5)
    assert not await runtime.is_running(orphan)
    assert await runtime.exit_code(orphan) is None  # its reaper is gone: unknown
    assert await runtime.is_running(second)


async def test_a_template_that_cannot_start_leaves_runners_spawned(forked: Runners) -> None:
    runtime = forked.runtime(script("import sys; sys.exit(7)"))
    runtime.template = ForkServer((sys.executable, "-c", "import sys; sys.exit(1)"))
    handle = await forked.start(runtime)
    await until_exited(runtime, handle)
    assert await runtime.exit_code(handle) == 7
    assert runtime.template.starts == 0


async def test_a_runner_whose_environment_does_not_fit_the_template_is_spawned(
    forked: Runners,
) -> None:
    runtime = forked.runtime(READY_AND_WAIT)
    home = forked.home
    spec = RunnerSpec("big", forked.session_dir("big"), home, {}, {"BIG_SECRET": "x" * 40_000})
    with anyio.fail_after(HANG_GUARD):
        handle = await runtime.start(spec)
    forked.track(runtime, handle)
    await until(lambda: (forked.session_dir("big") / "workspace" / "ready").exists())
    assert parent_of(int(handle.ref)) == os.getpid()
    assert proc_environ(int(handle.ref))["BIG_SECRET"] == "x" * 40_000


async def test_forked_runners_draw_fresh_random_numbers(forked: Runners) -> None:
    runtime = forked.runtime(REPORTS_RANDOM)
    handles: list[RunnerHandle] = [await forked.start(runtime, f"s{i}") for i in range(2)]
    for handle in handles:
        await until_exited(runtime, handle)
    draws = [
        json.loads((forked.session_dir(f"s{i}") / "workspace" / "random.json").read_text())
        for i in range(2)
    ]
    assert draws[0]["random"] != draws[1]["random"]
    assert draws[0]["uuid"] != draws[1]["uuid"]


async def test_a_forked_runner_that_raises_exits_1_with_the_error_as_its_last_words(
    forked: Runners,
) -> None:
    runtime = forked.runtime(script("raise RuntimeError('boom')"))
    handle = await forked.start(runtime)
    await until_exited(runtime, handle)
    assert await runtime.exit_code(handle) == 1
    assert await runtime.last_words(handle) == "RuntimeError: boom"


def test_a_template_server_dropped_unclosed_stops_its_template_quietly(tmp_path: Path) -> None:
    server = ForkServer()
    with (tmp_path / "log").open("ab") as log:
        runner = server.fork(["-c", "pass"], {}, tmp_path, log.fileno())
    assert runner.wait(timeout=HANG_GUARD) == 0
    template = server.pid
    assert template is not None
    del server, runner
    gc.collect()
    assert not process_alive(template)
