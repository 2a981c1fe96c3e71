"""Listing a big home a page at a time: ``task list`` and ``task history`` pages, the
``--all`` stream, the filters, and the counts ``cronbox status`` reads (issue 13)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus, MessageStatus
from cronbox_shared.timeutil import ManualClock, fmt
from host.service import Cronbox
from host.store.central import CENTRAL
from host.store.central_schema import central_migrations
from host.store.records import MAX_PAGE, TaskFilter
from tests.cli_harness import Cli, as_json, cli_for, fresh_home, ok

FUTURE = "2031-01-15T09:00:00Z"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fresh_home(tmp_path, monkeypatch, "UTC")


@pytest.fixture
def cli(home: Path) -> Cli:
    return cli_for(home)


def schedule_many(store: Cronbox, session: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{k:03d}" for k in range(count)]
    for task_id in ids:
        store.schedule_task(session, {"taskId": task_id, "prompt": "p", "processAfter": FUTURE})
    return ids


def walk_pages(store: Cronbox, limit: int, **filters: Any) -> list[str]:
    """Every series id, by following ``next_after`` from the first page."""
    seen: list[str] = []
    after = None
    while True:
        page = store.task_page(after=after, limit=limit, **filters)
        seen.extend(v.series_id for v in page.rows)
        if page.next_after is None:
            return seen
        assert len(page.rows) == limit
        after = page.next_after


# --- pages ------------------------------------------------------------------------------


def test_pages_list_every_task_once_in_the_order_they_were_scheduled(app: Cronbox) -> None:
    app.create_session("work")
    app.create_session("home")
    ids = [*schedule_many(app, "work", "w", 7), *schedule_many(app, "home", "h", 5)]

    assert walk_pages(app, 5) == ids
    assert walk_pages(app, 1) == ids
    assert walk_pages(app, MAX_PAGE) == ids
    assert [v.series_id for v in app.iter_tasks()] == ids


def test_a_page_keeps_its_place_when_tasks_run_change_or_are_re_derived(
    app: Cronbox, clock: ManualClock
) -> None:
    session = app.create_session("work")
    app.schedule_task("work", {"taskId": "daily", "prompt": "p", "recurrence": "0 9 * * *"})
    ids = ["daily", *schedule_many(app, "work", "t", 4)]
    first = app.task_page(limit=2)
    assert [v.series_id for v in first.rows] == ids[:2]

    # The recurring series runs (its next occurrence is a new row), another is paused,
    # another rescheduled, and the whole session is re-derived as after a crash.
    clock.advance(days=1)
    live = app.live_row("daily")
    assert live is not None
    with sdb.outbound(app.session_dir(session.id)) as out:
        sdb.set_ack(out, live.id, 0, AckStatus.COMPLETED, fmt(clock.now()), None, "done")
    app.settle_acks(session.id, timedelta(minutes=10))
    assert app.live_row("daily").id != live.id  # type: ignore[union-attr]
    app.pause_task("t-001")
    app.update_task({"taskId": "t-002", "processAfter": "2032-01-01T00:00:00Z"})
    app.sync_session(session.id)

    rest: list[str] = []
    after = first.next_after
    while after is not None:
        page = app.task_page(after=after, limit=2)
        rest.extend(v.series_id for v in page.rows)
        after = page.next_after
    assert [v.series_id for v in first.rows] + rest == ids


def test_paging_while_another_process_schedules_skips_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    reader = Cronbox(home)
    reader.create_session("work")
    before = schedule_many(reader, "work", "old", 40)
    writer = Cronbox(home)  # its own connections, as another process would have
    started, stop = threading.Event(), threading.Event()
    added: list[str] = []

    def keep_scheduling() -> None:
        started.set()
        k = 0
        while not stop.is_set() and k < 200:
            task_id = f"new-{k:03d}"
            writer.schedule_task("work", {"taskId": task_id, "prompt": "p", "processAfter": FUTURE})
            added.append(task_id)
            k += 1

    thread = threading.Thread(target=keep_scheduling)
    thread.start()
    try:
        assert started.wait(10)
        seen: list[str] = []
        after = None
        while True:
            page = reader.task_page(after=after, limit=3)
            seen.extend(v.series_id for v in page.rows)
            if page.next_after is None or len(seen) >= 120:
                break
            after = page.next_after
    finally:
        stop.set()
        thread.join(30)

    assert len(seen) == len(set(seen)), "a task was listed twice"
    assert seen[: len(before)] == before, "a task that existed before paging was skipped"
    order = [v.series_id for v in reader.iter_tasks()]
    assert seen == order[: len(seen)], "the pages do not follow the listing order"
    assert set(seen[len(before) :]) <= set(added)


def test_filters_narrow_the_pages(app: Cronbox) -> None:
    app.create_session("work")
    app.create_session("home")
    work = schedule_many(app, "work", "w", 4)
    home = schedule_many(app, "home", "h", 3)
    app.pause_task("w-001")
    app.cancel_task("h-000")

    assert walk_pages(app, 2, session_ref="home") == home[1:]
    assert walk_pages(app, 2, states=TaskFilter.ALL.states, session_ref="home") == home
    assert walk_pages(app, 2, states=TaskFilter.PAUSED.states) == ["w-001"]
    assert walk_pages(app, 2, states=TaskFilter.CANCELLED.states) == ["h-000"]
    assert walk_pages(app, 2) == [*work, *home[1:]]


def test_a_page_past_its_limit_or_after_an_unknown_task_is_refused(app: Cronbox) -> None:
    app.create_session("work")
    schedule_many(app, "work", "w", 2)
    with pytest.raises(ValueError, match="out of range"):
        app.task_page(limit=0)
    with pytest.raises(ValueError, match="out of range"):
        app.task_page(limit=MAX_PAGE + 1)
    with pytest.raises(LookupError, match="nope"):
        app.task_page(after="nope")


# --- the CLI ----------------------------------------------------------------------------


def next_after(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith("note: more follow"):
            return line.rsplit(" ", 1)[1]
    return None


def test_cli_pages_and_the_all_stream_list_the_same_tasks(cli: Cli, home: Path) -> None:
    ok(cli("session", "create", "work"))
    store = Cronbox(home)
    ids = schedule_many(store, "work", "t", 12)
    store.cancel_task("t-004")

    first = ok(cli("task", "list", "--limit", "5", "--json"))
    paged, after = json.loads(first.stdout), next_after(first.stderr)
    while after is not None:
        result = ok(cli("task", "list", "--limit", "5", "--after", after, "--json"))
        paged.extend(json.loads(result.stdout))
        after = next_after(result.stderr)
    assert [t["series_id"] for t in paged] == [i for i in ids if i != "t-004"]

    streamed = as_json(cli("task", "list", "--all", "--status", "live", "--json"))
    assert streamed == paged
    lines = ok(cli("task", "list", "--all", "--status", "live", "--jsonl")).stdout.splitlines()
    assert [json.loads(line) for line in lines] == paged
    everything = as_json(cli("task", "list", "--all", "--json"))
    assert [t["series_id"] for t in everything] == ids
    table = ok(cli("task", "list", "--all")).stdout
    assert all(i in table for i in ids)


def test_cli_first_page_is_fifty_and_says_how_to_get_the_next(cli: Cli, home: Path) -> None:
    ok(cli("session", "create", "work"))
    store = Cronbox(home)
    ids = schedule_many(store, "work", "t", 51)

    result = ok(cli("task", "list", "--json"))
    assert [t["series_id"] for t in json.loads(result.stdout)] == ids[:50]
    assert next_after(result.stderr) == ids[49]
    rest = ok(cli("task", "list", "--session", "work", "--after", ids[49]))
    assert ids[50] in rest.stdout and ids[49] not in rest.stdout
    assert next_after(rest.stderr) is None
    assert "no more tasks after t-050" in ok(cli("task", "list", "--after", ids[50])).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "error: --limit 0 is out of range"),
        (["--limit", "1001"], "error: --limit 1001 is out of range"),
        (["--after", "nope"], 'error: no task with id or series id "nope"'),
        (["--status", "sleeping"], "error: "),
        (["--session", "nope"], "error: "),
        (["work", "--session", "other"], "error: give the session once"),
        (["--json", "--jsonl"], "error: --json prints one array and --jsonl"),
    ],
)
def test_cli_bad_paging_input_is_one_sentence(
    cli: Cli, home: Path, args: list[str], message: str
) -> None:
    ok(cli("session", "create", "work"))
    result = cli("task", "list", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_history_pages_newest_first(cli: Cli, home: Path) -> None:
    ok(cli("session", "create", "work"))
    store = Cronbox(home)
    session = store.get_session("work")
    store.schedule_task("work", {"taskId": "t1", "prompt": "p", "processAfter": FUTURE})
    for k in range(5):
        row = store.run_now("t1")
        with sdb.outbound(store.session_dir(session.id)) as out:
            sdb.set_ack(out, row.id, 0, AckStatus.COMPLETED, fmt(store.now()), None, f"run {k}")
        store.settle_acks(session.id, timedelta(minutes=10))
    history = as_json(cli("task", "history", "t1", "--all", "--json"))
    assert history["series_id"] == "t1"
    runs = history["runs"]
    assert [r["output_preview"] for r in runs] == [f"run {k}" for k in reversed(range(5))]

    first = ok(cli("task", "history", "t1", "--limit", "2", "--json"))
    paged, after = json.loads(first.stdout)["runs"], next_after(first.stderr)
    while after is not None:
        result = ok(cli("task", "history", "t1", "--limit", "2", "--after", after, "--json"))
        paged.extend(json.loads(result.stdout)["runs"])
        after = next_after(result.stderr)
    assert paged == runs
    lines = ok(cli("task", "history", "t1", "--all", "--jsonl")).stdout.splitlines()
    assert [json.loads(line) for line in lines] == runs


# --- counts -----------------------------------------------------------------------------


def full_read(store: Cronbox) -> dict[str, int]:
    """The counts, by reading every session and every task series."""
    counts = Counter(f"tasks.{v.status.value}" for v in store.list_tasks(include_all=True))
    counts["sessions"] = len(store.list_sessions())
    return dict(counts)


def test_status_counts_match_a_full_read(cli: Cli, home: Path) -> None:
    store = Cronbox(home)
    for name in ("a", "b", "c"):
        store.create_session(name)
    schedule_many(store, "a", "a", 6)
    schedule_many(store, "b", "b", 4)
    store.schedule_task("c", {"taskId": "c-daily", "prompt": "p", "recurrence": "0 9 * * *"})
    store.pause_task("a-000")
    store.pause_task("a-001")
    store.resume_task("a-001")
    store.cancel_task("b-000")
    store.cancel_task("c-daily")
    store.sync_session(store.get_session("a").id)

    kept = {k: n for k, n in store.counts().items() if n}
    assert kept == full_read(store)
    store.delete_session("b")
    kept = {k: n for k, n in store.counts().items() if n}
    assert kept == full_read(store)

    report = as_json(cli("status", "--json"))
    assert report["sessions"] == 2
    assert report["live_tasks"] == len(store.list_tasks())
    assert report["tasks"] == {"pending": 5, "paused": 1, "cancelled": 1}
    assert report["due_now"] == 0


def test_status_lists_a_few_quiet_sessions_and_counts_them_all(cli: Cli, home: Path) -> None:
    store = Cronbox(home)
    for k in range(25):
        store.create_session(f"s{k:02d}")
        store.update_session(f"s{k:02d}", quiet="22:00-07:00")
    report = as_json(cli("status", "--json"))
    assert report["quiet_sessions"] == 25
    assert [q["session"] for q in report["quiet"]] == [f"s{k:02d}" for k in range(20)]
    assert "and 5 more sessions with quiet hours" in ok(cli("status")).stdout


def test_paused_state_is_counted_once_per_series(app: Cronbox) -> None:
    app.create_session("work")
    schedule_many(app, "work", "t", 3)
    for _ in range(2):
        app.pause_task("t-000")
        app.resume_task("t-000")
    assert app.counts()["tasks.pending"] == 3
    assert app.live_task_count() == 3
    assert MessageStatus.PAUSED.value not in {v.status.value for v in app.list_tasks()}


def test_a_home_from_before_the_counts_gets_them_and_keeps_its_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = sqlite3.connect(home / CENTRAL)
    central_migrations.apply(Database(conn), stop_before="m013_counts")
    stamp = "2026-01-15T08:00:00.000Z"
    with conn:
        conn.execute(
            "INSERT INTO sessions (id, name, agent, timezone, created_at) "
            "VALUES ('s-000000000001', 'old', 'echo', 'UTC', ?)",
            [stamp],
        )
        for k, status in enumerate(["pending", "paused", "cancelled", "pending"]):
            conn.execute(
                "INSERT INTO tasks (series_id, session_id, live_id, status, timezone, prompt, "
                "created_at, updated_at) VALUES (?, 's-000000000001', ?, ?, 'UTC', 'p', ?, ?)",
                [f"z-{3 - k}", f"z-{3 - k}", status, stamp, stamp],
            )
    conn.close()

    store = Cronbox(home)
    assert {k: n for k, n in store.counts().items() if n} == full_read(store)
    assert walk_pages(store, 1, states=None) == ["z-3", "z-2", "z-1", "z-0"]
