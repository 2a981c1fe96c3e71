"""The process runtime, driven with real subprocesses standing in for the agent runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path

import anyio
import pytest

from cronbox_shared.errors import CronboxError
from host.runtimes import (
    ProcessRuntime,
    RunnerHandle,
    RunnerSpec,
    RunnerStartFailed,
    UnknownRuntime,
    get_runtime,
)
from host.runtimes.docker import DockerRuntime
from host.runtimes.process import PID_FILE, RUNNER_LOG, RUNNER_LOG_CAP

# Generous bound so a stuck runner fails the test instead of the whole run; never a
# statement about how long anything should take.
HANG_GUARD = 10


def script(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


SLEEPER = script("import time; time.sleep(60)")

# Each writes "ready" into its working directory once its signal handling is in place.
IGNORES_SIGTERM = script(
    """
    import pathlib, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path("ready").write_text("1")
    time.sleep(60)
    """
)
EXITS_3_ON_SIGTERM = script(
    """
    import pathlib, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    pathlib.Path("ready").write_text("1")
    time.sleep(60)
    """
)
# Starts a grandchild that ignores SIGTERM, records its pid, then waits (or exits).
SPAWNER = """
    import pathlib, signal, subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    )
    pathlib.Path("child.pid.tmp").write_text(str(child.pid))
    pathlib.Path("child.pid.tmp").rename("child.pid")  # so a reader never sees it half written
    {after}
    """
SPAWNS_AND_WAITS = script(SPAWNER.format(after="time.sleep(60)"))
SPAWNS_AND_EXITS = script(SPAWNER.format(after="sys.exit(0)"))
REPORTS_ENV = script(
    """
    import json, os, sys
    keys = ("CRONBOX_SESSION_DIR", "CRONBOX_HOST_HOME", "CRONBOX_PROVIDER", "PATH")
    report = {k: os.environ.get(k) for k in keys}
    report["cwd"] = os.getcwd()
    report["sid"] = os.getsid(0)
    report["pid"] = os.getpid()
    report["stdin"] = sys.stdin.read()
    with open("env.json", "w") as f:
        json.dump(report, f)
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    """
)
EXITS_7 = script("import sys; sys.exit(7)")


class Runners:
    """Starts runners in a home under ``tmp_path`` and kills every one of them at the end.

    ``forked`` runtimes fork their runners from the template: every behaviour below holds
    for a forked runner as for a spawned one."""

    def __init__(self, root: Path, *, forked: bool) -> None:
        self.root = root
        self.home = root / "home"
        self.forked = forked
        self._started: list[tuple[ProcessRuntime, RunnerHandle]] = []
        self._runtimes: list[ProcessRuntime] = []

    def runtime(self, argv: list[str]) -> ProcessRuntime:
        runtime = ProcessRuntime(argv, fork=self.forked)
        self._runtimes.append(runtime)
        return runtime

    def session_dir(self, session_id: str, home: Path | None = None) -> Path:
        path = (home or self.home) / "sessions" / session_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def start(
        self,
        runtime: ProcessRuntime,
        session_id: str = "s1",
        *,
        home: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> RunnerHandle:
        home = home or self.home
        spec = RunnerSpec(session_id, self.session_dir(session_id, home), home, env or {})
        with anyio.fail_after(HANG_GUARD):
            handle = await runtime.start(spec)
        self.track(runtime, handle)
        return handle

    def track(self, runtime: ProcessRuntime, handle: RunnerHandle) -> None:
        """Kill this runner at the end too."""
        self._started.append((runtime, handle))

    async def aclose(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            for runtime, handle in self._started:
                await runtime.kill(handle)  # also reaps the ones that already exited
        for runtime in self._runtimes:
            runtime.close()


@pytest.fixture(params=["spawned", "forked"])
async def runners(
    anyio_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Runners]:
    pool = Runners(tmp_path, forked=request.param == "forked")
    try:
        yield pool
    finally:
        await pool.aclose()


def workspace(runners: Runners, session_id: str = "s1") -> Path:
    return runners.session_dir(session_id) / "workspace"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is alive; a zombie nobody has reaped yet counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(HANG_GUARD):
        # Files written and processes ended by other programs give no event, so poll.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def until_exited(runtime: ProcessRuntime, handle: RunnerHandle) -> None:
    with anyio.fail_after(HANG_GUARD):
        # A child's exit gives no event here; is_running polls (and reaps) it.
        while await runtime.is_running(handle):  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.fixture
def stray_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a runner (what a reused pid would point at)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


# -- start, is_running, stop, kill, exit_code ----------------------------------------


@pytest.mark.anyio
async def test_started_runner_is_running_until_stopped(runners: Runners) -> None:
    runtime = runners.runtime(SLEEPER)
    handle = await runners.start(runtime)

    assert handle.session_id == "s1"
    assert await runtime.is_running(handle)
    assert await runtime.exit_code(handle) is None
    # Own session, so a Ctrl-C on the host's terminal does not reach it directly.
    assert os.getsid(int(handle.ref)) == int(handle.ref)

    with anyio.fail_after(HANG_GUARD):
        await runtime.stop(handle, grace=HANG_GUARD)

    assert not await runtime.is_running(handle)
    assert await runtime.exit_code(handle) == -signal.SIGTERM


@pytest.mark.anyio
async def test_stop_lets_a_runner_exit_by_itself_within_grace(runners: Runners) -> None:
    runtime = runners.runtime(EXITS_3_ON_SIGTERM)
    handle = await runners.start(runtime)
    await until((workspace(runners) / "ready").exists)

    with anyio.fail_after(HANG_GUARD):
        await runtime.stop(handle, grace=HANG_GUARD)

    assert await runtime.exit_code(handle) == 3


@pytest.mark.anyio
async def test_stop_escalates_to_sigkill_after_grace(runners: Runners) -> None:
    runtime = runners.runtime(IGNORES_SIGTERM)
    handle = await runners.start(runtime)
    await until((workspace(runners) / "ready").exists)

    with anyio.fail_after(HANG_GUARD):
        await runtime.stop(handle, grace=0.2)

    assert not await runtime.is_running(handle)
    assert await runtime.exit_code(handle) == -signal.SIGKILL


@pytest.mark.anyio
async def test_kill_ends_a_runner_that_ignores_sigterm(runners: Runners) -> None:
    runtime = runners.runtime(IGNORES_SIGTERM)
    handle = await runners.start(runtime)
    await until((workspace(runners) / "ready").exists)

    with anyio.fail_after(HANG_GUARD):
        await runtime.kill(handle)

    assert not await runtime.is_running(handle)
    assert await runtime.exit_code(handle) == -signal.SIGKILL


@pytest.mark.anyio
async def test_stop_and_kill_of_a_finished_runner_return_at_once(runners: Runners) -> None:
    runtime = runners.runtime(EXITS_7)
    handle = await runners.start(runtime)
    await until_exited(runtime, handle)

    with anyio.fail_after(HANG_GUARD):
        await runtime.stop(handle, grace=HANG_GUARD)
        await runtime.kill(handle)

    assert await runtime.exit_code(handle) == 7


@pytest.mark.anyio
async def test_exit_code_and_pid_file_after_the_runner_exits_by_itself(
    runners: Runners,
) -> None:
    runtime = runners.runtime(EXITS_7)
    handle = await runners.start(runtime)
    pid_file = runners.session_dir("s1") / PID_FILE
    assert json.loads(pid_file.read_text())["pid"] == int(handle.ref)

    await until_exited(runtime, handle)

    assert await runtime.exit_code(handle) == 7
    assert not pid_file.exists()


@pytest.mark.anyio
async def test_kill_takes_the_runners_whole_process_group(runners: Runners) -> None:
    runtime = runners.runtime(SPAWNS_AND_WAITS)
    handle = await runners.start(runtime)
    child_pid_file = workspace(runners) / "child.pid"
    await until(child_pid_file.exists)
    grandchild = int(child_pid_file.read_text())
    assert process_alive(grandchild)

    with anyio.fail_after(HANG_GUARD):
        await runtime.kill(handle)

    await until(lambda: not process_alive(grandchild))


@pytest.mark.anyio
async def test_processes_left_by_an_exited_runner_are_killed(runners: Runners) -> None:
    runtime = runners.runtime(SPAWNS_AND_EXITS)
    handle = await runners.start(runtime)
    await until_exited(runtime, handle)
    grandchild = int((workspace(runners) / "child.pid").read_text())

    await until(lambda: not process_alive(grandchild))


@pytest.mark.anyio
async def test_runner_sees_its_session_env_workspace_and_logs_to_runner_log(
    runners: Runners,
) -> None:
    runtime = runners.runtime(REPORTS_ENV)
    handle = await runners.start(runtime, env={"CRONBOX_PROVIDER": "echo"})
    await until_exited(runtime, handle)

    session_dir = runners.session_dir("s1")
    report = json.loads((session_dir / "workspace" / "env.json").read_text())
    assert report["CRONBOX_SESSION_DIR"] == str(session_dir)
    assert report["CRONBOX_HOST_HOME"] == str(runners.home)
    assert report["CRONBOX_PROVIDER"] == "echo"
    assert report["PATH"] == os.environ.get("PATH")
    assert Path(report["cwd"]) == (session_dir / "workspace").resolve()
    assert report["sid"] == report["pid"]
    assert report["stdin"] == ""
    log = (session_dir / RUNNER_LOG).read_text()
    assert "to stdout" in log
    assert "to stderr" in log
    assert await runtime.exit_code(handle) == 0


@pytest.mark.anyio
async def test_runner_log_is_appended_across_runs(runners: Runners) -> None:
    runtime = runners.runtime(REPORTS_ENV)
    for _ in range(2):
        handle = await runners.start(runtime)
        await until_exited(runtime, handle)

    log = (runners.session_dir("s1") / RUNNER_LOG).read_text()
    assert log.count("to stdout") == 2


@pytest.mark.anyio
async def test_a_full_runner_log_is_rotated_when_the_next_runner_starts(runners: Runners) -> None:
    log = runners.session_dir("s1") / RUNNER_LOG
    log.write_bytes(b"old line\n" * (RUNNER_LOG_CAP // 9 + 1))
    runtime = runners.runtime(REPORTS_ENV)
    handle = await runners.start(runtime)
    await until_exited(runtime, handle)
    assert (log.parent / f"{RUNNER_LOG}.1").stat().st_size >= RUNNER_LOG_CAP
    assert log.stat().st_size < 10_000
    assert "to stdout" in log.read_text()


@pytest.mark.anyio
async def test_last_words_are_the_last_line_the_runner_printed(runners: Runners) -> None:
    runtime = runners.runtime(
        [
            sys.executable,
            "-c",
            "import sys; print('working', flush=True); sys.exit('agent_runner: broke')",
        ]
    )
    handle = await runners.start(runtime)
    await until_exited(runtime, handle)
    assert await runtime.exit_code(handle) == 1
    assert await runtime.last_words(handle) == "agent_runner: broke"


@pytest.mark.anyio
async def test_a_runner_that_cannot_be_started_raises_a_clear_error(runners: Runners) -> None:
    runtime = runners.runtime([str(runners.root / "no-such-program")])
    spec = RunnerSpec("s1", runners.session_dir("s1"), runners.home, {})

    with pytest.raises(RunnerStartFailed, match="agent runner of session s1"):
        await runtime.start(spec)

    assert not (runners.session_dir("s1") / PID_FILE).exists()


# -- list_own and adoption after a host restart ---------------------------------------


@pytest.mark.anyio
async def test_list_own_finds_runners_a_previous_host_started_in_the_same_home(
    runners: Runners,
) -> None:
    before_crash = runners.runtime(SLEEPER)
    mine = await runners.start(before_crash, "s1")
    other_home = runners.root / "other-home"
    await runners.start(before_crash, "s2", home=other_home)

    restarted = runners.runtime(SLEEPER)
    with anyio.fail_after(HANG_GUARD):
        found = await restarted.list_own(runners.home)

    assert [(h.session_id, h.ref) for h in found] == [("s1", mine.ref)]
    adopted = found[0]
    assert abs(adopted.started_at - mine.started_at).total_seconds() < 0.001
    assert await restarted.is_running(adopted)
    assert await restarted.exit_code(adopted) is None

    with anyio.fail_after(HANG_GUARD):
        await restarted.kill(adopted)

    assert not await restarted.is_running(adopted)
    assert await restarted.exit_code(adopted) is None
    await until_exited(before_crash, mine)


@pytest.mark.anyio
async def test_adopted_runner_is_stopped_politely(runners: Runners) -> None:
    before_crash = runners.runtime(EXITS_3_ON_SIGTERM)
    await runners.start(before_crash)
    await until((workspace(runners) / "ready").exists)

    restarted = runners.runtime(SLEEPER)
    [adopted] = await restarted.list_own(runners.home)
    with anyio.fail_after(HANG_GUARD):
        await restarted.stop(adopted, grace=HANG_GUARD)

    assert not await restarted.is_running(adopted)


@pytest.mark.anyio
async def test_list_own_returns_the_same_handle_for_its_own_runner(runners: Runners) -> None:
    runtime = runners.runtime(SLEEPER)
    handle = await runners.start(runtime)

    assert await runtime.list_own(runners.home) == [handle]


@pytest.mark.anyio
async def test_list_own_of_an_empty_home_is_empty(runners: Runners) -> None:
    assert await runners.runtime(SLEEPER).list_own(runners.root / "fresh") == []


def reaped_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.anyio
@pytest.mark.parametrize("content", ["dead", "stranger", "garbage"])
async def test_list_own_removes_stale_pid_files(
    runners: Runners, stray_sleeper: subprocess.Popen[bytes], content: str
) -> None:
    pid_file = runners.session_dir("s9") / PID_FILE
    pid = {"dead": reaped_pid(), "stranger": stray_sleeper.pid, "garbage": 0}[content]
    payload = {"pid": pid, "session_id": "s9", "started_at": "2026-03-09T13:00:00.000Z"}
    pid_file.write_text("{not json" if content == "garbage" else json.dumps(payload))

    assert await runners.runtime(SLEEPER).list_own(runners.home) == []
    assert not pid_file.exists()
    assert stray_sleeper.poll() is None


@pytest.mark.anyio
async def test_a_pid_that_is_not_a_runner_is_never_signalled(
    runners: Runners, stray_sleeper: subprocess.Popen[bytes]
) -> None:
    runtime = runners.runtime(SLEEPER)
    handle = RunnerHandle("s1", str(stray_sleeper.pid), datetime.now(UTC))

    assert not await runtime.is_running(handle)
    with anyio.fail_after(HANG_GUARD):
        await runtime.kill(handle)
        await runtime.stop(handle, grace=0)

    assert stray_sleeper.poll() is None


# -- choosing a runtime ---------------------------------------------------------------


def test_get_runtime_process_is_the_process_runtime() -> None:
    runtime = get_runtime("process")
    assert isinstance(runtime, ProcessRuntime)
    assert runtime.name == "process"


def test_get_runtime_docker_is_this_releases_image_and_contacts_no_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    runtime = get_runtime("docker")
    assert isinstance(runtime, DockerRuntime)
    assert runtime.config.image == f"cronbox-agent:{package_version('cronbox')}"


def test_get_runtime_rejects_an_unknown_name() -> None:
    with pytest.raises(UnknownRuntime, match='unknown runtime "podman"') as caught:
        get_runtime("podman")
    assert isinstance(caught.value, CronboxError)
