"""How long the host's event loop stalls while delivery applies agent actions (issue 7).

One session's runner wrote ``--actions`` ``schedule_task`` requests (default 50) to its
``outbound.db``. ``Delivery.deliver`` takes them in while a probe task on the same
event loop sleeps 5 ms at a time and records how late each wake-up is: a late wake-up
is time the loop could not run anything else (other sessions, the sweep, HTTP).

Baseline, same run: the same actions applied the way the host did before the core was
rebuilt, by calling the service synchronously from the loop.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import percentile, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import parse_action
from cronbox_shared.models import MessageKind
from cronbox_shared.timeutil import fmt
from host.delivery import Delivery, apply_action
from host.service import Cronbox, Receipt
from host.store.records import Session

PROBE = 0.005


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--actions", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


def write_actions(app: Cronbox, session: Session, n: int) -> None:
    with sdb.outbound(app.session_dir(session.id)) as db:
        for i in range(n):
            content = {"action": "schedule_task", "taskId": f"t-{secrets.token_hex(4)}-{i}",
                       "prompt": "p", "processAfter": "+1h"}  # fmt: skip
            sdb.insert_outbound(db, f"a-{i}-{secrets.token_hex(4)}", MessageKind.SYSTEM,
                                content, fmt(app.now()))  # fmt: skip


async def probed(work: Callable[[], Awaitable[None]]) -> tuple[list[float], float]:
    """Run ``work`` beside a probe; the probe's lateness samples and the work's duration."""
    lags: list[float] = []
    done = anyio.Event()

    async def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await anyio.sleep(PROBE)
            lags.append(max(0.0, time.perf_counter() - t0 - PROBE))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        await anyio.lowlevel.checkpoint()
        await work()
        took = time.perf_counter() - t0
        done.set()
    return lags, took


def on_the_loop(app: Cronbox, session: Session) -> Callable[[], Awaitable[None]]:
    async def work() -> None:
        for raw in app.undelivered(session.id):
            content = json.loads(raw["content"])
            apply_action(app, session, parse_action(content), Receipt(raw["seq"], raw["id"]))

    return work


def through_the_writer(app: Cronbox, session: Session) -> Callable[[], Awaitable[None]]:
    delivery = Delivery(app, [])

    async def work() -> None:
        await delivery.deliver(session, await anyio.to_thread.run_sync(app.undelivered, session.id))

    return work


def main() -> None:
    args = parse_args()
    results: dict[str, list[tuple[list[float], float]]] = {"on the loop": [], "writer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, how in (("on the loop", on_the_loop), ("writer", through_the_writer)):
                app = Cronbox(Path(tmp) / f"{label}-{r}".replace(" ", "-"))
                session = app.create_session("agent")
                write_actions(app, session, args.actions)
                results[label].append(anyio.run(probed, how(app, session)))
                assert app.undelivered(session.id) == []
    rows = []
    for label, runs in results.items():
        lags = [lag for run_lags, _ in runs for lag in run_lags]
        worst = [max(run_lags, default=0.0) for run_lags, _ in runs]
        took = [t for _, t in runs]
        rows.append([
            f"{args.actions} actions, {label}",
            f"{statistics.median(lags) * 1000:.2f} ms", f"{percentile(lags, 99) * 1000:.1f} ms",
            f"{statistics.median(worst) * 1000:.0f} ms", f"{statistics.median(took):.2f} s",
        ])  # fmt: skip
    print(f"probe: a {PROBE * 1000:.0f} ms sleep on the loop, lateness per wake-up; "
          f"{args.rounds} rounds")  # fmt: skip
    table(["delivery", "lag p50", "lag p99", "worst stall", "took"], rows)


if __name__ == "__main__":
    main()
