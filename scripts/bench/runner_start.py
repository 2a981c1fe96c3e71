"""CPU of one runner start: forked from the template, spawned cold, and the bare imports.

Each start is the process runtime starting a real ``python -m agent_runner`` (``echo``
provider) for a session with nothing due: the runner sets up, polls once, finds nothing
and exits after a 10 ms idle timeout. Its CPU is what the kernel accounts to it once it
is reaped (``RUSAGE_CHILDREN`` of this process for a spawned runner, the template's
``wait4()`` of a forked one), plus the host's own CPU inside ``runtime.start``.
Spawned and forked starts alternate, one at a time, so the machine's load falls on both
alike. Beside them, in the same run: a bare ``python -c pass`` (the interpreter's floor)
and ``python -c "import <the runner's modules>"`` (the cold import alone), and the same
with the modules a wake no longer imports unless it needs them (pydantic, sqlite-utils,
the gate machinery: the import before the runner's path shed them, as a baseline).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import children_cpu, cpu_seconds, percentile, ratio, secs, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.settings import RunnerSettings
from host.runtimes import ProcessRuntime, RunnerSpec
from host.service import Cronbox

RUNNER_MODULES = "import agent_runner.__main__, agent_runner.runner, agent_runner.mailbox.sqlite"
# Beside them, what a wake imported before the runner's path shed them: the session
# files over sqlite-utils, the pydantic records and settings, the gate machinery (a
# wake still loads these when it must migrate its outbox, or runs a gate script).
EAGER_MODULES = (
    f"{RUNNER_MODULES}, cronbox_shared.sessiondb, cronbox_shared.models, agent_runner.gate"
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=30, help="starts of each kind")
    p.add_argument("--home", type=Path, help="CRONBOX_HOME to use (default: a temp dir)")
    return p.parse_args()


async def one_start(runtime: ProcessRuntime, spec: RunnerSpec, forked: bool) -> tuple[float, float]:
    """(the runner's CPU, the host's CPU in start) of one start, in seconds."""
    before = children_cpu()
    host_before = time.process_time()
    handle = await runtime.start(spec)
    host_cpu = time.process_time() - host_before
    with anyio.fail_after(60):
        # A child's exit gives no event here; is_running polls (and reaps) it.
        while await runtime.is_running(handle):  # noqa: ASYNC110
            await anyio.sleep(0.005)
    if forked:
        used = runtime.cpu_used(handle)  # its template's wait4() of it
        assert used is not None
        return used, host_cpu
    return children_cpu() - before, host_cpu


def cold(argv: list[str], times: int) -> list[float]:
    out = []
    for _ in range(times):
        before = children_cpu()
        subprocess.run(argv, check=True)
        out.append(children_cpu() - before)
    return out


async def main() -> None:
    args = parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="cronbox-runner-start-"))
    store = Cronbox(home)
    sessions = [store.create_session(f"start-{i}") for i in range(args.starts)]
    warm_up = store.create_session("warm-up")
    spawner = ProcessRuntime(fork=False)
    forker = ProcessRuntime(fork=True)
    assert forker.template is not None

    def spec(session_id: str) -> RunnerSpec:
        directory = store.session_dir(session_id).resolve()
        env = RunnerSettings(session_dir=directory, idle_timeout=0.01).to_env()
        return RunnerSpec(session_id, directory, home, env)

    # The template's own start (once per host): warm it with one runner, not counted.
    template_before = time.perf_counter()
    await one_start(forker, spec(warm_up.id), forked=True)
    template_wall = time.perf_counter() - template_before
    template_cpu = cpu_seconds(forker.template.pid or 0)

    first: list[tuple[float, float]] = []
    spawned: list[tuple[float, float]] = []
    forked: list[tuple[float, float]] = []
    for session in sessions:
        # A session is made with its outbox; one that has none (made by an older
        # release) has its runner create and migrate it: that wake first, with the file
        # removed, then wakes that find it migrated.
        (store.session_dir(session.id) / sdb.OUTBOUND).unlink()
        first.append(await one_start(spawner, spec(session.id), forked=False))
        spawned.append(await one_start(spawner, spec(session.id), forked=False))
        forked.append(await one_start(forker, spec(session.id), forked=True))
    forker.close()

    floor = cold([sys.executable, "-c", "pass"], args.starts)
    imports = cold([sys.executable, "-c", RUNNER_MODULES], args.starts)
    eager = cold([sys.executable, "-c", EAGER_MODULES], args.starts)

    def row(name: str, values: list[float]) -> list[str]:
        return [name, secs(percentile(values, 50), "ms"), secs(percentile(values, 99), "ms")]

    print(
        f"{args.starts} starts of each kind, one at a time: per session a wake that makes "
        "its outbox (spawned), then a spawned and a forked wake\n"
    )
    table(
        ["CPU per start", "p50", "p99"],
        [
            row("interpreter floor: python -c pass", floor),
            row("cold import of the runner's modules", imports),
            row("  baseline: with pydantic, sqlite-utils and the gate loaded too", eager),
            row(
                "spawned runner (today's path; the docker runtime's cold start)",
                [r for r, _ in spawned],
            ),
            row("  a wake that makes its outbox (a session made with none)", [r for r, _ in first]),
            row("  + host CPU in start (spawn)", [h for _, h in spawned]),
            row("forked runner (fork server)", [r for r, _ in forked]),
            row("  + host CPU in start (fork)", [h for _, h in forked]),
        ],
    )
    spawn_total = [r + h for r, h in spawned]
    fork_total = [r + h for r, h in forked]
    print()
    print(
        f"runner + host, p50: spawned {secs(percentile(spawn_total, 50), 'ms')}, "
        f"forked {secs(percentile(fork_total, 50), 'ms')}: "
        f"forked is {ratio(percentile(spawn_total, 50), percentile(fork_total, 50))} cheaper"
    )
    print(
        f"template start (once per host): {template_cpu * 1000:.0f} ms CPU, "
        f"{template_wall:.2f} s wall"
    )
    print(
        f"cold import: {secs(percentile(imports, 50), 'ms')} against "
        f"{secs(percentile(eager, 50), 'ms')} with pydantic, sqlite-utils and the gate: "
        f"{ratio(percentile(eager, 50), percentile(imports, 50))} cheaper"
    )
    print(
        f"targets: forked <= 30 ms CPU (p50 {percentile(fork_total, 50) * 1000:.1f} ms); "
        f"cold <= 120 ms CPU (spawned p50 {percentile(spawn_total, 50) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    anyio.run(main)
