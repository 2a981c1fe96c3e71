"""Due -> runner-start lateness with the HTTP API under load, beside the same without (issue 11).

Three rounds a pair, alternating, each on a fresh home with the same shape: ``--tasks``
sessions with one one-time task each, due ``--stagger`` seconds apart, served by the real
host (``run_host``, ``process`` runtime, real runner subprocesses, the HTTP API served by
its own process on an ephemeral port).

* baseline: nothing else runs;
* loaded: ``--clients`` other processes loop ``GET /api/tasks`` against the host's API
  as fast as it answers, for the whole round (``--client raw`` by default: kept-alive
  requests that cost the load generator little, as ``wrk``'s do, so the load falls on
  the server; ``--client httpx`` for the SDK client, whose own CPU weighs on a small
  machine as the control's does);
* control: the same number of processes spin on the CPU, with no HTTP at all.

The figure is ``StartRecord.lateness`` (the sweep's runner start minus the work's due
time); the ratio loaded / baseline should stay within 1.10.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import percentile, secs, table

from cronbox_shared.timeutil import fmt
from host.daemon import sweep_config
from host.service import Cronbox
from tests.hosting import base_url, ephemeral_socket, make_settings, running_host


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=20, help="one-time tasks (one per session)")
    p.add_argument("--stagger", type=float, default=0.5, help="seconds between due times")
    p.add_argument("--repeat", type=int, default=3, help="baseline/loaded pairs, alternating")
    p.add_argument("--pool", type=int, default=5, help="CRONBOX_MAX_CONTAINERS")
    p.add_argument("--clients", type=int, default=1, help="load processes in the loaded round")
    p.add_argument(
        "--client", choices=("raw", "httpx"), default="raw",
        help="the load's HTTP client: raw keep-alive requests (as wrk), or the httpx SDK",
    )  # fmt: skip
    p.add_argument("--lead", type=float, default=2.0, help="seconds from host-up to first due")
    p.add_argument("--load", help=argparse.SUPPRESS)  # internal: be a load process on URL
    p.add_argument("--burn", action="store_true", help=argparse.SUPPRESS)  # internal: spin
    return p.parse_args()


def burn() -> None:
    """Spin on the CPU until SIGTERM (the control: load without any HTTP)."""
    stop = False

    def done(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    n = 0
    while not stop:
        n += 1
    print(0, flush=True)


def be_load(url: str, client: str) -> None:
    """Loop GET /api/tasks until SIGTERM; print the request count.

    The ``raw`` client writes the request on one kept-alive connection and reads the
    answer by its Content-Length, as ``wrk`` does: it costs little per request, so the
    load falls on the server, not on the machine the load generator shares with it.
    ``httpx`` loops the SDK client instead (several times the CPU per request).
    """
    count = 0
    stop = False

    def done(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    get = _httpx_get(url) if client == "httpx" else _raw_get(url)
    while not stop:
        try:
            get()
            count += 1
        except (OSError, ValueError) as exc:
            print(f"load: {exc!r}", file=sys.stderr, flush=True)
            time.sleep(0.01)  # a failing server is not hammered
    print(count, flush=True)


def _httpx_get(url: str) -> Callable[[], None]:
    import httpx2

    client = httpx2.Client(base_url=url)

    def get() -> None:
        try:
            client.get("/api/tasks").raise_for_status()
        except httpx2.HTTPError as exc:
            raise ValueError(str(exc)) from exc

    return get


def _raw_get(url: str) -> Callable[[], None]:
    parts = urlsplit(url)
    request = f"GET /api/tasks HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    conn: socket.socket | None = None
    buffered = b""

    def receive() -> None:
        nonlocal buffered
        assert conn is not None
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffered += chunk

    def get() -> None:
        nonlocal conn, buffered
        if conn is None:
            conn, buffered = socket.create_connection((parts.hostname, parts.port)), b""
        try:
            conn.sendall(request)
            while b"\r\n\r\n" not in buffered:
                receive()
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            status, *fields = head.decode("latin-1").split("\r\n")
            if not status.startswith("HTTP/1.1 200"):
                raise ValueError(f"answered {status!r}")
            sizes = [f.split(":", 1)[1] for f in fields if f.lower().startswith("content-length:")]
            if not sizes:
                raise ValueError("an answer without Content-Length")
            length = int(sizes[0])
            while len(buffered) < length:
                receive()
            buffered = buffered[length:]
        except BaseException:
            conn.close()
            conn = None
            raise

    return get


async def one_round(
    args: argparse.Namespace, home: Path, clients: int, *, control: bool = False
) -> tuple[list[float], float]:
    """Start lateness of each task, and the load's request rate (0 without load)."""
    settings = make_settings(home, max_containers=args.pool, idle_timeout=1.0, min_interval=60.0)
    store = Cronbox.from_settings(settings)
    sessions = [store.create_session(f"bench-{i:04d}").id for i in range(args.tasks)]
    first = store.now() + timedelta(seconds=args.lead + 0.01 * args.tasks)
    for i, sid in enumerate(sessions):
        due = first + timedelta(seconds=i * args.stagger)
        store.schedule_task(
            sid, {"taskId": f"due-{i:04d}", "prompt": "ping", "processAfter": fmt(due)}
        )
    sock = ephemeral_socket()
    load = ["--load", base_url(sock), "--client", args.client]
    command = [sys.executable, __file__, *(["--burn"] if control else load)]
    async with running_host(settings, sweep_config(settings), http_socket=sock) as sweeper:
        began = time.perf_counter()
        loads = [await anyio.open_process(command, stderr=None) for _ in range(clients)]
        wanted = set(sessions)
        with anyio.fail_after(args.tasks * args.stagger + 120):
            while True:
                if wanted <= {s.session_id for s in sweeper.starts}:
                    break
                await anyio.sleep(0.2)
        elapsed = time.perf_counter() - began
        requests = 0
        for proc in loads:
            proc.send_signal(signal.SIGTERM)
            assert proc.stdout is not None
            out = b"".join([chunk async for chunk in proc.stdout])
            await proc.wait()
            requests += int(out.strip() or 0)
        first_start: dict[str, float] = {}
        for record in sweeper.starts:
            first_start.setdefault(record.session_id, record.lateness)
    return [first_start[s] for s in sessions], requests / elapsed


