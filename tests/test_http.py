"""The HTTP API, driven with a real HTTP client against a real host on an ephemeral port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest
from fastapi.routing import APIRoute

from cronbox_shared.errors import InsecureBind, TaskNotFound
from cronbox_shared.models import RunOutcome
from cronbox_shared.timeutil import ManualClock, fmt
from host.api_process import API_NICENESS
from host.daemon import run_host
from host.http import Api, LocalHost, build_app
from host.metrics import Metrics
from host.service import Cronbox
from host.sweep import Sweeper
from host.writer import Writer
from tests.cli_harness import cli_for
from tests.hosting import (
    api_processes,
    base_url,
    ephemeral_socket,
    make_settings,
    process_gone,
    running_host,
    sweep_held,
    unless_locked,
    wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
KEY = "s3cret-key"


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


@dataclass
class Host:
    """A running host and a client that records every answer (for the OpenAPI check)."""

    store: Cronbox
    sweeper: Sweeper
    client: httpx2.AsyncClient
    seen: list[tuple[str, str, int, Any]] = field(default_factory=list)

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        response = await self.client.request(method, path, **kwargs)
        body = response.json() if response.headers.get("content-type", "").startswith(
            "application/json"
        ) else response.text  # fmt: skip
        self.seen.append((method, response.request.url.path, response.status_code, body))
        return response


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock) as sweeper,
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        yield Host(store, sweeper, client)


def cli_json(home: Path, *args: str) -> Any:
    result = cli_for(home)(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- health, version, metrics ---------------------------------------------------------------


async def test_health_reports_the_sweep_and_the_pool(host: Host) -> None:
    await wait_for(lambda: host.sweeper.last_pass_at)
    response = await host.call("GET", "/health")
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "ok"
    assert report["live_runners"] == 0
    assert report["pool_size"] == 5
    assert report["last_sweep"] is not None
    assert report["sweep_lag_seconds"] >= 0
    assert report["uptime_seconds"] >= 0


async def test_version_names_cronbox_python_and_the_runtime(host: Host) -> None:
    response = await host.call("GET", "/version")
    assert response.status_code == 200
    report = response.json()
    assert report["runtime"] == "process"
    assert report["engine"] is None
    assert report["python"].startswith("3.")
    assert report["cronbox"]


async def test_health_is_503_once_no_pass_completed_within_three_sweep_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    settings = make_settings(tmp_path / "home", sweep_interval=60.0)
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock, clock=clock) as sweeper,
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        await wait_for(lambda: sweeper.last_pass_at)
        # No pass completes while the clock moves (a pass the host's own start-up work
        # woke would, otherwise): the sweep is stuck, as a 503 reports.
        async with sweep_held(sweeper, monkeypatch):
            clock.advance(179)
            assert (await client.get("/health")).status_code == 200
            clock.advance(2)
            stalled = await client.get("/health")
            assert stalled.status_code == 503
            assert stalled.json()["status"] == "stalled"
            assert stalled.json()["sweep_lag_seconds"] == 181
        # The pass completes: healthy again.
        await wait_for(lambda: sweeper.last_pass_at == clock.now())
        assert (await client.get("/health")).status_code == 200


# --- the API key ------------------------------------------------------------------------------


async def test_with_an_api_key_every_api_request_needs_it_and_probes_stay_open(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home", api_key=KEY)
    Cronbox.from_settings(settings).create_session("alpha")
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock),
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": KEY + "x"}):
            for method, path in (("GET", "/api/sessions"), ("GET", "/api/nowhere"),
                                 ("POST", "/api/tasks")):  # fmt: skip
                refused = await client.request(method, path, headers=headers)
                assert refused.status_code == 401
                assert "x-api-key" in refused.json()["error"]
        allowed = await client.get("/api/sessions", headers={"x-api-key": KEY})
        assert allowed.status_code == 200
        assert [s["name"] for s in allowed.json()] == ["alpha"]
        for path in ("/health", "/version", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status_code == 200
        doc = (await client.get("/openapi.json")).json()
        assert doc["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "x-api-key"
        assert "401" in doc["paths"]["/api/tasks"]["get"]["responses"]
        assert "security" not in doc["paths"]["/health"]["get"]


async def test_a_non_loopback_address_without_an_api_key_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", http_host="0.0.0.0", http_port=8377)
    with pytest.raises(InsecureBind, match="CRONBOX_API_KEY"):
        await run_host(settings)
    assert not (tmp_path / "home" / "host.lock").exists()


def test_cronbox_run_on_a_public_address_without_a_key_says_so_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_HTTP_HOST", "192.0.2.10")
    monkeypatch.delenv("CRONBOX_API_KEY", raising=False)
    result = cli_for(tmp_path / "home")("run")
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: CRONBOX_HTTP_HOST 192.0.2.10 is reachable from other machines")


# --- reads: the same shapes as the CLI's --json ----------------------------------------------


async def test_reads_return_exactly_what_the_cli_prints_with_json(host: Host) -> None:
    home = host.store.home
    session = host.store.create_session("alpha")
    host.store.schedule_task(session.id, {"taskId": "daily", "prompt": "p", "recurrence": "@daily"})
    soon = fmt(host.store.now() + timedelta(seconds=1))
    host.store.schedule_task(session.id, {"taskId": "once", "prompt": "ping", "processAfter": soon})
    await wait_for(lambda: [r for r in host.store.runs_for("once") if r.outcome])
    await wait_for(lambda: len(host.store.conversation(session.id)) >= 2)
    # The runner has stopped, idle: the host writes nothing more (last_active_at) between
    # the API's answer and the CLI's.
    await wait_for(lambda: not host.sweeper.live)

    assert (await host.call("GET", "/api/sessions")).json() == cli_json(home, "session", "list")
    assert (await host.call("GET", "/api/tasks")).json() == cli_json(home, "task", "list")
    assert (await host.call("GET", "/api/tasks", params={"status": "all"})).json() == cli_json(
        home, "task", "list", "--all"
    )
    completed = await host.call("GET", "/api/tasks", params={"status": "completed"})
    assert [t["id"] for t in completed.json()] == ["once"]
    mine = await host.call("GET", "/api/tasks", params={"session": "alpha", "status": "all"})
    assert mine.json() == cli_json(home, "task", "list", "alpha", "--all")
    [daily] = [t for t in cli_json(home, "task", "list") if t["id"] == "daily"]
    assert (await host.call("GET", "/api/tasks/daily")).json() == daily
    runs = (await host.call("GET", "/api/tasks/once/runs")).json()
    history = (await host.call("GET", "/api/tasks/once/history")).json()
    assert history == cli_json(home, "task", "history", "once")
    assert runs == history["runs"]
    assert [r["outcome"] for r in runs] == [RunOutcome.OK.value]
    log = await host.call("GET", "/api/sessions/alpha/log", params={"limit": 20})
    assert log.json() == cli_json(home, "log", "alpha")


async def test_list_endpoints_page_like_the_cli_and_link_the_next_page(host: Host) -> None:
    home = host.store.home
    session = host.store.create_session("alpha")
    far = "2031-01-15T09:00:00Z"
    for k in range(5):
        task = {"taskId": f"t{k}", "prompt": "p", "processAfter": far}
        host.store.schedule_task(session.id, task)
    first = await host.call("GET", "/api/tasks", params={"limit": 2})
    assert first.json() == cli_json(home, "task", "list", "--limit", "2")
    pages, link = [first.json()], first.headers.get("link")
    while link is not None:
        target = link.split(">", 1)[0].removeprefix("<")
        assert target.startswith("/api/tasks?")
        page = await host.call("GET", target)
        pages.append(page.json())
        link = page.headers.get("link")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [t for p in pages for t in p] == cli_json(home, "task", "list", "--all")
    after = await host.call("GET", "/api/tasks", params={"after": "nope"})
    assert after.status_code == 404
    too_many = await host.call("GET", "/api/tasks", params={"limit": 1001})
    assert too_many.status_code == 400
    assert too_many.json()["error"].startswith("limit")


# --- writes: the same services as the CLI ----------------------------------------------------


async def test_writes_schedule_change_and_run_tasks_through_the_service(host: Host) -> None:
    host.store.create_session("alpha")
    created = await host.call(
        "POST", "/api/tasks",
        json={"session": "alpha", "taskId": "t1", "prompt": "report", "recurrence": "0 9 * * *"},
    )  # fmt: skip
    assert created.status_code == 201
    assert created.json()["recurrence_words"] == "At 09:00"
    again = await host.call(
        "POST", "/api/tasks",
        json={"session": "alpha", "taskId": "t1", "prompt": "report", "recurrence": "0 9 * * *"},
    )  # fmt: skip
    assert again.status_code == 201  # the same id while live: the same task, once
    assert len(host.store.list_tasks()) == 1

    paused = await host.call("POST", "/api/tasks/t1/pause")
    assert (paused.status_code, paused.json()["status"]) == (200, "paused")
    resumed = await host.call("POST", "/api/tasks/t1/resume")
    assert resumed.json()["status"] == "pending"
    patched = await host.call("PATCH", "/api/tasks/t1", json={"prompt": "new", "timeout": 30})
    assert (patched.status_code, patched.json()["prompt"]) == (200, "new")
    queued = await host.call("POST", "/api/tasks/t1/run")
    assert queued.status_code == 202
    assert queued.json()["series_id"] == "t1"
    await wait_for(lambda: [r for r in host.store.runs_for("t1") if r.outcome])
    cancelled = await host.call("POST", "/api/tasks/t1/cancel")
    assert cancelled.json()["status"] == "cancelled"
    actions = [e.action for e in host.store.audit_entries() if e.actor == "http"]
    assert actions == ["task.cancel", "task.run", "task.update", "task.resume", "task.pause",
                       "task.schedule"]  # fmt: skip


async def test_a_message_sent_over_http_is_answered(host: Host) -> None:
    host.store.create_session("alpha")
    sent = await host.call("POST", "/api/sessions/alpha/messages", json={"text": "hello"})
    assert sent.status_code == 201
    body = sent.json()
    assert (body["session"], body["kind"], body["content"]["text"]) == ("alpha", "chat", "hello")

    def answered() -> list[Any] | None:
        log = unless_locked(lambda: host.store.conversation("alpha"))
        return [e for e in log or [] if e.in_reply_to == body["id"]]

    await wait_for(answered)


# --- errors: one sentence, nothing written ---------------------------------------------------


async def test_bad_input_is_one_sentence_with_the_right_status_and_writes_nothing(
    host: Host,
) -> None:
    host.store.create_session("alpha")
    host.store.schedule_task("alpha", {"taskId": "gone", "prompt": "p", "recurrence": "@daily"})
    host.store.cancel_task("gone")
    audit = host.store.audit_entries()
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/api/tasks/nope", {}, 404, str(TaskNotFound("nope"))),
        ("POST", "/api/tasks/nope/pause", {}, 404, str(TaskNotFound("nope"))),
        ("GET", "/api/sessions/nobody/log", {}, 404, 'no session named or with id "nobody"'),
        ("POST", "/api/tasks", {"json": {"session": "alpha", "prompt": "p",
                                          "recurrence": "61 * * * *"}}, 400, "minute 61"),
        ("POST", "/api/tasks", {"json": {"session": "alpha", "prompt": "p",
                                          "processAfter": "2020-01-01T00:00:00Z"}}, 400, "past"),
        ("POST", "/api/tasks", {"json": {"prompt": "p", "recurrence": "@daily"}}, 400, "session"),
        ("POST", "/api/tasks", {"json": {"session": "alpha", "prompt": 5,
                                          "recurrence": "@daily"}}, 400, "prompt"),
        ("POST", "/api/tasks", {"content": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/api/tasks", {"json": ["a list"]}, 400, "JSON object"),
        ("POST", "/api/tasks", {"json": {"session": "alpha", "taskId": "gone", "prompt": "p",
                                          "recurrence": "@daily"}}, 409, "already used"),
        ("POST", "/api/tasks/gone/pause", {}, 409, "no live occurrence"),
        ("PATCH", "/api/tasks/gone", {"json": {}}, 400, "nothing to update"),
        ("PATCH", "/api/tasks/gone", {"json": {"bogus": 1}}, 400, "bogus"),
        ("POST", "/api/sessions/alpha/messages", {"json": {"text": "  "}}, 400, "empty"),
        ("GET", "/api/tasks", {"params": {"status": "sideways"}}, 400, "status"),
        ("GET", "/api/tasks/gone/runs", {"params": {"limit": 0}}, 400, "limit"),
        ("GET", "/api/nowhere", {}, 404, "no such endpoint"),
        ("DELETE", "/api/tasks/gone", {}, 405, "DELETE is not allowed"),
    ]  # fmt: skip
    for method, path, kwargs, code, words in cases:
        response = await host.call(method, path, **kwargs)
        assert response.status_code == code, (method, path, response.text)
        body = response.json()
        assert list(body) == ["error"]
        assert words in body["error"], (path, body)
        assert "\n" not in body["error"]
    assert host.store.audit_entries() == audit
    assert [t.id for t in host.store.list_tasks(include_all=True)] == ["gone"]


async def test_writes_are_refused_with_503_once_shutdown_begins(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    store.create_session("alpha")
    sock = ephemeral_socket()
    async with running_host(settings, http_socket=sock) as sweeper:
        api = Api(store, Writer(), settings, LocalHost(store, sweeper, settings, Metrics()))
        api.accepting_writes = False
        transport = httpx2.ASGITransport(app=build_app(api))
        async with httpx2.AsyncClient(transport=transport, base_url="http://api") as client:
            refused = await client.post("/api/sessions/alpha/messages", json={"text": "hi"})
            assert refused.status_code == 503
            assert "shutting down" in refused.json()["error"]
            assert (await client.get("/api/sessions")).status_code == 200
    assert store.conversation("alpha") == []


# --- the OpenAPI document matches the handlers -----------------------------------------------


def _template_of(path: str, templates: list[str]) -> str:
    parts = path.strip("/").split("/")
    for template in templates:
        pattern = template.strip("/").split("/")
        if len(pattern) == len(parts) and all(
            p.startswith("{") or p == q for p, q in zip(pattern, parts, strict=True)
        ):
            return template
    raise AssertionError(f"{path} is not in the OpenAPI document")


async def test_the_openapi_document_lists_every_handler_and_describes_every_answer(
    host: Host,
) -> None:
    host.store.create_session("alpha")
    task = {"session": "alpha", "taskId": "t1", "prompt": "p", "recurrence": "@daily"}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health", {}), ("GET", "/version", {}), ("GET", "/metrics", {}),
        ("GET", "/api/sessions", {}), ("GET", "/api/sessions/alpha/log", {}),
        ("POST", "/api/sessions/alpha/messages", {"json": {"text": "hi"}}),
        ("POST", "/api/sessions/alpha/messages", {"json": {}}),
        ("POST", "/api/tasks", {"json": task}), ("POST", "/api/tasks", {"json": {}}),
        ("GET", "/api/tasks", {}), ("GET", "/api/tasks", {"params": {"status": "x"}}),
        ("GET", "/api/tasks/t1", {}), ("GET", "/api/tasks/t2", {}),
        ("PATCH", "/api/tasks/t1", {"json": {"prompt": "q"}}),
        ("PATCH", "/api/tasks/t1", {"json": {"recurrence": "@every 1s"}}),
        ("POST", "/api/tasks/t1/pause", {}), ("POST", "/api/tasks/t1/pause", {}),
        ("POST", "/api/tasks/t1/resume", {}), ("POST", "/api/tasks/t1/run", {}),
        ("GET", "/api/tasks/t1/runs", {}), ("POST", "/api/tasks/t1/cancel", {}),
        ("POST", "/api/tasks/t1/cancel", {}), ("POST", "/api/tasks/t2/run", {}),
        ("GET", "/api/scheduler", {}),
        ("POST", "/api/scheduler", {"json": {"action": "trigger", "job": "stale-check"}}),
        ("POST", "/api/scheduler", {"json": {"action": "trigger", "job": "nope"}}),
        ("POST", "/api/scheduler", {"json": {"action": "later"}}),
    ]  # fmt: skip
    for method, path, kwargs in calls:
        await host.call(method, path, **kwargs)
    assert {code for *_, code, _ in host.seen} >= {200, 201, 202, 400, 404, 409}
    doc = (await host.call("GET", "/openapi.json")).json()

    settings = make_settings(Path())
    local = LocalHost(host.store, host.sweeper, settings, Metrics())
    app = build_app(Api(host.store, Writer(), settings, local))
    handled = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == handled

    templates = list(doc["paths"])
    for method, path, code, body in host.seen:
        if path in ("/openapi.json", "/api/nowhere"):
            continue
        operation = doc["paths"][_template_of(path, templates)].get(method.lower())
        if operation is None:
            assert code == 405
            continue
        assert str(code) in operation["responses"], (method, path, code)
        content = operation["responses"][str(code)].get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is not None:
            jsonschema.validate(body, {**schema, "components": doc["components"]})


async def test_cronbox_run_serves_the_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Cronbox(home).create_session("alpha")
    probe = ephemeral_socket()
    port = probe.getsockname()[1]
    probe.close()  # a free port for the real `cronbox run` to bind
    env = {**os.environ, "TZ": "UTC", "CRONBOX_HOME": str(home), "CRONBOX_HTTP_PORT": str(port),
           "CRONBOX_API_KEY": KEY}  # fmt: skip
    log = (tmp_path / "host.log").open("wb")
    proc = await anyio.open_process(
        [sys.executable, "-m", "host.cli", "run"], env=env, stdout=log, stderr=log
    )
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def healthy() -> httpx2.Response:
                while True:
                    try:
                        response = await client.get("/health")
                    except httpx2.TransportError:
                        await anyio.sleep(0.05)
                        continue
                    if response.status_code == 200:
                        return response
                    await anyio.sleep(0.05)

            with anyio.fail_after(30):
                await healthy()
            sessions = await client.get("/api/sessions", headers={"x-api-key": KEY})
            assert [s["name"] for s in sessions.json()] == ["alpha"]

            def published() -> Any:
                try:
                    return json.loads((home / "host.json").read_text()).get("http")
                except (OSError, ValueError):
                    return None

            assert await wait_for(published) == f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    # The server closes last, so the host's last word comes after it.
    lines = [ln for ln in (tmp_path / "host.log").read_text().splitlines() if ln.strip()]
    assert "cronbox host stopped" in lines[-1]


async def test_the_api_is_served_by_a_child_process_started_again_when_it_dies(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    Cronbox.from_settings(settings).create_session("alpha")
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock),
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        [child] = await wait_for(lambda: api_processes(os.getpid()))
        assert (await client.get("/api/sessions")).status_code == 200
        os.kill(child, signal.SIGKILL)
        [again] = await wait_for(lambda: [p for p in api_processes(os.getpid()) if p != child])
        # The same port, held by the host all along: the new process serves it.
        assert [s["name"] for s in (await client.get("/api/sessions")).json()] == ["alpha"]
        assert (await client.get("/health")).status_code == 200
    assert process_gone(again)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling class")
async def test_the_api_process_takes_only_the_cpu_the_sweep_leaves(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    sock = ephemeral_socket()
    async with running_host(settings, http_socket=sock):
        [child] = await wait_for(lambda: api_processes(os.getpid()))
        assert os.sched_getscheduler(child) == os.SCHED_IDLE
        assert os.sched_getscheduler(os.getpid()) == os.SCHED_OTHER  # the host keeps its own
        ours = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert os.getpriority(os.PRIO_PROCESS, child) == min(19, ours + API_NICENESS)


async def test_the_api_process_does_not_outlive_a_host_that_is_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    probe = ephemeral_socket()
    port = probe.getsockname()[1]
    probe.close()
    env = {**os.environ, "TZ": "UTC", "CRONBOX_HOME": str(home), "CRONBOX_HTTP_PORT": str(port)}
    proc = await anyio.open_process(
        [sys.executable, "-m", "host.cli", "run"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        [child] = await wait_for(lambda: api_processes(proc.pid))
        proc.kill()
        await proc.wait()
        await wait_for(lambda: process_gone(child))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
