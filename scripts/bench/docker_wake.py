"""How fast the docker runtime wakes a session, beside the engine's own floor (issue 9).

One run measures, on the same engine:

* floor: ``docker run --rm --network none <base> true`` (the CLI, a trivial command in
  a trivial image), and the same create-start-wait-remove through the SDK;
* the runner's own start: the ``process`` runtime starting ``python -m agent_runner``
  until its first heartbeat (interpreter start-up and imports, no container);
* cold wake: ``DockerRuntime.start`` until the container's runner has written its first
  heartbeat into ``outbox/`` (create, start, init, Python, imports, open the inbox);
* warm wake: a chat row written for a session whose container is live and idle, until
  its runner acks it ``processing`` (one poll of the runner's loop, no engine call).

Target: cold wake <= 2 x floor + the runner's own start. Nothing here runs a host; each
runtime is driven directly, so the engine's figures are not mixed with the sweep's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import percentile, secs, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.settings import RunnerSettings
from host.runtimes import Runtime
from host.runtimes.base import RunnerSpec
from host.runtimes.docker import DockerConfig, DockerRuntime, connect
from host.runtimes.process import ProcessRuntime
from host.service import Cronbox
from host.store.records import Session

STEP = 0.002


def row(name: str, values: list[float]) -> list[str]:
    return [name, str(len(values)), secs(statistics.median(values)), secs(percentile(values, 99))]


def floor_cli(base: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", base, "true"], check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        times.append(time.perf_counter() - t0)
    return times


def floor_sdk(base: str, n: int) -> list[float]:
    client = connect()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.containers.run(base, ["true"], network_mode="none", remove=True)
        times.append(time.perf_counter() - t0)
    client.close()
    return times


def spec_for(store: Cronbox, session: Session, idle: float) -> RunnerSpec:
    directory = store.session_dir(session.id).resolve()
    env = RunnerSettings(session_dir=directory, idle_timeout=idle, poll_interval=0.05).to_env()
    return RunnerSpec(session.id, directory, store.home.resolve(), env)


async def until(check: Callable[[], bool], limit: float = 60.0) -> None:
    """Poll a file-system condition (files have no event to wait on here)."""
    with anyio.fail_after(limit):
        while True:
            if check():
                return
            await anyio.sleep(STEP)


async def first_beat(runtime: Runtime, store: Cronbox, n: int) -> list[float]:
    """Start ``n`` fresh sessions' runners; the time until each one's first heartbeat."""
    times = []
    for i in range(n):
        session = store.create_session(f"{runtime.name}-{i}")
        spec = spec_for(store, session, idle=60)
        beat = spec.session_dir / sdb.HEARTBEAT
        t0 = time.perf_counter()
        handle = await runtime.start(spec)
        await until(beat.exists)
        times.append(time.perf_counter() - t0)
        await runtime.kill(handle)
    return times


async def warm(runtime: DockerRuntime, store: Cronbox, n: int) -> list[float]:
    session = store.create_session("warm")
    spec = spec_for(store, session, idle=600)
    handle = await runtime.start(spec)
    await until((spec.session_dir / sdb.HEARTBEAT).exists)
    times = []
    for i in range(n):
        message = store.send_message(session.id, f"warm {i}")

        def claimed(message_id: str = message.id) -> bool:
            if not (spec.session_dir / sdb.OUTBOUND).exists():
                return False
            with sdb.outbound(spec.session_dir, readonly=True) as db:
                return sdb.outbound_ready(db) and bool(sdb.acks_for(db, [message_id]))

        t0 = time.perf_counter()
        await until(claimed)
        times.append(time.perf_counter() - t0)
    await runtime.kill(handle)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="starts of each kind")
    parser.add_argument("--base", default="cronbox-base:bookworm", help="the floor's image")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Cronbox(Path(tmp) / "home")
        docker = DockerRuntime(DockerConfig.default())
        docker.check_ready()
        cli = floor_cli(args.base, args.n)
        sdk = floor_sdk(args.base, args.n)
        own = await first_beat(ProcessRuntime(), store, args.n)
        cold = await first_beat(docker, store, args.n)
        hot = await warm(docker, store, args.n * 2)
        docker.close()

    print(f"docker runtime wake-up, {args.n} starts each (image {docker.config.image})\n")
    table(
        ["measure", "n", "median", "p99"],
        [
            row("floor: docker run --rm <base> true (CLI)", cli),
            row("floor: create, start, wait, remove (SDK)", sdk),
            row("runner's own start (process runtime)", own),
            row("cold wake: start -> runner polling", cold),
            row("warm wake: due chat -> claimed", hot),
        ],
    )
    target = 2 * statistics.median(cli) + statistics.median(own)
    cold_median = statistics.median(cold)
    print(
        f"\ntarget (2 x floor + runner's own start): {secs(target)}; cold wake median "
        f"{secs(cold_median)} = {cold_median / target:.2f} of the target"
    )


if __name__ == "__main__":
    anyio.run(main)