async def run(args: argparse.Namespace, root: Path) -> None:
    base: list[float] = []
    loaded: list[float] = []
    burned: list[float] = []
    rates: list[float] = []
    pairs: list[tuple[float, float]] = []
    for n in range(args.repeat):
        # Alternating rounds, so that a neighbour's load on the machine falls on both.
        quiet, _ = await one_round(args, root / f"baseline-{n}", 0)
        busy, rate = await one_round(args, root / f"loaded-{n}", args.clients)
        spun, _ = await one_round(args, root / f"control-{n}", args.clients, control=True)
        base += quiet
        loaded += busy
        burned += spun
        rates.append(rate)
        pairs.append((percentile(quiet, 50), percentile(busy, 50)))
    print(
        f"due -> runner start, {args.tasks} one-time tasks {args.stagger * 1000:.0f} ms apart, "
        f"pool {args.pool}, production sweep timings, {args.repeat} alternating round pairs"
    )
    print(
        f"load: {args.clients} process(es) looping GET /api/tasks ({args.client} client) at "
        f"{sum(rates) / len(rates):,.0f} requests/s on average"
    )
    print()
    rows = []
    for label, values in (
        ("no HTTP load (baseline)", base),
        ("GET /api/tasks loop", loaded),
        ("control: CPU spin, no HTTP", burned),
    ):
        rows.append([label, *(secs(percentile(values, q)) for q in (50, 99, 100))])
    table(["start lateness, all rounds", "p50", "p99", "max"], rows)
    print()
    p50 = percentile(loaded, 50) / max(1e-9, percentile(base, 50))
    p99 = percentile(loaded, 99) / max(1e-9, percentile(base, 99))
    c50 = percentile(loaded, 50) / max(1e-9, percentile(burned, 50))
    c99 = percentile(loaded, 99) / max(1e-9, percentile(burned, 99))
    table(
        ["ratio (target: loaded / baseline <= 1.10)", "p50", "p99"],
        [
            ["loaded / baseline", f"{p50:.2f}", f"{p99:.2f}"],
            ["loaded / control (what the API adds beyond a busy core)", f"{c50:.2f}", f"{c99:.2f}"],
        ],
    )
    print()
    table(
        ["round pair", "baseline p50", "loaded p50", "ratio"],
        [
            [str(i + 1), secs(b), secs(x), f"{x / max(1e-9, b):.2f}"]
            for i, (b, x) in enumerate(pairs)
        ],
    )


def main() -> None:
    args = parse_args()
    if args.load:
        be_load(args.load, args.client)
        return
    if args.burn:
        burn()
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TZ", "UTC")
    with tempfile.TemporaryDirectory(prefix="cronbox-bench-") as tmp:
        anyio.run(run, args, Path(tmp))


if __name__ == "__main__":
    main()
