"""What idling costs: an idle host, and idle runners, with change signals and with polls.

A real host (``python -m host.cli run``, ``process`` runtime, HTTP off) runs on a home of
``--sessions`` sessions, each with one task due in a day. For each mode in turn (change
signals, ``CRONBOX_CHANGE_SIGNAL=1``, the default; then the polling baseline,
``CRONBOX_CHANGE_SIGNAL=0``, which is how the host and runners waited before):

1. **idle host**: nothing is live; the CPU of the host process (all its threads) and its
   descendants (the runner template) over ``--window`` seconds, as CPU-seconds a minute;
2. **idle runners**: a chat to ``--runners`` sessions starts their runners; once every
   one has answered they idle (idle timeout one hour). Over the next window: the CPU of
   the runners, and the host's CPU beyond its idle figure, per runner and second.

The two modes run on the same home, one after the other, so they meet the same machine
load only roughly: compare the ratio, and run it twice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import cpu_seconds, descendants, host_process, ratio, table

from host.service import Cronbox
from tests.hosting import make_settings, replies


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=100, help="sessions in the home")
    p.add_argument("--runners", type=int, default=16, help="idle runners (and the pool size)")
    p.add_argument("--window", type=float, default=30.0, help="seconds each measure lasts")
    p.add_argument("--home", type=Path, help="CRONBOX_HOME to use (default: a temp dir)")
    return p.parse_args()


def tree_cpu(pid: int) -> tuple[float, float]:
    """(CPU of ``pid``, CPU of its live descendants), seconds."""
    return cpu_seconds(pid), sum(cpu_seconds(p) for p in descendants(pid))


def wait(check: Callable[[], bool], limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the host did not get there in time")
        time.sleep(0.1)


def measure(
    home: Path, store: Cronbox, ids: list[str], args: argparse.Namespace, signals: bool
) -> tuple[float, float, float, int]:
    """(idle host CPU-s/min, runner CPU s/s each, host's share s/s each, processes)."""
    env = {
        "TZ": "UTC",
        "CRONBOX_HOME": str(home),
        "CRONBOX_HTTP_PORT": "0",
        "CRONBOX_IDLE_TIMEOUT": "3600",
        "CRONBOX_MAX_CONTAINERS": str(args.runners),
        "CRONBOX_CHANGE_SIGNAL": "1" if signals else "0",
    }
    with host_process(env, home / f"host-{'signal' if signals else 'poll'}.log") as host:
        wait(lambda: (home / "host.json").exists())
        time.sleep(2)  # start-up work done
        h0, d0 = tree_cpu(host.pid)
        time.sleep(args.window)
        h1, d1 = tree_cpu(host.pid)
        idle_host = (h1 - h0 + d1 - d0) / args.window  # CPU-s per second

        sent = {sid: store.send_message(sid, "hello").id for sid in ids}

        def answered() -> bool:
            return all(
                any(r["in_reply_to"] == mid for r in replies(store, sid))
                for sid, mid in sent.items()
            )

        wait(answered)
        time.sleep(2)
        h0, d0 = tree_cpu(host.pid)
        time.sleep(args.window)
        h1, d1 = tree_cpu(host.pid)
        live = len(descendants(host.pid))
        runners = (d1 - d0) / args.window / len(ids)
        host_share = max(0.0, (h1 - h0) / args.window - idle_host) / len(ids)
        return idle_host * 60, runners, host_share, live


def main() -> None:
    args = parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="cronbox-idle-cost-"))
    store = Cronbox.from_settings(make_settings(home))
    sessions = [store.create_session(f"idle-{i}") for i in range(args.sessions)]
    for session in sessions:
        store.schedule_task(session.id, {"prompt": "tomorrow", "processAfter": "+1d"})
    ids = [s.id for s in sessions[: args.runners]]
    results = {}
    for signals in (True, False):
        results[signals] = measure(home, store, ids, args, signals)
    (sig_host, sig_run, sig_share, sig_live), (poll_host, poll_run, poll_share, _) = (
        results[True], results[False],
    )  # fmt: skip
    print(
        f"{args.sessions} sessions, {args.runners} idle runners "
        f"({sig_live - 1} processes beside the template), {args.window:.0f} s windows\n"
    )
    table(
        ["measure", "change signals", "polling (before)", "ratio"],
        [
            [
                "idle host, CPU-s per minute",
                f"{sig_host:.4f}",
                f"{poll_host:.4f}",
                ratio(poll_host, sig_host),
            ],
            [
                "idle runner, its own CPU ms/s",
                f"{sig_run * 1000:.3f}",
                f"{poll_run * 1000:.3f}",
                ratio(poll_run, sig_run),
            ],
            [
                "idle runner, host's share ms/s",
                f"{sig_share * 1000:.3f}",
                f"{poll_share * 1000:.3f}",
                ratio(poll_share, sig_share),
            ],
            [
                "idle runner, total ms/s",
                f"{(sig_run + sig_share) * 1000:.3f}",
                f"{(poll_run + poll_share) * 1000:.3f}",
                ratio(poll_run + poll_share, sig_run + sig_share),
            ],
        ],
    )  # fmt: skip
    print(
        f"\ntargets: idle runner <= 1 ms CPU/s ({(sig_run + sig_share) * 1000:.3f}); "
        f"idle host <= 0.02 CPU-s/min ({sig_host:.4f})"
    )


if __name__ == "__main__":
    main()
