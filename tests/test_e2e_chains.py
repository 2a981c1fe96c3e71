"""End to end: chains and approval gates with a real host, real runner subprocesses, the
CLI, the HTTP API and a real webhook receiver."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import MessageKind, MessageStatus, RunOutcome
from cronbox_shared.timeutil import ManualClock, SystemClock, fmt, parse_utc
from host.config import Settings
from host.service import Cronbox
from host.store.records import Run
from tests.cli_harness import as_json, cli_for, ok
from tests.hosting import base_url, ephemeral_socket, make_settings, replies, running_host, wait_for
from tests.test_e2e_policies import FAILING_GATE
from tests.test_webhook import receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
KEY = "s3cret-key"


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


def hosted(tmp_path: Path, session: str, **overrides: Any) -> tuple[Settings, Cronbox, str]:
    """Settings for a host on a fresh home, its service, and one session's id."""
    settings = make_settings(tmp_path / "home", **overrides)
    store = Cronbox.from_settings(settings)
    return settings, store, store.create_session(session).id


def finished_runs(store: Cronbox, task: str) -> list[Run]:
    return [r for r in reversed(store.runs_for(task)) if r.outcome is not None]


def status_of(store: Cronbox, task: str, status: MessageStatus) -> bool:
    return store.get_task(task).status is status


def reply_to(store: Cronbox, session_id: str, message_id: str) -> str:
    [reply] = [r for r in replies(store, session_id) if r["in_reply_to"] == message_id]
    return str(json.loads(reply["content"])["text"])


async def test_a_child_on_ok_runs_once_after_its_parent_and_one_on_error_never(
    tmp_path: Path,
) -> None:
    settings, store, session = hosted(tmp_path, "chain")
    cli = cli_for(settings.home)
    ok(cli("task", "schedule", "chain", "--id", "parent", "--prompt", "count the PRs",
           "--at", "now"))  # fmt: skip
    ok(cli("task", "schedule", "chain", "--id", "report", "--after", "parent", "--on", "ok",
           "--prompt", "report on: {{parent.output}}"))  # fmt: skip
    ok(cli("task", "schedule", "chain", "--id", "alarm", "--after", "parent", "--on", "error",
           "--prompt", "the PR count failed"))  # fmt: skip
    listed = as_json(cli("task", "list", "chain", "--json"))
    assert {t["series_id"]: t["after_task"] for t in listed} == {
        "parent": None, "report": "parent", "alarm": "parent",
    }  # fmt: skip
    table = ok(cli("task", "list", "chain")).stdout
    assert "after parent on ok" in table and "after parent on error" in table
    assert "chained tasks: report, alarm" in ok(cli("task", "show", "parent")).stdout
    async with running_host(settings):
        [child] = await wait_for(lambda: finished_runs(store, "report"))
        await wait_for(lambda: status_of(store, "alarm", MessageStatus.SKIPPED))
    [parent] = finished_runs(store, "parent")
    assert (parent.outcome, child.outcome) == (RunOutcome.OK, RunOutcome.OK)
    assert parse_utc(child.started_at or "") >= parse_utc(parent.finished_at or "")
    assert len(store.runs_for("report")) == 1
    assert store.runs_for("alarm") == []
    text = reply_to(store, session, child.message_id)
    assert text == "echo: report on: echo: count the PRs"
    assert store.get_task("report").status is MessageStatus.COMPLETED


async def test_a_child_on_error_runs_after_a_failed_parent(tmp_path: Path) -> None:
    settings, store, session = hosted(tmp_path, "chain")
    store.schedule_task(session, {"taskId": "feed", "prompt": "read the feed",
                                  "processAfter": "now", "script": FAILING_GATE})  # fmt: skip
    store.schedule_task(session, {"taskId": "alarm", "prompt": "the feed failed",
                                  "afterTask": "feed", "afterOutcome": "error"})  # fmt: skip
    store.schedule_task(session, {"taskId": "digest", "prompt": "digest",
                                  "afterTask": "feed"})  # fmt: skip
    async with running_host(settings):
        [alarm] = await wait_for(lambda: finished_runs(store, "alarm"))
        await wait_for(lambda: status_of(store, "digest", MessageStatus.SKIPPED))
    assert finished_runs(store, "feed")[0].outcome is RunOutcome.ERROR
    assert alarm.outcome is RunOutcome.OK
    assert store.runs_for("digest") == []


async def test_when_output_contains_fires_only_when_the_parents_output_holds_it(
    tmp_path: Path,
) -> None:
    settings, store, session = hosted(tmp_path, "watch")
    for name, prompt in (("calm", "all systems fine"), ("loud", "ALERT disk full")):
        store.schedule_task(session, {"taskId": name, "prompt": prompt, "processAfter": "now"})
        page = {"taskId": f"page-{name}", "prompt": "page: {{parent.output}}", "afterTask": name,
                "whenOutput": "contains:ALERT"}  # fmt: skip
        store.schedule_task(session, page)
    async with running_host(settings):
        [paged] = await wait_for(lambda: finished_runs(store, "page-loud"))
        await wait_for(lambda: status_of(store, "page-calm", MessageStatus.SKIPPED))
    assert store.runs_for("page-calm") == []
    assert reply_to(store, session, paged.message_id) == "echo: page: echo: ALERT disk full"


