"""The runner's side of the host's model gateway: an SDK HTTP client on its unix socket.

When the host serves the session a gateway (the runner setting ``gateway``), a provider
calls its model through it: no key in the runner, no network needed. Unix socket paths
are limited to 108 bytes, so the socket is reached through an open descriptor of its
directory (``/proc/self/fd/N/model.sock``), however deep the session directory lies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import httpx2

from cronbox_shared.sessiondb import GATEWAY_ERROR_TYPE, GATEWAY_ROWS_HEADER
from cronbox_shared.settings import RunnerSettings

GATEWAY_URL = "http://model-gateway"
"""The base URL a provider's SDK is given; the host forwards to the profile's own."""
PLACEHOLDER_KEY = "held-by-the-host"


def gateway_transport(settings: RunnerSettings) -> httpx2.AsyncHTTPTransport | None:
    """A transport to the session's gateway socket; None when the host serves none."""
    if not settings.gateway:
        return None
    path = Path(settings.session_dir) / settings.gateway
    # Kept open for the process's life: the runner exits when idle.
    fd = os.open(path.parent, os.O_RDONLY)
    return httpx2.AsyncHTTPTransport(uds=f"/proc/self/fd/{fd}/{path.name}")


def rows_header(row_ids: Sequence[str]) -> dict[str, str]:
    """The header that names the rows a model call is for (the gateway charges them)."""
    return {GATEWAY_ROWS_HEADER: ",".join(row_ids)} if row_ids else {}


def refusal(error: object) -> str | None:
    """The gateway's own reason when it refused the call (a budget used up), else None."""
    if isinstance(error, dict) and error.get("type") == GATEWAY_ERROR_TYPE:
        message = error.get("message")
        return str(message) if message else None
    return None
