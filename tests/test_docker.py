"""The docker runtime against a real engine: hardening, isolation, limits, lifecycle.

Skipped (with the reason) where no engine or agent image is present; CI requires both
(``REQUIRE_DOCKER``). Probes run inside the containers as gate scripts, the
same way an agent's own code would, and report into the session's workspace.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from docker import DockerClient

from cronbox_shared.errors import CronboxError
from cronbox_shared.models import MessageStatus, RunOutcome
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import fmt
from host.limits import ContainerLimits
from host.runtimes.base import RunnerSpec
from host.runtimes.docker import (
    HOME_LABEL,
    SESSION_LABEL,
    STARTED_LABEL,
    DockerConfig,
    DockerRuntime,
    home_id,
)  # fmt: skip
from host.service import Cronbox
from host.store.records import Session
from tests.docker_support import EngineProxy, containers_of, no_strays, ready_engine
from tests.hosting import (
    base_url,
    ephemeral_socket,
    make_settings,
    replies,
    running_host,
    wait_for,
)  # fmt: skip

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
CANARY = "CRONBOX_TEST_CANARY_SECRET"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[DockerClient]:
    client = ready_engine()
    with no_strays(client, tmp_path / "home"):
        yield client


def finished(store: Cronbox, task_id: str) -> bool:
    return any(r.outcome is not None for r in store.runs_for(task_id))


def container_of(client: DockerClient, store: Cronbox, session: Session) -> Any:
    (container,) = [
        c for c in containers_of(client, store.home) if c.labels[SESSION_LABEL] == session.id
    ]
    return container


# --- what the container is -------------------------------------------------------------


@pytest.mark.docker
async def test_a_session_container_is_hardened_as_docker_inspect_shows(
    tmp_path: Path, engine: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CANARY, "host-only-value")
    settings = make_settings(tmp_path / "home", runtime="docker", idle_timeout=60.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session(
        "hard", limits=ContainerLimits(memory="256m", cpus=0.5, pids=100)
    )
    store.send_message(session.id, "hello")
    async with running_host(settings):
        await wait_for(lambda: replies(store, session.id))
        container = container_of(engine, store, session)
        container.reload()
        attrs = container.attrs
    host, config = attrs["HostConfig"], attrs["Config"]
    uid = config["User"].split(":")[0]
    assert uid not in {"", "0", "root"}
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["Init"] is True
    assert host["Memory"] == 256 * 1024**2
    assert host["MemorySwap"] == host["Memory"], "no swap beyond the memory limit"
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 100
    assert host["NetworkMode"] == "none"
    assert "/tmp" in host["Tmpfs"]
    assert config["Labels"][HOME_LABEL] == home_id(store.home)
    assert config["Labels"][SESSION_LABEL] == session.id
    assert str(store.home) not in json.dumps(config["Labels"]), "labels hold no host path"
    session_dir = store.session_dir(session.id).resolve()
    mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in attrs["Mounts"]}
    assert mounts == {
        "/session/inbox": (str(session_dir / "inbox"), False),
        "/session/outbox": (str(session_dir / "outbox"), True),
        "/session/workspace": (str(session_dir / "workspace"), True),
        # The model gateway's socket: the runner connects, it cannot replace it.
        "/session/gateway": (str(session_dir / "gateway"), False),
    }
    env = dict(item.split("=", 1) for item in config["Env"])
    assert CANARY not in env
    assert env["CRONBOX_SESSION_DIR"] == "/session"


PROBE = r"""
cd /session
RENAME='import os; os.rename("outbox/fake.db", "inbox/inbound.db")'
try() { if (eval "$1") >/dev/null 2>&1; then echo "$2 allowed"; else echo "$2 refused"; fi; }
{
  try 'echo x >> inbox/inbound.db' write-inbound
  try 'echo x > outbox/fake.db && python3 -c "$RENAME"' rename-over-inbound
  try 'rm -f inbox/inbound.db && ! test -e inbox/inbound.db' delete-inbound
  try 'touch inbox/new-file' create-in-inbox
  try 'touch inbox/inbound.db-journal' create-journal
  try 'touch /etc/cronbox-probe' write-rootfs
  try 'touch /session/new-file' write-session-root
  try 'test -e HOSTHOME' see-host-home
  try 'test -e OTHERDIR' see-other-session
  try 'echo x > /tmp/probe' write-tmp
  try 'echo x > outbox/probe' write-outbox
} > workspace/probe.txt
env > workspace/env.txt
cat /proc/self/mountinfo > workspace/mounts.txt
ls -A /session > workspace/session-ls.txt
id -u > workspace/uid.txt
echo '{"wakeAgent": false}'
"""


@pytest.mark.docker
async def test_from_inside_the_inbox_is_untouchable_and_nothing_else_of_the_host_is_visible(
    tmp_path: Path, engine: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CANARY, "host-only-value")
    settings = make_settings(tmp_path / "home", runtime="docker")
    store = Cronbox.from_settings(settings)
    session = store.create_session("probe")
    other = store.create_session("victim")
    script = PROBE.replace("HOSTHOME", str(store.home.resolve())).replace(
        "OTHERDIR", f"/session/../{other.id}"
    )
    task = store.schedule_task(session.id, {"prompt": "p", "processAfter": "now", "script": script})
    async with running_host(settings):
        await wait_for(lambda: finished(store, task.id), 60)
    (run,) = store.runs_for(task.id)
    assert run.outcome is RunOutcome.SKIPPED, run.error
    workspace = store.session_dir(session.id) / "workspace"
    verdicts = dict(
        line.rsplit(" ", 1) for line in (workspace / "probe.txt").read_text().split("\n") if line
    )
    assert verdicts == {
        "write-inbound": "refused", "rename-over-inbound": "refused",
        "delete-inbound": "refused", "create-in-inbox": "refused", "create-journal": "refused",
        "write-rootfs": "refused", "write-session-root": "refused",
        "see-host-home": "refused", "see-other-session": "refused",
        "write-tmp": "allowed", "write-outbox": "allowed",
    }  # fmt: skip
    assert (workspace / "uid.txt").read_text().strip() != "0"
    assert sorted((workspace / "session-ls.txt").read_text().split()) == [
        "gateway", "inbox", "outbox", "workspace",
    ]  # fmt: skip
    env = (workspace / "env.txt").read_text()
    assert CANARY not in env and "host-only-value" not in env
    # Of the host's filesystem, only the session directories are mounted (plus the
    # engine's own resolv.conf, hostname and hosts files and its init).
    mounts = [line.split() for line in (workspace / "mounts.txt").read_text().splitlines()]
    # mountinfo: id parent dev root mountpoint options [optional...] - fstype source ...
    by_point = {f[4]: f for f in mounts}
    host_dev = by_point["/session/inbox"][2]
    from_host = sorted(
        f[4] for f in mounts if f[2] == host_dev and not f[4].endswith("/docker-init")
    )
    assert from_host == sorted(
        ["/session/gateway", "/session/inbox", "/session/outbox", "/session/workspace",
         "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]
    ), from_host  # fmt: skip
    inbox = sorted(p.name for p in (store.session_dir(session.id) / "inbox").iterdir())
    assert inbox == ["inbound.db"]
    assert store.inbound_rows(session.id), "the inbox is intact"


EXHAUSTING = [
    pytest.param(ContainerLimits(pids=64), "b() { b | b & }; b; sleep 10", "gate script",
                 id="fork-bomb"),
    pytest.param(ContainerLimits(memory="160m"),
                 "python3 -c 'x = b\"x\" * (1 << 30)' && echo '{\"wakeAgent\": true}'",
                 "out of memory", id="memory-hog"),
]  # fmt: skip


@pytest.mark.docker
@pytest.mark.parametrize(("limits", "script", "says"), EXHAUSTING)
async def test_a_gate_that_exhausts_its_container_fails_and_the_runner_lives_on(
    tmp_path: Path, engine: DockerClient, monkeypatch: pytest.MonkeyPatch,
    limits: ContainerLimits, script: str, says: str,
) -> None:  # fmt: skip
    """A fork bomb meets the pids limit, a memory hog the memory limit: either is a failed
    gate with its reason, and the same runner answers the next message."""
    monkeypatch.setenv("CRONBOX_GATE_TIMEOUT", "3")
    # Idle for longer than the test can take, so a second start can only mean that the
    # first runner died (the host logs how: a status, or its container out of memory).
    settings = make_settings(tmp_path / "home", runtime="docker", idle_timeout=300.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("greedy", limits=limits)
    task = store.schedule_task(session.id, {"prompt": "p", "processAfter": "now", "script": script})
    async with running_host(settings) as sweeper:
        await wait_for(lambda: finished(store, task.id), 90)
        chat = store.send_message(session.id, "still there?")
        await wait_for(
            lambda: [r for r in replies(store, session.id) if r["in_reply_to"] == chat.id], 60
        )
        assert sweeper.started_total == 1, "the runner outlived its gate"
    run = store.runs_for(task.id)[-1]
    assert run.outcome is RunOutcome.ERROR
    assert says in (run.error or ""), run.error


# --- what an operator meets ------------------------------------------------------------


def host_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "CRONBOX_HOME": str(tmp_path / "home"), "CRONBOX_RUNTIME": "docker"}
    return subprocess.run(
        [sys.executable, "-m", "host.cli", "run"], env={**environ, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_cronbox_run_without_an_engine_says_so_in_one_sentence(tmp_path: Path) -> None:
    done = host_run(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: the Docker engine is not reachable (")
    assert 'CRONBOX_RUNTIME="process"' in error


@pytest.mark.docker
def test_cronbox_run_without_the_image_says_how_to_build_it(
    tmp_path: Path, engine: DockerClient
) -> None:
    done = host_run(tmp_path, CRONBOX_IMAGE="cronbox-agent:never-built")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error == (
        'error: the agent image "cronbox-agent:never-built" is not built; build it with: '
        "cronbox image build"
    )


def runner_spec(store: Cronbox, session: Session) -> RunnerSpec:
    directory = store.session_dir(session.id).resolve()
    env = RunnerSettings(session_dir=directory, idle_timeout=300).to_env()
    return RunnerSpec(session.id, directory, store.home.resolve(), env)


@pytest.mark.docker
async def test_a_new_host_adopts_running_containers_removes_exited_ones_and_keeps_one_each(
    tmp_path: Path, engine: DockerClient
) -> None:
    store = Cronbox(tmp_path / "home")
    alive, exited = store.create_session("alive"), store.create_session("exited")
    first = DockerRuntime(DockerConfig.default())
    kept = await first.start(runner_spec(store, alive))
    gone = await first.start(runner_spec(store, exited))
    engine.containers.get(gone.ref).stop(timeout=1)
    # What an older host might have left: a second container for the same session.
    engine.containers.run(
        first.config.image, ["-c", "sleep 300"], entrypoint=["bash"], detach=True,
        name=f"stray-{alive.id}", network_mode="none",
        labels={HOME_LABEL: home_id(store.home), SESSION_LABEL: alive.id,
                STARTED_LABEL: fmt(kept.started_at - timedelta(hours=1))},
    )  # fmt: skip

    second = DockerRuntime(DockerConfig.default())
    (adopted,) = await second.list_own(store.home)
    assert (adopted.session_id, adopted.ref) == (alive.id, kept.ref)
    assert [c.short_id for c in containers_of(engine, store.home, all=True)] == [kept.ref]
    # Starting the session again never makes a second container: the live one is its runner.
    assert (await second.start(runner_spec(store, alive))).ref == kept.ref
    assert await second.is_running(adopted)
    await second.stop(adopted, grace=5)
    assert not await second.is_running(adopted)
    assert await second.exit_code(adopted) == 0
    assert containers_of(engine, store.home, all=True) == []
    first.close()
    second.close()


@pytest.mark.docker
# docker-py's unix transport does not close its socket when connect() fails (the engine's
# socket is gone); the garbage collector does. That library leak is not this test's topic.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
async def test_an_engine_that_goes_away_is_logged_once_and_its_work_waits_for_it(
    tmp_path: Path, engine: DockerClient, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="cronbox.sweep")
    proxy = EngineProxy(tmp_path / "engine.sock")
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    settings = make_settings(tmp_path / "home", runtime="docker", idle_timeout=0.3)
    store = Cronbox.from_settings(settings)
    session = store.create_session("patient")

    def answered(message_id: str) -> bool:
        return any(r["in_reply_to"] == message_id for r in replies(store, session.id))

    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        async with running_host(settings) as sweeper:
            first = store.send_message(session.id, "one")
            await wait_for(lambda: answered(first.id), 60)
            await wait_for(lambda: not sweeper.live, 60)
            proxy.cut()
            second = store.send_message(session.id, "two")
            await wait_for(lambda: sweeper.quarantine.get(session.id, (None, 0))[1] >= 2, 60)
            assert sweeper.engine_down and "not reachable" in sweeper.engine_down
            (row,) = [r for r in store.inbound_rows(session.id) if r.id == second.id]
            assert (row.status, row.tries) == (MessageStatus.PENDING, 0)
            lost = [r for r in caplog.records if "not reachable" in r.getMessage()]
            assert len(lost) == 1, [r.getMessage() for r in lost]
            await tg.start(proxy.serve)
            await wait_for(lambda: answered(second.id), 90)
            assert sweeper.engine_down is None
        tg.cancel_scope.cancel()
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    # The leaked sockets sit in reference cycles with their tracebacks: collect them
    # now, under this test's filter, not in whichever test the collector next runs in.
    gc.collect()


def test_the_home_id_is_made_once_even_when_hosts_race_for_it(tmp_path: Path) -> None:
    for n in range(20):
        home = tmp_path / f"home-{n}"
        home.mkdir()
        ids: list[str] = []
        race = partial(lambda into, where: into.append(home_id(where)), ids, home)
        threads = [threading.Thread(target=race) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(ids) == 8 and len(set(ids)) == 1
        assert [p.name for p in home.iterdir()] == ["host-id"]
        assert str(home) not in ids[0]


def test_a_damaged_home_id_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "host-id").write_text("/root/somewhere\n")
    with pytest.raises(CronboxError, match="does not hold a cronbox home id; remove it"):
        home_id(tmp_path)


@pytest.mark.docker
def test_image_build_makes_a_non_root_image_without_build_tools(engine: DockerClient) -> None:
    labels = engine.images.get(DockerConfig.default().image).labels or {}
    base = labels["org.opencontainers.image.base.name"]
    tag = "cronbox-agent:test-build"
    done = subprocess.run(
        [sys.executable, "-m", "host.cli", "image", "build", "--base", base, "--tag", tag,
         "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = json.loads(done.stdout)
    try:
        assert (built["image"], built["base"]) == (tag, base)
        image = engine.images.get(tag)
        assert image.id == built["id"]
        assert image.attrs["Config"]["User"] == "1000:1000"
        assert image.attrs["Config"]["Entrypoint"][-2:] == ["-m", "agent_runner"]
        found = engine.containers.run(
            tag, ["-c", "command -v gcc cc make pip pip3 bash || true"], entrypoint=["bash"],
            network_mode="none", remove=True,
        )  # fmt: skip
        assert bytes(found).decode().split() == ["/usr/bin/bash"]
    finally:
        engine.images.remove(tag)


@pytest.mark.docker
async def test_version_over_http_names_the_engine_the_docker_runtime_talks_to(
    tmp_path: Path, engine: DockerClient
) -> None:
    settings = make_settings(tmp_path / "home", runtime="docker")
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock),
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        report = (await client.get("/version")).json()
    assert report["runtime"] == "docker"
    assert report["engine"] == engine.version()["Version"]
