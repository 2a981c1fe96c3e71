"""What a series' history costs: task actions, settlement and a runner's exit (issue 7).

One session holds one ``* * * * *`` series with 0, 10,000 and 50,000 past occurrences
(a week and five weeks of history) and its live occurrence; the history is written as
the sweep leaves it (finished rows in ``inbound.db``, one run each in ``cronbox.db``).
For each size, measured through the service layer the CLI and the host use:

* ``task pause`` — ``Cronbox.pause_task`` then ``resume_task`` (both timed, each a
  full command: locate, one inbound transaction, central view, audit);
* settlement of one occurrence — the runner acks the live occurrence ``completed``
  and ``Cronbox.settle_acks`` ends it and inserts the next (the sweep's step 1 and 5);
* a runner's exit — ``Sweeper._after_exit`` for a runner that left one row claimed:
  last settlement, delivery check, requeue of the claimed row, lease release (pruning
  is switched off so the history stays).

The baseline is the same measure with no history, in the same run: the cost should not
grow with history, so each figure is printed beside it as a ratio (1.0x = no growth).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
from _common import percentile, table

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus, MessageKind, MessageStatus
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.runtimes import ProcessRuntime, RunnerHandle
from host.service import Cronbox
from host.store.central import SqliteCentral
from host.store.records import Session
from host.sweep import LiveRunner, SweepConfig, Sweeper

START = datetime(2026, 1, 1, tzinfo=UTC)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="0,10000,50000", help="past occurrences per run")
    p.add_argument("--repeat", type=int, default=30, help="measurements per figure")
    return p.parse_args()


def build(home: Path, past: int) -> tuple[Cronbox, ManualClock, Session, str]:
    """A home whose one series has ``past`` finished occurrences before its live one."""
    clock = ManualClock(START)
    app = Cronbox(home, clock=clock)
    session = app.create_session("history")
    task = app.schedule_task(session.id, {"taskId": "minutely", "prompt": "tick",
                                          "recurrence": "* * * * *"})  # fmt: skip
    if past:
        with sdb.inbound(app.session_dir(session.id)) as db, db.atomic():
            first = sdb.get_inbound(db, task.id)
            assert first is not None
            for n in range(past):
                at = fmt(START + timedelta(minutes=n + 1))
                occurrence = task.id if n == 0 else f"{task.id}~{n}"
                values = {**first.model_dump(mode="json", exclude={"seq"}), "id": occurrence,
                          "status": MessageStatus.COMPLETED.value, "process_after": at,
                          "scheduled_for": at, "recurrence": None, "updated_at": at}  # fmt: skip
                if n > 0:
                    sdb.insert_inbound(db, values)
                else:
                    sdb.update_inbound(db, occurrence, status="completed", recurrence=None)
            live_at = fmt(START + timedelta(minutes=past + 1))
            sdb.insert_inbound(
                db, {**first.model_dump(mode="json", exclude={"seq"}), "id": f"{task.id}~{past}",
                     "process_after": live_at, "scheduled_for": live_at},
            )  # fmt: skip
        with SqliteCentral(home).transaction() as central:
            central.conn.executemany(
                "INSERT INTO runs (session_id, message_id, series_id, scheduled_for, started_at, "
                "finished_at, outcome, tries) VALUES (?, ?, ?, ?, ?, ?, 'ok', 1)",
                [
                    (session.id, task.id if n == 0 else f"{task.id}~{n}", task.id,
                     fmt(START + timedelta(minutes=n + 1)), fmt(START + timedelta(minutes=n + 1)),
                     fmt(START + timedelta(minutes=n + 1, seconds=2)))
                    for n in range(past)
                ],
            )  # fmt: skip
        app.sync_session(session.id)
        clock.set(START + timedelta(minutes=past + 1))
    return app, clock, session, task.id


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def live_id(app: Cronbox, series: str) -> str:
    return app.get_task(series).id


def ack(app: Cronbox, session: Session, message_id: str, status: AckStatus) -> None:
    with sdb.outbound(app.session_dir(session.id)) as db, db.atomic():
        sdb.set_ack(db, message_id, 0, status, fmt(app.now()), None, "done")


def measure(home: Path, past: int, repeat: int) -> dict[str, list[float]]:
    app, clock, session, series = build(home, past)
    figures: dict[str, list[float]] = {"pause": [], "resume": [], "settle": [], "exit": []}
    for _ in range(repeat):
        figures["pause"].append(timed(lambda: app.pause_task(series)))
        figures["resume"].append(timed(lambda: app.resume_task(series)))
    for _ in range(repeat):
        current = live_id(app, series)
        clock.set(datetime.fromisoformat(app.get_task(series).next_run or "").astimezone(UTC))
        clock.advance(1)
        ack(app, session, current, AckStatus.COMPLETED)
        figures["settle"].append(timed(lambda: app.settle_acks(session.id, timedelta(minutes=10))))
    # History is kept here (no pruning), so every exit sees all of it.
    config = SweepConfig(keep_finished=100 * 365 * 86400.0)
    sweeper = Sweeper(app, ProcessRuntime(), Delivery(app, []), config, clock)
    for i in range(repeat):
        current = live_id(app, series)
        clock.set(datetime.fromisoformat(app.get_task(series).next_run or "").astimezone(UTC))
        clock.advance(1)
        ack(app, session, current, AckStatus.PROCESSING)
        handle = RunnerHandle(session.id, f"bench-{i}", clock.now())
        runner = LiveRunner(handle=handle, session=session)
        sweeper.live[session.id] = runner

        async def exit_now(runner: LiveRunner = runner) -> None:
            await sweeper._after_exit(runner, reason="runner exited while working")

        figures["exit"].append(timed(lambda: anyio.run(exit_now)))
    rows = app.inbound_rows(session.id)
    assert sum(r.kind is MessageKind.TASK for r in rows) >= past
    return figures


def main() -> None:
    args = parse_args()
    logging.disable(logging.WARNING)  # each measured exit logs its requeued row
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            t0 = time.perf_counter()
            results[size] = measure(Path(tmp) / f"home-{size}", size, args.repeat)
            print(f"history {size:>6,}: measured in {time.perf_counter() - t0:.1f} s")
    base = results[sizes[0]]
    rows = []
    for what, label in (("pause", "task pause"), ("resume", "task resume"),
                        ("settle", "settle one occurrence"), ("exit", "runner exit")):  # fmt: skip
        cells = [label]
        for size in sizes:
            med = statistics.median(results[size][what]) * 1000
            p99 = percentile(results[size][what], 99) * 1000
            ratio = med / (statistics.median(base[what]) * 1000)
            cells.append(f"{med:.2f} / {p99:.2f} ms ({ratio:.2f}x)")
        rows.append(cells)
    print()
    print(f"median / p99 per call over {args.repeat} calls; (ratio of medians to {sizes[0]:,})")
    table(["measure", *(f"{s:,} past" for s in sizes)], rows)
    print(json.dumps({str(s): {k: statistics.median(v) for k, v in r.items()}
                      for s, r in results.items()}))  # fmt: skip


if __name__ == "__main__":
    main()
