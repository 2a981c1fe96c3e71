"""The docker runtime against a real engine: hardening, isolation, limits, lifecycle.

Skipped (with the reason) where no engine or agent image is present; CI requires both
(``CRONBOX_REQUIRE_DOCKER``). Probes run inside the containers as gate scripts, the
same way an agent's own code would, and report into the session's workspace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from cronbox_shared.models import RunOutcome
from host.limits import ContainerLimits
from host.runtimes.docker import HOME_LABEL, SESSION_LABEL, home_id
from host.service import Cronbox
from host.store.records import Session
from tests.docker_support import containers_of, no_strays, ready_engine
from tests.hosting import make_settings, replies, running_host, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
CANARY = "CRONBOX_TEST_CANARY_SECRET"


@pytest.fixture
def engine(tmp_path: Path) -> Any:
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
        "inbox", "outbox", "workspace",
    ]  # fmt: skip
    env = (workspace / "env.txt").read_text()
    assert CANARY not in env and "host-only-value" not in env
    # Of the host's filesystem, only the three session directories are mounted (plus the
    # engine's own resolv.conf, hostname and hosts files and its init).
    mounts = [line.split() for line in (workspace / "mounts.txt").read_text().splitlines()]
    # mountinfo: id parent dev root mountpoint options [optional...] - fstype source ...
    by_point = {f[4]: f for f in mounts}
    host_dev = by_point["/session/inbox"][2]
    from_host = sorted(
        f[4] for f in mounts if f[2] == host_dev and not f[4].endswith("/docker-init")
    )
    assert from_host == sorted(
        ["/session/inbox", "/session/outbox", "/session/workspace",
         "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]
    ), from_host  # fmt: skip
    inbox = sorted(p.name for p in (store.session_dir(session.id) / "inbox").iterdir())
    assert inbox == ["inbound.db"]
    assert store.inbound_rows(session.id), "the inbox is intact"


@pytest.mark.docker
async def test_a_fork_bomb_in_a_gate_hits_the_pids_limit_and_is_a_failed_gate(
    tmp_path: Path, engine: DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_GATE_TIMEOUT", "3")
    settings = make_settings(tmp_path / "home", runtime="docker", idle_timeout=30.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("bomb", limits=ContainerLimits(pids=64))
    bomb = store.schedule_task(
        session.id, {"prompt": "p", "processAfter": "now", "script": "b() { b | b & }; b; sleep 10"}
    )
    async with running_host(settings):
        await wait_for(lambda: finished(store, bomb.id), 90)
        # The runner outlived it and still answers.
        chat = store.send_message(session.id, "still there?")
        await wait_for(
            lambda: [r for r in replies(store, session.id) if r["in_reply_to"] == chat.id], 60
        )
    run = store.runs_for(bomb.id)[-1]
    assert run.outcome is RunOutcome.ERROR
    assert "gate script" in (run.error or "")


@pytest.mark.docker
async def test_a_memory_hog_in_a_gate_is_killed_and_recorded(
    tmp_path: Path, engine: DockerClient
) -> None:
    settings = make_settings(tmp_path / "home", runtime="docker", idle_timeout=30.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("hog", limits=ContainerLimits(memory="160m"))
    hog = store.schedule_task(
        session.id,
        {"prompt": "p", "processAfter": "now",
         "script": "python3 -c 'x = b\"x\" * (1 << 30)' && echo '{\"wakeAgent\": true}'"},
    )  # fmt: skip
    async with running_host(settings):
        await wait_for(lambda: finished(store, hog.id), 90)
        chat = store.send_message(session.id, "still there?")
        await wait_for(
            lambda: [r for r in replies(store, session.id) if r["in_reply_to"] == chat.id], 60
        )
    run = store.runs_for(hog.id)[-1]
    assert run.outcome is RunOutcome.ERROR
    assert "out of memory" in (run.error or ""), run.error
