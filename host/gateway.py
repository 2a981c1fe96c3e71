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

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from cronbox_shared.agents import AgentProfile
from cronbox_shared.sessiondb import (
    GATEWAY,
    GATEWAY_SOCKET,
)
from host.store.records import TokenCount
from host.writer import Writer

if TYPE_CHECKING:
    from host.gateway_server import SessionGateway
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
            # The server (uvicorn, starlette, httpx) loads with the first gateway, so a
            # host whose agents call no model API starts without it.
            from host.gateway_server import SessionGateway

            gateway = SessionGateway(session_id, session_dir, resolve, self.store, self.writer)
            sock = await anyio.to_thread.run_sync(gateway.bind)
            old = self.running.get(session_id)
            if old is not None:
                old.close()
            self.running[session_id] = gateway
            self._tg.start_soon(gateway.serve, sock)
        return f"{GATEWAY}/{GATEWAY_SOCKET}"
