"""What chains and approval gates add to settling a finished occurrence.

One home, one session per sample. Each sample schedules a one-time task (due now), lets
the runner's ``completed`` ack sit in the outbox (written as the runner writes it), and
times ``Cronbox.settle_acks``, the call the sweep makes: one inbound transaction, then
the central view. Four kinds of samples, interleaved so the page cache and the machine's
load treat them alike:

* ``plain``: a task nothing waits for (the baseline every figure is compared with);
* ``parent of N``: N chained tasks wait for it, and each gets its run inserted in the
  same transaction;
* ``gated``: an approval-gated task due now: ``prepare_due`` turns it
  ``awaiting_approval`` and writes the note (timed instead of the settlement);
* ``approve``: ``Cronbox.approve_task`` of such an occurrence.

Prints the median and p99 of each, and each median's ratio to the plain settlement's.
Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import _common  # noqa: F401  (puts the repository on the path)
from _common import percentile, secs, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus
from cronbox_shared.timeutil import fmt
from host.service import Cronbox

TIMEOUT = timedelta(minutes=10)


def finished_parent(store: Cronbox, n: int, children: int) -> tuple[str, str]:
    session = store.create_session(f"s{n}-{children}").id
    parent = f"p{n}-{children}"
    store.schedule_task(session, {"taskId": parent, "prompt": "report", "processAfter": "now"})
    for k in range(children):
        store.schedule_task(session, {"taskId": f"{parent}-c{k}", "prompt": "{{parent.output}}",
                                      "afterTask": parent})  # fmt: skip
    with sdb.outbound(store.session_dir(session)) as out:
        sdb.set_ack(out, parent, 0, AckStatus.COMPLETED, fmt(store.now()), None, "3 open PRs")
    return session, parent


def gated_task(store: Cronbox, n: int) -> tuple[str, str]:
    session = store.create_session(f"g{n}").id
    task = f"g{n}"
    store.schedule_task(session, {"taskId": task, "prompt": "deploy", "processAfter": "now",
                                  "approval": True})  # fmt: skip
    return session, task


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="samples of each kind")
    parser.add_argument("--children", type=int, default=5, help="chained tasks of a parent")
    parser.add_argument("--home", type=Path, default=None, help="keep the home here")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="cronbox-chain-bench-"))
    store = Cronbox(home)
    kinds: dict[str, list[float]] = {
        "plain": [],
        f"parent of {args.children}": [],
        "gated": [],
        "approve": [],
    }
    chained = f"parent of {args.children}"
    for n in range(args.samples):
        session, _ = finished_parent(store, n, 0)
        kinds["plain"].append(timed(partial(store.settle_acks, session, TIMEOUT)))
        session, _ = finished_parent(store, n, args.children)
        kinds[chained].append(timed(partial(store.settle_acks, session, TIMEOUT)))
        session, task = gated_task(store, n)
        kinds["gated"].append(timed(partial(store.prepare_due, session)))
        kinds["approve"].append(timed(partial(store.approve_task, task, actor="bench")))
    base = statistics.median(kinds["plain"])
    rows = []
    for name, values in kinds.items():
        median = statistics.median(values)
        rows.append([name, secs(median, "ms"), secs(percentile(values, 99), "ms"),
                     f"{median / base:.2f}x"])  # fmt: skip
    print(f"{args.samples} samples of each, home {home}")
    table(["settling", "median", "p99", "median / plain"], rows)


if __name__ == "__main__":
    main()