async def test_a_child_of_a_recurring_parent_runs_once_per_parent_occurrence(
    tmp_path: Path,
) -> None:
    settings, store, session = hosted(tmp_path, "loop")
    store.schedule_task(session, {"taskId": "tick", "prompt": "tick", "recurrence": "@every 1s",
                                  "processAfter": "now"})  # fmt: skip
    store.schedule_task(session, {"taskId": "tock", "prompt": "tock", "afterTask": "tick"})
    async with running_host(settings):
        await wait_for(lambda: len(finished_runs(store, "tock")) >= 3)
        store.cancel_task("tick", with_children=True)
    ticks = {r.message_id for r in finished_runs(store, "tick")}
    keys = [
        r.chain_key for r in store.inbound_rows(session) if r.series_id == "tock" and r.chain_key
    ]
    assert len(keys) == len(set(keys))  # one run per parent occurrence, never two
    assert set(keys) <= ticks
    assert store.get_task("tock").status is MessageStatus.CANCELLED


async def test_a_cycle_is_refused_at_scheduling_naming_it(tmp_path: Path) -> None:
    cli = cli_for(tmp_path / "home")
    ok(cli("session", "create", "loop"))
    ok(cli("task", "schedule", "loop", "--id", "a", "--prompt", "a", "--at", "+1h"))
    ok(cli("task", "schedule", "loop", "--id", "b", "--prompt", "b", "--after", "a"))
    refused = cli("task", "schedule", "loop", "--id", "a", "--prompt", "a", "--after", "b")
    assert refused.exit_code != 0
    assert "afterTask would make a cycle: a → b → a" in refused.stderr
    assert "Traceback" not in refused.output


async def test_cancelling_a_parent_asks_or_needs_with_children(tmp_path: Path) -> None:
    cli = cli_for(tmp_path / "home")
    ok(cli("session", "create", "c"))
    ok(cli("task", "schedule", "c", "--id", "p", "--prompt", "p", "--at", "+1h"))
    ok(cli("task", "schedule", "c", "--id", "k", "--prompt", "k", "--after", "p"))
    refused = cli("task", "cancel", "p")  # stdin is no terminal: a clear refusal
    assert refused.exit_code != 0
    assert 'task "p" has chained tasks waiting for it (k); cancel with --with-children' in (
        refused.stderr
    )
    assert as_json(cli("task", "list", "c", "--json"))[0]["status"] == "pending"
    ok(cli("task", "cancel", "p", "--with-children"))
    done = {t["series_id"]: t["status"] for t in as_json(cli("task", "list", "--all", "--json"))}
    assert done == {"p": "cancelled", "k": "cancelled"}


async def test_cancelling_a_parent_at_a_terminal_asks_about_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_for(tmp_path / "home")
    ok(cli("session", "create", "c"))
    ok(cli("task", "schedule", "c", "--id", "p", "--prompt", "p", "--at", "+1h"))
    ok(cli("task", "schedule", "c", "--id", "k", "--prompt", "k", "--after", "p"))
    monkeypatch.setattr("host.cli.interactive", lambda: True)
    declined = cli("task", "cancel", "p", input="n\n")
    assert declined.exit_code != 0
    assert "Cancel them too?" in declined.output
    assert "task p was not cancelled" in declined.stderr
    ok(cli("task", "cancel", "p", input="y\n"))
    done = {t["series_id"]: t["status"] for t in as_json(cli("task", "list", "--all", "--json"))}
    assert done == {"p": "cancelled", "k": "cancelled"}


# --- approval gates ------------------------------------------------------------------------


async def test_an_approval_task_waits_runs_after_approve_and_is_rejected_after_reject(
    tmp_path: Path,
) -> None:
    settings, store, session = hosted(tmp_path, "ops")
    cli = cli_for(settings.home)
    for name in ("deploy", "wipe"):
        ok(cli("task", "schedule", "ops", "--id", name, "--prompt", f"{name} prod",
               "--at", "now", "--approval"))  # fmt: skip
    async with running_host(settings) as sweeper:
        await wait_for(lambda: store.awaiting_count() == 2)
        assert sweeper.started_total == 0  # waiting holds no pool slot and wakes no one
        assert "awaiting approval: 2" in ok(cli("status")).stdout
        assert store.runs_for("deploy") == []
        ok(cli("task", "approve", "deploy", "--note", "change 42 is reviewed"))
        [run] = await wait_for(lambda: finished_runs(store, "deploy"))
        ok(cli("task", "reject", "wipe", "--note", "not on a Friday"))
        await wait_for(lambda: finished_runs(store, "wipe"))
    assert run.outcome is RunOutcome.OK
    assert run.decision == "approved"
    assert (run.decided_by or "").startswith("cli")
    assert run.decision_note == "change 42 is reviewed"
    history = as_json(cli("task", "history", "wipe", "--json"))["runs"]
    assert [(h["outcome"], h["decision"], h["decision_note"]) for h in history] == [
        ("rejected", "rejected", "not on a Friday"),
    ]  # fmt: skip
    shown = ok(cli("task", "history", "wipe")).stdout
    assert "rejected by cli" in shown
    assert store.message(session, "wipe").status is MessageStatus.SKIPPED
    notes = [r for r in store.inbound_rows(session) if r.kind is MessageKind.SYSTEM]
    assert any("cronbox task approve deploy" in n.prompt for n in notes)


