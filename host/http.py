"""The host's HTTP API (SPEC §6.3): health, version, metrics, and the service's commands.

Served by ``cronbox run`` from a process of its own (:mod:`host.api_process`), so it
never slows the sweep:

* every read runs in a worker thread drawn from a small limiter of its own;
* every write goes through the API process's one writer, which takes the home's write
  lock like the host's own (:mod:`host.writer`), and wakes the sweep afterwards;
* what only the host knows (health, metrics, the engine, the background jobs) the
  handlers ask through a :class:`~host.api_link.HostLink`:
  :class:`~host.api_link.LocalHost` answers in the host;
* handlers call the same :class:`~host.service.Cronbox` methods as the CLI and return the
  same response models (:mod:`host.views`), so ``cronbox --json`` and the API agree.

Errors are one sentence in ``{"error": ...}``: a ``CronboxError`` keeps its own sentence
and gets 400 (bad input), 404 (unknown session, task or run) or 409 (a state that does
not allow the action); nothing is written for a refused request. With ``CRONBOX_API_KEY``
set every ``/api/`` request needs the ``x-api-key`` header (compared in constant time);
``/health``, ``/version`` and ``/metrics`` stay open for probes and scrapers.
"""

from __future__ import annotations

import hmac
import json
import logging
import platform
import socket
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version as package_version
from typing import Annotated, Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import uvicorn
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import CronboxError, InvalidInput
from cronbox_shared.models import InboundMessage
from cronbox_shared.tasks import (
    OperatorUpdateRequest,
    ScheduleRequest,
    StrictRequest,
    validation_sentence,
)  # fmt: skip
from host.api_link import (
    API_KEY_HEADER,
    HostLink,
    ShuttingDown,
    Unauthorized,
    status_code,
)
from host.api_link import LocalHost as LocalHost  # the host's HostLink, beside the app
from host.config import Settings
from host.metrics import CONTENT_TYPE
from host.service import Cronbox
from host.store.records import MAX_PAGE, PAGE_SIZE, LogEntry, Session, TaskFilter
from host.views import (
    ErrorOut,
    HealthOut,
    HistoryOut,
    JobOut,
    JobTrigger,
    MessageOut,
    RunOut,
    RunQueued,
    TaskOut,
    VersionOut,
)
from host.writer import Writer

log = logging.getLogger("cronbox.http")
P = ParamSpec("P")
T = TypeVar("T")
ACTOR = "http"


@dataclass
class Api:
    """Everything the handlers use: the service, a writer, the settings, the host."""

    store: Cronbox
    writer: Writer
    settings: Settings
    host: HostLink
    accepting_writes: bool = True
    read_limiter: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(DEFAULTS.http_read_threads)
    )

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking read in one of the API's own worker threads."""
        return await anyio.to_thread.run_sync(
            partial(fn, *args, **kwargs), limiter=self.read_limiter
        )

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a write through the API's one writer, then wake the sweep."""
        if not self.accepting_writes:
            raise ShuttingDown
        result = await self.writer(fn, *args, **kwargs)
        await self.host.changed()
        return result


class ScheduleBody(ScheduleRequest):
    """``POST /api/tasks``: a schedule request plus the session it belongs to."""

    session: str


class UpdateBody(OperatorUpdateRequest):
    """``PATCH /api/tasks/{id}``: the fields to change; left out stays, null clears."""

    # The path names the task; the body may repeat it.
    task_id: str | None = Field(default=None, alias="taskId")  # type: ignore[assignment]


class DecisionBody(StrictRequest):
    """``POST /api/tasks/{id}/approve|reject``: an optional note (an empty body: none)."""

    note: str | None = None


class MessageBody(StrictRequest):
    """``POST /api/sessions/{name}/messages``: a chat message for the session's agent."""

    text: str


# Documents the header in the OpenAPI document; the middleware in build_app enforces it
# on every /api/ path, known or not.
ApiKey = Annotated[str | None, Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))]
TaskId = Annotated[str, Path(description="Task id, occurrence id or series id.")]
SessionRef = Annotated[str, Path(description="Session name or id.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]

_TASKS = TypeAdapter(list[TaskOut])


def _next_link(request: Request, **page: Any) -> str:
    """A ``Link`` header value pointing at the next page: this request's query, moved on."""
    following = request.url.include_query_params(**page)
    return f'<{following.path}?{following.query}>; rel="next"'


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": words}
    for code, words in (
        (400, "Bad input, in one sentence; nothing was written"),
        (401, "The x-api-key header is missing or wrong"),
        (404, "No such session, task or run"),
        (409, "The task's state does not allow this"),
        (503, "The host is shutting down"),
    )
}


def _body_schema(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema(by_alias=True)}},
        }
    }


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidInput in one sentence."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body is not valid JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def _cronbox_version() -> str:
    try:
        return package_version("cronbox")
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"


