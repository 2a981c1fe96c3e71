"""The model gateway: secrets stay in the host (SPEC §8).

Each session whose agent calls a model API gets an HTTP server on a unix socket inside
its directory (``gateway/model.sock``, mounted into its container). The runner's SDK
client talks to that socket; the gateway adds the key from the profile's
``api_key_env``, forwards the call to the profile's ``base_url`` only, caps the request
size, passes streamed answers on as they come, counts the tokens the vendor reports
(in the JSON answer or the stream's events: figures the runner cannot forge) and refuses
calls once the session has used its ``daily_token_budget`` for the day (UTC).

The counts are written to ``cronbox.db`` (through the host's one writer) before the
answer goes back to the runner: the session's day total, which the budget is checked
against, so a restarted host still knows what was spent; and each run's share, for the
rows the runner names in the ``x-cronbox-rows`` header (see
:meth:`~host.service.Cronbox.charge_tokens` for why that header cannot be abused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cronbox_shared.agents import AgentProfile
from cronbox_shared.sessiondb import (
    GATEWAY,
    GATEWAY_ERROR_TYPE,
    GATEWAY_ROWS_HEADER,
    GATEWAY_SOCKET,
)
from host.store.records import TokenCount
from host.writer import Writer, read

if TYPE_CHECKING:
    from host.service import Cronbox

log = logging.getLogger("cronbox.gateway")

MAX_REQUEST_BYTES = 4 * 1024 * 1024
VENDOR_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "claude-code": "https://api.anthropic.com",
}
# The one call each provider makes; nothing else is forwarded.
ROUTES = {"openai": "/chat/completions", "anthropic": "/v1/messages", "claude-code": "/v1/messages"}
PASSED_HEADERS = ("content-type", "accept", "anthropic-version", "anthropic-beta")
UPSTREAM_TIMEOUT = 600.0
MAX_ROWS = 64
"""Rows one call may be charged to (a batch is far smaller); the rest are ignored."""
MAX_ROW_ID = 200

Resolve = Callable[[], tuple[AgentProfile, str | None]]
"""The session's current profile and key (read again for every call)."""


def gateway_error(status: int, message: str) -> Response:
    """An error both SDKs read: ``{"error": {"message": ...}}``."""
    body = {"type": "error", "error": {"type": GATEWAY_ERROR_TYPE, "message": message}}
    return JSONResponse(body, status_code=status)


USAGE_KEYS = {"openai": ("prompt_tokens", "completion_tokens")}
ANTHROPIC_USAGE = ("input_tokens", "output_tokens")
"""The Messages API's names, for anthropic and claude-code."""


