"""``GET /metrics`` after a real scenario: the counts equal the run history exactly."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cronbox_shared.models import RunOutcome
from cronbox_shared.timeutil import ManualClock, SystemClock, fmt, parse_utc
from host.metrics import GATE_ERROR, OUTCOMES, Metrics, outcome_label
from host.service import Cronbox
from host.store.records import Run
from tests.hosting import (
    base_url,
    delivered_seqs,
    ephemeral_socket,
    make_settings,
    replies,
    running_host,
    wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def all_runs(store: Cronbox) -> list[Run]:
    runs: list[Run] = []
    for session in store.list_sessions():
        ids = [row.id for row in store.inbound_rows(session.id)]
        runs += store.runs_of(session.id, ids).values()
    return runs


def test_a_gate_script_failure_has_its_own_outcome_label() -> None:
    base = {"id": 1, "session_id": "s", "message_id": "m", "series_id": None,
            "scheduled_for": None, "started_at": None, "finished_at": None, "tries": 1,
            "output_preview": None}  # fmt: skip
    table = [
        (RunOutcome.OK, None, "ok"),
        (RunOutcome.ERROR, "provider said no", "error"),
        (RunOutcome.ERROR, "gate script exited with status 3", GATE_ERROR),
        (RunOutcome.SKIPPED, None, "skipped"),
        (RunOutcome.MISSED, "missed: 2 h late", "missed"),
        (RunOutcome.TIMEOUT, "timed out", "timeout"),
        (None, None, None),
    ]
    for outcome, error, label in table:
        run = Run.model_validate({**base, "outcome": outcome, "error": error})
        assert outcome_label(run) == label


def test_every_outcome_is_exported_at_zero_before_the_first_run() -> None:
    exported = samples(Metrics().render().decode())
    for outcome in OUTCOMES:
        assert exported[("cronbox_runs_total", (("outcome", outcome),))] == 0


async def test_metrics_after_a_scenario_match_the_run_history(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("alpha", agent="scripted")
    soon = fmt(store.now() + timedelta(seconds=1))
    tasks: dict[str, dict[str, Any]] = {
        "ok": {"prompt": "ping"},
        "error": {"prompt": '{"tool_calls": 5}'},
        "skipped": {"prompt": "p", "script": "echo '{\"wakeAgent\": false}'"},
        "gate": {"prompt": "p", "script": "exit 3"},
        # Its gate outlives the run's one-second timeout: the runner is killed, "timeout".
        "timeout": {"prompt": "p", "script": "sleep 60", "timeout": 1},
    }
    for task_id, fields in tasks.items():
        store.schedule_task(session.id, {"taskId": task_id, "processAfter": soon, **fields})
    # A daily task scheduled three days ago (on a clock set back) with a one-second grace:
    # its latest slot has passed by more than the grace, so it is recorded missed.
    past = Cronbox.from_settings(
        settings, clock=ManualClock(SystemClock().now() - timedelta(days=3))
    )
    past.schedule_task(
        session.id,
        {"taskId": "missed", "prompt": "p", "recurrence": "0 0 * * *", "misfireGrace": 1},
    )
    store.send_message(session.id, "hello")
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock),
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):

        def settled() -> bool:
            runs = all_runs(store)
            finished = {r.series_id or r.message_id for r in runs if r.outcome is not None}
            return set(tasks) | {"missed"} <= finished and len(runs) == len(tasks) + 2

        await wait_for(settled)
        await wait_for(
            lambda: len(delivered_seqs(store, session.id)) == len(replies(store, session.id))
        )
        text = (await client.get("/metrics")).text

    runs = all_runs(store)
    expected = Counter(outcome_label(r) for r in runs if r.outcome is not None)
    assert expected == Counter(
        {"ok": 2, "error": 1, "skipped": 1, "gate_error": 1, "missed": 1, "timeout": 1}
    )
    exported = samples(text)
    for outcome in OUTCOMES:
        assert exported[("cronbox_runs_total", (("outcome", outcome),))] == expected[outcome]
    timed = [r for r in runs if r.outcome is not None and r.started_at is not None]
    assert exported[("cronbox_run_duration_seconds_count", ())] == len(timed)
    gated = [r for r in timed if outcome_label(r) in ("skipped", GATE_ERROR)]
    assert exported[("cronbox_gate_duration_seconds_count", ())] == len(gated)
    starts = exported[("cronbox_runner_starts_total", ())]
    assert starts >= 1
    assert exported[("cronbox_schedule_lag_seconds_count", ())] == starts
    assert exported[("cronbox_sweep_duration_seconds_count", ())] >= 1
    assert exported[("cronbox_pool_in_use", ())] >= 0
    assert exported[("cronbox_pool_waiting", ())] == 0
    assert exported[("cronbox_due_rows", ())] >= 0
    delivered = (("channel", "console"), ("outcome", "delivered"))
    assert exported[("cronbox_deliveries_total", delivered)] == len(replies(store, session.id))
    last_ok = max(r.finished_at or "" for r in runs if r.outcome is RunOutcome.OK)
    assert (
        exported[("cronbox_last_success_timestamp_seconds", ())] == parse_utc(last_ok).timestamp()
    )
    assert not any("task" in k for _, labels in exported for k, _ in labels)