async def test_an_unanswered_approval_applies_on_timeout_by_the_injected_clock(
    tmp_path: Path,
) -> None:
    clock = ManualClock(SystemClock().now())
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings, clock=clock)
    session = store.create_session("ops").id
    store.schedule_task(session, {"taskId": "nightly", "prompt": "rotate keys",
                                  "recurrence": "@every 1d", "processAfter": fmt(clock.now()),
                                  "approval": True, "approvalTimeout": "1h"})  # fmt: skip
    async with running_host(settings, clock=clock) as sweeper:
        await wait_for(lambda: store.awaiting_count() == 1)
        clock.advance(hours=1, seconds=1)
        sweeper.wake()
        [run] = await wait_for(lambda: finished_runs(store, "nightly"))
    assert (run.outcome, run.decision, run.decided_by) == (RunOutcome.REJECTED, "rejected",
                                                            "timeout")  # fmt: skip
    assert "--on-timeout reject" in (run.decision_note or "")
    nxt = store.get_task("nightly")  # the series goes on
    assert nxt.status is MessageStatus.PENDING
    assert parse_utc(nxt.next_run or "") > clock.now() - timedelta(seconds=1)


async def test_approve_and_reject_over_http_need_the_api_key_and_health_counts_waiting(
    tmp_path: Path,
) -> None:
    settings, store, session = hosted(tmp_path, "ops", api_key=KEY)
    store.schedule_task(session, {"taskId": "ship", "prompt": "ship it", "processAfter": "now",
                                  "approval": True})  # fmt: skip
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock),
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        await wait_for(lambda: store.awaiting_count() == 1)
        health = (await client.get("/health")).json()
        assert health["awaiting_approval"] == 1
        metrics = (await client.get("/metrics")).text
        assert "cronbox_approvals_awaiting 1.0" in metrics
        refused = await client.post("/api/tasks/ship/approve")
        assert refused.status_code == 401
        bad = await client.post("/api/tasks/ship/approve", headers={"x-api-key": KEY},
                                json={"note": "x", "by": "me"})  # fmt: skip
        assert bad.status_code == 400
        assert store.awaiting_count() == 1
        answered = await client.post("/api/tasks/ship/approve", headers={"x-api-key": KEY},
                                     json={"note": "looks good"})  # fmt: skip
        assert answered.status_code == 200, answered.text
        assert answered.json()["series_id"] == "ship"
        [run] = await wait_for(lambda: finished_runs(store, "ship"))
        again = await client.post("/api/tasks/ship/reject", headers={"x-api-key": KEY})
        assert again.status_code == 409
        assert "no occurrence awaiting approval" in again.json()["error"]
        metrics = (await client.get("/metrics")).text
    assert (run.decision, run.decided_by, run.decision_note) == ("approved", "http", "looks good")
    assert 'cronbox_approvals_total{decision="approved"} 1.0' in metrics
    assert "cronbox_approvals_awaiting 0.0" in metrics


async def test_an_awaiting_occurrence_is_announced_on_the_webhook(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    async with receiver() as hook:
        session = store.create_session("ops").id
        store.update_session("ops", webhook=hook.url)
        store.schedule_task(session, {"taskId": "ship", "prompt": "ship release 7",
                                      "processAfter": "now", "approval": True})  # fmt: skip
        async with running_host(settings):
            [notice] = await wait_for(lambda: hook.accepted)
    assert notice["session"] == "ops"
    assert "ship release 7" in notice["text"]
    assert "cronbox task approve ship" in notice["text"]
    assert "/api/tasks/ship/approve" in notice["text"]


async def test_an_agent_action_that_tries_to_approve_is_rejected_and_audited(
    tmp_path: Path,
) -> None:
    settings, store, session = hosted(tmp_path, "ops")
    store.schedule_task(session, {"taskId": "ship", "prompt": "ship", "processAfter": "now",
                                  "approval": True})  # fmt: skip
    directory = store.session_dir(session)
    content: dict[str, Any] = {"action": "approve_task", "taskId": "ship"}
    async with running_host(settings):
        await wait_for(lambda: store.awaiting_count() == 1)
        with sdb.outbound(directory) as out:  # what a hostile runner could write
            sdb.insert_outbound(out, "act-1", MessageKind.SYSTEM, content, fmt(store.now()))
        sdb.ring_doorbell(directory)
        [entry] = await wait_for(
            lambda: [e for e in store.audit_entries(session) if e.action == "outbound.reject"]
        )
    assert entry.detail is not None
    assert entry.detail["action"] == "approve_task"
    assert "an agent cannot approve or reject a task" in entry.detail["reason"]
    assert store.message(session, "ship").status is MessageStatus.AWAITING_APPROVAL
    assert store.runs_for("ship") == []
