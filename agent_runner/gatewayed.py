"""The runner's side of the host's model gateway: an SDK HTTP client on its unix socket.

When the host serves the session a gateway (the runner setting ``gateway``), a provider
calls its model through it: no key in the runner, no network needed. Unix socket paths
are limited to 108 bytes, so the socket is reached through an open descriptor of its
directory (``/proc/self/fd/N/model.sock``), however deep the session directory lies.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx2

from cronbox_shared.sessiondb import GATEWAY_ERROR_TYPE, GATEWAY_ROWS_HEADER
from cronbox_shared.settings import RunnerSettings

GATEWAY_URL = "http://model-gateway"
"""The base URL a provider's SDK is given; the host forwards to the profile's own."""
PLACEHOLDER_KEY = "held-by-the-host"


def gateway_socket(settings: RunnerSettings) -> str:
    """The gateway socket's path as this process reaches it (however long the real one)."""
    path = Path(settings.session_dir) / settings.gateway
    # Kept open for the process's life: the runner exits when idle.
    fd = os.open(path.parent, os.O_RDONLY)
    return f"/proc/self/fd/{fd}/{path.name}"


@asynccontextmanager
async def loopback_relay(socket_path: str) -> AsyncIterator[str]:
    """An ``http://127.0.0.1:PORT`` address that relays to the gateway's unix socket.

    For a model client that speaks only TCP (Claude Code's CLI): loopback works in a
    container with network ``none``, and nothing but this process's children can be
    expected there. Relays until the block ends.
    """

    async def relay(client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_unix(socket_path) as upstream:

            async def pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
                try:
                    async for chunk in source:
                        await sink.send(chunk)
                    await sink.send_eof()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(pipe, client, upstream)
                tg.start_soon(pipe, upstream, client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, relay)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


def gateway_transport(settings: RunnerSettings) -> httpx2.AsyncHTTPTransport | None:
    """A transport to the session's gateway socket; None when the host serves none."""
    if not settings.gateway:
        return None
    return httpx2.AsyncHTTPTransport(uds=gateway_socket(settings))


def rows_header(row_ids: Sequence[str]) -> dict[str, str]:
    """The header that names the rows a model call is for (the gateway charges them)."""
    return {GATEWAY_ROWS_HEADER: ",".join(row_ids)} if row_ids else {}


def refusal(error: object) -> str | None:
    """The gateway's own reason when it refused the call (a budget used up), else None."""
    if isinstance(error, dict) and error.get("type") == GATEWAY_ERROR_TYPE:
        message = error.get("message")
        return str(message) if message else None
    return None
