"""One session's model gateway server: a starlette app served by uvicorn on the
session's unix socket, forwarding calls upstream with httpx (see :mod:`host.gateway`).

Apart from :mod:`host.gateway` so that these libraries load only once a session first
needs a gateway, not with every host start.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cronbox_shared.sessiondb import (
    GATEWAY,
    GATEWAY_ERROR_TYPE,
    GATEWAY_ROWS_HEADER,
    GATEWAY_SOCKET,
)
from host.gateway import (
    MAX_REQUEST_BYTES,
    PASSED_HEADERS,
    ROUTES,
    UPSTREAM_TIMEOUT,
    VENDOR_URLS,
    Resolve,
    StreamUsage,
    budget_refusal,
    charged_rows,
    counted_request,
    key_headers,
    log,
    usage_of,
)
from host.store.records import TokenCount
from host.writer import Writer, read

if TYPE_CHECKING:
    from host.service import Cronbox


def gateway_error(status: int, message: str) -> Response:
    """An error both SDKs read: ``{"error": {"message": ...}}``."""
    body = {"type": "error", "error": {"type": GATEWAY_ERROR_TYPE, "message": message}}
    return JSONResponse(body, status_code=status)


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