def usage_counts(provider: str, usage: Any, old: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Input and output tokens of a vendor's ``usage`` object; ``old`` for a count it
    does not give (or gives as something other than a whole number)."""
    if not isinstance(usage, dict):
        return old
    keys = USAGE_KEYS.get(provider, ANTHROPIC_USAGE)
    given = [usage.get(k) for k in keys]
    ok = [g if isinstance(g, int) and not isinstance(g, bool) and g >= 0 else o
          for g, o in zip(given, old, strict=True)]  # fmt: skip
    return ok[0], ok[1]


def usage_of(provider: str, body: bytes) -> TokenCount:
    """Input and output tokens a vendor's JSON response reports (none when it reports none)."""
    try:
        data = json.loads(body)
    except ValueError:
        return TokenCount()
    given = usage_counts(provider, data.get("usage") if isinstance(data, dict) else None)
    return TokenCount(input_tokens=given[0], output_tokens=given[1])


class StreamUsage:
    """Input and output tokens a vendor reports in a stream of server-sent events.

    Anthropic sends the input in ``message_start`` and the running output total in each
    ``message_delta``; OpenAI sends both in one last chunk (``stream_options.
    include_usage``, which the gateway sets, so no runner streams uncounted).
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.tokens = (0, 0)
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return  # "[DONE]", or not ours to judge
        if not isinstance(event, dict):
            return
        if self.provider == "openai":
            self.tokens = usage_counts("openai", event.get("usage"), self.tokens)
        elif event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self.tokens = usage_counts(self.provider, event["message"].get("usage"))
        elif event.get("type") == "message_delta":
            # A running total: it replaces what message_start said.
            self.tokens = usage_counts(self.provider, event.get("usage"), self.tokens)


def counted_request(provider: str, body: bytes) -> bytes:
    """The request as forwarded: an OpenAI stream always asks for its usage chunk."""
    if provider != "openai" or b'"stream"' not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or data.get("stream") is not True:
        return body
    options = data.get("stream_options")
    data["stream_options"] = {**(options if isinstance(options, dict) else {}),
                              "include_usage": True}  # fmt: skip
    return json.dumps(data).encode()


def charged_rows(header: str | None) -> list[str]:
    """The row ids a runner named for a call (untrusted: capped in number and length)."""
    ids = [part.strip() for part in (header or "").split(",")]
    return [i for i in ids if 0 < len(i) <= MAX_ROW_ID][:MAX_ROWS]


def budget_refusal(budget: int, used: TokenCount) -> str:
    """Why a call is refused once the session's daily budget is used up."""
    return (
        f"the session's daily token budget of {budget} tokens is used up "
        f"({used.total} used today, UTC); raise daily_token_budget in agents.toml "
        "or wait for tomorrow"
    )


def key_headers(provider: str, key: str | None) -> dict[str, str]:
    if not key:
        return {}
    if provider != "openai":  # the Messages API, for anthropic and claude-code
        return {"x-api-key": key}
    return {"authorization": f"Bearer {key}"}


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # older uvicorn
        return

    def capture_signals(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()


class SessionGateway:
    """One session's gateway: a uvicorn app on its socket."""

    def __init__(self, session_id: str, session_dir: Path, resolve: Resolve,
                 store: Cronbox, writer: Writer) -> None:  # fmt: skip
        self.session_id = session_id
        self.path = session_dir / GATEWAY / GATEWAY_SOCKET
        self.resolve = resolve
        self.store = store
        self.writer = writer
        self.client = httpx2.AsyncClient(timeout=UPSTREAM_TIMEOUT, trust_env=False)
        app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["POST"])])
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
        self._server = _Server(config)
        self._inode = -1

    def bind(self) -> socket.socket:
        self.path.parent.mkdir(exist_ok=True)
        self.path.parent.chmod(0o755)
        if self.path.is_socket():
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A path relative to its directory: socket paths are limited to 108 bytes.
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            sock.bind(f"/proc/self/fd/{fd}/{GATEWAY_SOCKET}")
        finally:
            os.close(fd)
        # The container's user (another uid when the host is root) must connect.
        self.path.chmod(0o666)
        sock.listen(64)  # calls made before uvicorn is up wait in the backlog
        self._inode = self.path.stat().st_ino
        return sock

    async def serve(self, sock: socket.socket) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._server.serve(sockets=[sock])
        finally:
            sock.close()
            await self.client.aclose()
            # Only our own socket: a successor may have bound the path since.
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()

    def close(self) -> None:
        self._server.should_exit = True

    async def _charge(self, rows: list[str], status: int, tokens: TokenCount) -> None:
        await self.writer(self.store.charge_tokens, self.session_id, rows, tokens)
        log.info("session %s: model call %d, %d/%d tokens", self.session_id, status,
                 tokens.input_tokens, tokens.output_tokens)  # fmt: skip

    async def _relay(
        self, upstream: httpx2.Response, provider: str, rows: list[str]
    ) -> AsyncIterator[bytes]:
        """Pass a streamed answer on as it comes, counting the tokens it reports.

        The last chunk is held back until the tokens are recorded: as for a whole answer,
        the runner cannot have all of it (and settle its rows) before they are charged.
        """
        usage = StreamUsage(provider)
        held: bytes | None = None
        try:
            async for chunk in upstream.aiter_bytes():
                usage.feed(chunk)
                if held is not None:
                    yield held
                held = chunk
        except httpx2.HTTPError as exc:
            log.warning("session %s: the model's stream broke off: %s", self.session_id, exc)
        finally:
            # Also when the runner hangs up: what the vendor reported is counted.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                tokens = TokenCount(input_tokens=usage.tokens[0], output_tokens=usage.tokens[1])
                await self._charge(rows, upstream.status_code, tokens)
        if held is not None:
            yield held

    async def forward(self, request: Request) -> Response:
        profile, key = await anyio.to_thread.run_sync(self.resolve)
        provider = profile.provider
        route = ROUTES.get(provider)
        if route is None or request.url.path != route:
            return gateway_error(404, f"the model gateway forwards only POST {route}")
        body = await request.body()
        if len(body) > MAX_REQUEST_BYTES:
            return gateway_error(413, f"the model request is over {MAX_REQUEST_BYTES} bytes")
        budget = profile.daily_token_budget
        if budget is not None:
            # Calls already under way may take the day past it; none starts beyond it.
            used = await read(self.store.tokens_today, self.session_id)
            if used.total >= budget:
                return gateway_error(403, budget_refusal(budget, used))
        rows = charged_rows(request.headers.get(GATEWAY_ROWS_HEADER))
        base = (profile.base_url or VENDOR_URLS[provider]).rstrip("/")
        headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED_HEADERS}
        headers.update(key_headers(provider, key))
        outgoing = self.client.build_request(
            "POST", base + route, content=counted_request(provider, body), headers=headers
        )
        try:
            upstream = await self.client.send(outgoing, stream=True)
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                return StreamingResponse(
                    self._relay(upstream, provider, rows), status_code=upstream.status_code,
                    media_type="text/event-stream", headers={"cache-control": "no-cache"},
                )  # fmt: skip
            try:
                await upstream.aread()
            finally:
                await upstream.aclose()
        except httpx2.HTTPError as exc:
            return gateway_error(502, f"the model API at {base} could not be reached: {exc}")
        tokens = usage_of(provider, upstream.content)
        # Recorded before the runner has its answer, so before it can settle the rows.
        await self._charge(rows, upstream.status_code, tokens)
        return Response(
            upstream.content, status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )  # fmt: skip


class Gateways:
    """The gateways of every session that uses one, for as long as the host runs."""

    def __init__(self, store: Cronbox, writer: Writer) -> None:
        self.store = store
        self.writer = writer
        self.running: dict[str, SessionGateway] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`close`; each gateway finishes its open calls first."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._closed.wait()
            finally:
                # Also when cancelled: each server is shielded and ends only when told.
                for gateway in self.running.values():
                    gateway.close()
        self._tg = None

    def close(self) -> None:
        self._closed.set()

    async def ensure(self, session_id: str, session_dir: Path, resolve: Resolve) -> str:
        """The session's gateway socket, relative to its directory, started if need be."""
        gateway = self.running.get(session_id)
        if gateway is None or not gateway.path.is_socket():
            if self._tg is None:
                raise RuntimeError("the model gateways are not running")
            gateway = SessionGateway(session_id, session_dir, resolve, self.store, self.writer)
            sock = await anyio.to_thread.run_sync(gateway.bind)
            old = self.running.get(session_id)
            if old is not None:
                old.close()
            self.running[session_id] = gateway
            self._tg.start_soon(gateway.serve, sock)
        return f"{GATEWAY}/{GATEWAY_SOCKET}"