class ApiKeyGuard:
    """Pure ASGI middleware: with an API key set, ``/api/`` paths need ``x-api-key``
    (compared in constant time), whether or not the path exists."""

    def __init__(self, app: ASGIApp, api: Api) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = self.api.settings.api_key
        if wanted and scope["type"] == "http" and scope["path"].startswith("/api/"):
            given = b""
            for name, value in scope["headers"]:
                if name == API_KEY_HEADER.encode():
                    given = value
            if not hmac.compare_digest(given, wanted.encode()):
                refused = JSONResponse({"error": str(Unauthorized())}, status_code=401)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(api: Api) -> FastAPI:
    """The ASGI application over ``api``."""
    app = FastAPI(
        title="cronbox",
        version=_cronbox_version(),
        description="The cronbox host's API: the same commands and shapes as `cronbox --json`.",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(CronboxError)
    async def _cronbox_error(request: Request, exc: CronboxError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status_code(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("HTTP %s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"error": f"the host could not do this ({type(exc).__name__}); its log has the detail"},
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        return JSONResponse({"error": f"{where or 'request'}: {err.get('msg')}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        words = {404: f"no such endpoint {request.url.path}; /openapi.json lists them",
                 405: f"{request.method} is not allowed on {request.url.path}"}  # fmt: skip
        return JSONResponse(
            {"error": words.get(exc.status_code, str(exc.detail))},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    app.add_middleware(ApiKeyGuard, api=api)

    # --- open: probes and scrapers ------------------------------------------------------

    @app.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
    async def health() -> JSONResponse:
        """Whether the sweep is keeping up: 503 when no pass completed within 3 intervals."""
        report, code = await api.host.health()
        return JSONResponse(report.model_dump(mode="json"), status_code=code)

    @app.get("/version", response_model=VersionOut)
    async def version() -> VersionOut:
        """cronbox, Python and runtime versions (and the engine's, with docker)."""
        engine = await api.host.engine()
        return VersionOut(
            cronbox=_cronbox_version(), python=platform.python_version(),
            runtime=api.settings.runtime, engine=engine,
        )  # fmt: skip

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(await api.host.metrics(), media_type=CONTENT_TYPE)

    # --- /api: sessions --------------------------------------------------------------------

    @app.get("/api/sessions", response_model=list[Session], responses=ERRORS)
    async def list_sessions(key: ApiKey = None) -> list[Session]:
        """Every session (as ``cronbox session list --json``)."""
        return await api.read(api.store.list_sessions)

    @app.get("/api/sessions/{session}/log", response_model=list[LogEntry], responses=ERRORS)
    async def session_log(
        session: SessionRef, limit: Limit = 50, key: ApiKey = None
    ) -> list[LogEntry]:
        """A session's conversation, oldest first (as ``cronbox log --json``)."""
        return await api.read(api.store.conversation, session, limit)

    @app.post(
        "/api/sessions/{session}/messages", status_code=201, response_model=MessageOut,
        responses=ERRORS, openapi_extra=_body_schema(MessageBody),
    )  # fmt: skip
    async def send_message(session: SessionRef, request: Request, key: ApiKey = None) -> MessageOut:
        """Send a chat message to the session's agent, due at once (as ``cronbox send``)."""
        body = MessageBody.parse(await json_object(request))
        target = await api.read(api.store.get_session, session)
        message = await api.write(api.store.send_message, target.id, body.text, actor=ACTOR)
        return MessageOut(**message.model_dump(), session=target.name)

    # --- /api: tasks -----------------------------------------------------------------------

    @app.get("/api/tasks", response_model=list[TaskOut], responses=ERRORS)
    async def list_tasks(
        request: Request,
        session: Annotated[str | None, Query(description="Only this session's tasks.")] = None,
        status: Annotated[
            TaskFilter, Query(description="live (default), all, or one state.")
        ] = TaskFilter.LIVE,
        after: Annotated[
            str | None, Query(description="Start after this task (the previous page's last).")
        ] = None,
        limit: Limit = PAGE_SIZE,
        key: ApiKey = None,
    ) -> Response:
        """One page of task series in the order they were scheduled (as ``cronbox task
        list --json``); a ``Link: <…>; rel="next"`` header points at the next page."""

        def rendered() -> tuple[bytes, str | None]:
            page = api.store.task_page(session, states=status.states, after=after, limit=limit)
            return _TASKS.dump_json([TaskOut.of(v) for v in page.rows]), page.next_after

        # Read, shaped and encoded in the worker thread: the loop only sends the bytes.
        body, next_after = await api.read(rendered)
        headers = {}
        if next_after is not None:
            headers["Link"] = _next_link(request, after=next_after, limit=limit)
        return Response(body, media_type="application/json", headers=headers)

    @app.post(
        "/api/tasks", status_code=201, response_model=TaskOut, responses=ERRORS,
        openapi_extra=_body_schema(ScheduleBody),
    )  # fmt: skip
    async def schedule_task(request: Request, key: ApiKey = None) -> TaskOut:
        """Schedule a task (as ``cronbox task schedule``); the same task id again is a no-op."""
        body = ScheduleBody.parse(await json_object(request))
        fields = body.model_dump(by_alias=True, exclude={"session"}, exclude_unset=True)
        schedule = ScheduleRequest.parse(fields)
        view = await api.write(api.store.schedule_task, body.session, schedule, actor=ACTOR)
        return TaskOut.of(view)

    @app.get("/api/tasks/{task}", response_model=TaskOut, responses=ERRORS)
    async def get_task(task: TaskId, key: ApiKey = None) -> TaskOut:
        """One task series."""
        return TaskOut.of(await api.read(api.store.get_task, task))

    @app.patch(
        "/api/tasks/{task}", response_model=TaskOut, responses=ERRORS,
        openapi_extra=_body_schema(UpdateBody),
    )  # fmt: skip
    async def update_task(task: TaskId, request: Request, key: ApiKey = None) -> TaskOut:
        """Change a task (as ``cronbox task update``): a left-out field stays, null clears it."""
        body = UpdateBody.parse(await json_object(request))
        if body.task_id is not None and body.task_id != task:
            raise InvalidInput("taskId in the body differs from the task in the path; drop it")
        changes = body.model_dump(by_alias=True, exclude={"task_id"}, exclude_unset=True)
        if not changes:
            raise InvalidInput(
                "nothing to update; give prompt, processAfter, recurrence, script, timeout, "
                "misfireGrace or timezone"
            )
        request_ = OperatorUpdateRequest.parse({**changes, "taskId": task})
        return TaskOut.of(await api.write(api.store.update_task, request_, actor=ACTOR))

    def _status_route(name: str, fn: Callable[..., Any], doc: str) -> None:
        async def change(task: TaskId, key: ApiKey = None) -> TaskOut:
            return TaskOut.of(await api.write(fn, task, actor=ACTOR))

        change.__doc__ = doc
        app.post(
            f"/api/tasks/{{task}}/{name}", response_model=TaskOut, responses=ERRORS,
            name=f"{name}_task",
        )(change)  # fmt: skip

    _status_route("cancel", api.store.cancel_task, "Cancel a task; a recurring one stops for good.")
    _status_route("pause", api.store.pause_task, "Pause a task; it does not run until resumed.")
    _status_route("resume", api.store.resume_task, "Resume a paused task from its next slot.")

    def _decision_route(name: str, fn: Callable[..., InboundMessage], doc: str) -> None:
        async def decide(task: TaskId, request: Request, key: ApiKey = None) -> TaskOut:
            raw = await request.body()
            body = DecisionBody.parse(await json_object(request)) if raw.strip() else None
            row = await api.write(fn, task, actor=ACTOR, note=body.note if body else None)
            return TaskOut.of(await api.read(api.store.get_task, row.series_id or row.id))

        decide.__doc__ = doc
        app.post(
            f"/api/tasks/{{task}}/{name}", response_model=TaskOut, responses=ERRORS,
            name=f"{name}_task", openapi_extra=_body_schema(DecisionBody),
        )(decide)  # fmt: skip

    _decision_route(
        "approve", api.store.approve_task, "Approve an occurrence awaiting approval: it runs now."
    )
    _decision_route(
        "reject", api.store.reject_task, "Reject an occurrence awaiting approval: it is recorded."
    )

    @app.post("/api/tasks/{task}/run", status_code=202, response_model=RunQueued, responses=ERRORS)
    async def run_task(task: TaskId, key: ApiKey = None) -> RunQueued:
        """Run a task now, once, outside its schedule (as ``cronbox task run``)."""
        row = await api.write(api.store.run_now, task, actor=ACTOR)
        return RunQueued(id=row.id, series_id=row.series_id, process_after=row.process_after)

    @app.get("/api/tasks/{task}/runs", response_model=list[RunOut], responses=ERRORS)
    async def task_runs(
        request: Request,
        response: Response,
        task: TaskId,
        limit: Limit = PAGE_SIZE,
        after: Annotated[
            int | None,
            Query(ge=1, description="Start after this run (the previous page's last): older runs."),
        ] = None,
        key: ApiKey = None,
    ) -> list[RunOut]:
        """A page of a task's past runs, newest first (as ``cronbox task history --json``);
        when older runs follow, a ``Link: <…>; rel="next"`` header points at them."""
        view = await api.read(api.store.get_task, task)
        page = await api.read(partial(api.store.run_page, view.series_id, after=after, limit=limit))
        if page.next_after is not None:
            response.headers["Link"] = _next_link(request, after=page.next_after, limit=limit)
        return [RunOut.of(r) for r in page.rows]

    @app.get("/api/tasks/{task}/history", response_model=HistoryOut, responses=ERRORS)
    async def task_history(task: TaskId, limit: Limit = 50, key: ApiKey = None) -> HistoryOut:
        """A task's past runs with its token totals (as ``cronbox task history --json``)."""
        view = await api.read(api.store.get_task, task)
        runs = await api.read(api.store.runs_for, view.series_id, limit)
        tokens = await api.read(api.store.series_tokens, view.series_id)
        return HistoryOut.of(view.series_id, runs, tokens)

    # --- /api: the host's background jobs ------------------------------------------------

    @app.get("/api/scheduler", response_model=list[JobOut], responses=ERRORS)
    async def list_jobs(key: ApiKey = None) -> list[JobOut]:
        """Each background job: schedule, enabled, running, last run and result, next run."""
        return await api.host.jobs()

    @app.post(
        "/api/scheduler", response_model=JobOut, responses=ERRORS,
        openapi_extra=_body_schema(JobTrigger),
    )  # fmt: skip
    async def trigger_job(request: Request, key: ApiKey = None) -> JobOut:
        """``{"action": "trigger", "job": NAME}`` runs the job now; its state after the run."""
        body = await json_object(request)
        try:
            trigger = JobTrigger.model_validate(body)
        except ValidationError as exc:
            raise validation_sentence(exc) from None
        if not api.accepting_writes:
            raise ShuttingDown
        return await api.host.trigger(trigger.job)

    _finish_document(app, keyed=bool(api.settings.api_key))
    return app


def _finish_document(app: FastAPI, keyed: bool) -> None:
    """Make the generated document say what the handlers do: validation errors answer 400
    with one sentence (not 422), and the API key is required only when one is set."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            for methods in schema.get("paths", {}).values():
                for operation in methods.values():
                    operation.get("responses", {}).pop("422", None)
                    if not keyed:
                        operation.pop("security", None)
                        operation.get("responses", {}).pop("401", None)
            components = schema.get("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if not keyed:
                components.pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- serving --------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the host's staged shutdown owns SIGTERM."""

    @contextmanager
    def capture_signals(self) -> Any:
        yield


class HttpServer:
    """The API served on one socket, stopped by :meth:`close`."""

    def __init__(self, api: Api, sock: socket.socket) -> None:
        self.api = api
        self.sock = sock
        # Accepted connections inherit this; asyncio only sets it itself on sockets made
        # with proto=IPPROTO_TCP, and without it every answer waits ~40 ms (Nagle with
        # delayed ACKs) for the second segment.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = uvicorn.Config(
            build_app(api), lifespan="off", log_config=None, access_log=False,
            timeout_graceful_shutdown=5,
        )  # fmt: skip
        self._server = _Server(config)
        self.closed = anyio.Event()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def serve(self) -> None:
        """Serve until :meth:`close`.

        Shielded: cancelling uvicorn mid-loop skips its own shutdown and leaves the loop
        unable to serve another app, so the server only ends through :meth:`close`.
        """
        try:
            with anyio.CancelScope(shield=True):
                await self._server.serve(sockets=[self.sock])
        finally:
            self.closed.set()
            self.sock.close()

    def stop_writes(self) -> None:
        """Shutdown stage one: refuse changes (503) while reads still answer."""
        self.api.accepting_writes = False

    def close(self, force: bool = False) -> None:
        """Last shutdown stage: stop listening and finish open requests; with ``force``,
        drop them."""
        self._server.should_exit = True
        if force:
            self._server.force_exit = True
