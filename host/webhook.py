"""The webhook channel: each reply POSTed as JSON to the URL its session names.

* One request per reply, with ``X-Cronbox-Delivery`` (``<session id>:<seq>``, the same on
  every retry, so a receiver can drop a repeat), ``Idempotency-Key`` (``<session id>:<the
  reply's outbound message id>``, likewise, also across a host crash) and, when the
  session names a secret variable, ``X-Cronbox-Signature: sha256=<hex>`` — HMAC-SHA256 of
  ``<X-Cronbox-Timestamp>.<body>`` with the secret read from the host's environment.
* Any 2xx is delivered; anything else, a dropped connection or a timeout is a failure
  the delivery layer records and retries with backoff.
* A circuit breaker per URL: after ``threshold`` consecutive failures it opens, and
  sends are put off (no request, no attempt used) until ``cooldown`` has passed; then one
  probe goes out (half-open); its success closes the circuit, its failure opens it again.
* Ordered: a session's replies go out strictly in seq order; a reply waits while an
  older one is pending (see :class:`host.delivery.Delivery`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from cronbox_shared.errors import CronboxError
from cronbox_shared.models import OutboundMessage
from cronbox_shared.timeutil import Clock, SystemClock, fmt
from host.store.records import Session

if TYPE_CHECKING:
    import httpx2

SIGNATURE_HEADER = "X-Cronbox-Signature"
TIMESTAMP_HEADER = "X-Cronbox-Timestamp"
DELIVERY_HEADER = "X-Cronbox-Delivery"
# The reply's outbound message id (prefixed by the session id), the same on every retry
# and after a host crash, so a receiver recognises a redelivery; an id a header cannot
# carry safely falls back to the seq.
IDEMPOTENCY_HEADER = "Idempotency-Key"
_HEADER_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpen(CronboxError, ConnectionError):
    """A send refused without a request: the URL's circuit is open until ``until``."""

    def __init__(self, url: str, until: datetime) -> None:
        super().__init__(f"the circuit of webhook {url} is open until {fmt(until)}")
        self.until = until


class WebhookFailed(CronboxError, ConnectionError):
    """The receiver answered, but not with a 2xx."""


@dataclass
class CircuitBreaker:
    """One URL's circuit: a pure state machine over the instants it is told."""

    threshold: int = 5
    cooldown: timedelta = timedelta(seconds=30)
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    """Consecutive failures."""
    opened_at: datetime | None = None
    transitions: list[tuple[datetime, CircuitState]] = field(default_factory=list)

    def allow(self, now: datetime) -> datetime | None:
        """None when a request may go out now; else the instant it may (circuit open).

        An open circuit past its cool-down lets one probe through (half-open); until that
        probe is settled no other request goes.
        """
        if self.state is CircuitState.CLOSED:
            return None
        assert self.opened_at is not None
        reopen = self.opened_at + self.cooldown
        if self.state is CircuitState.OPEN and now >= reopen:
            self._move(CircuitState.HALF_OPEN, now)
            return None
        return max(reopen, now) if self.state is CircuitState.OPEN else now + self.cooldown

    def succeeded(self, now: datetime) -> None:
        self.failures = 0
        if self.state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED, now)

    def failed(self, now: datetime) -> None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self.failures >= self.threshold
        ):
            self.opened_at = now
            self._move(CircuitState.OPEN, now)

    def _move(self, to: CircuitState, now: datetime) -> None:
        self.state = to
        self.transitions.append((now, to))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def payload(session: Session, message: OutboundMessage, text: str) -> bytes:
    """The JSON body of one reply."""
    return json.dumps(
        {
            "session": session.name,
            "session_id": session.id,
            "message_id": message.id,
            "seq": message.seq,
            "text": text,
            "in_reply_to": message.in_reply_to,
            "created": message.created_at,
        },
        ensure_ascii=False,
    ).encode()


class WebhookChannel:
    """POSTs replies to their session's webhook, through a circuit breaker per URL."""

    name = "webhook"

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.timeout = timeout
        self.threshold = threshold
        self.cooldown = timedelta(seconds=cooldown)
        self.clock = clock or SystemClock()
        self.environ = environ if environ is not None else os.environ
        self.circuits: dict[str, CircuitBreaker] = {}
        self._client: httpx2.AsyncClient | None = None

    def serves(self, session: Session) -> bool:
        return bool(session.webhook_url)

    def circuit(self, url: str) -> CircuitBreaker:
        if url not in self.circuits:
            self.circuits[url] = CircuitBreaker(self.threshold, self.cooldown)
        return self.circuits[url]

    def open_circuits(self) -> list[str]:
        """URLs whose circuit is not closed (for stale checks and ``/health``)."""
        return sorted(u for u, c in self.circuits.items() if c.state is not CircuitState.CLOSED)

    async def send(self, session: Session, message: OutboundMessage, text: str) -> None:
        url = session.webhook_url
        if not url:
            raise WebhookFailed(f"session {session.name} has no webhook any more")
        circuit = self.circuit(url)
        held = circuit.allow(self.clock.now())
        if held is not None:
            raise CircuitOpen(url, held)
        body = payload(session, message, text)
        stamp = str(int(self.clock.now().timestamp()))
        headers = {
            "content-type": "application/json",
            DELIVERY_HEADER: f"{session.id}:{message.seq}",
            IDEMPOTENCY_HEADER: f"{session.id}:"
            + (message.id if _HEADER_SAFE.fullmatch(message.id) else f"seq-{message.seq}"),
            TIMESTAMP_HEADER: stamp,
        }
        if session.webhook_secret_env:
            secret = self.environ.get(session.webhook_secret_env)
            if not secret:
                circuit.failed(self.clock.now())
                raise WebhookFailed(
                    f"{session.webhook_secret_env}, the webhook secret of session "
                    f"{session.name}, is not set in the host's environment"
                )
            headers[SIGNATURE_HEADER] = signature(secret, stamp, body)
        import httpx2  # with the first delivery, not with every host start

        try:
            response = await self._http().post(url, content=body, headers=headers)
        except httpx2.TimeoutException:
            circuit.failed(self.clock.now())
            raise WebhookFailed(f"webhook {url} did not answer within {self.timeout:g} s") from None
        except httpx2.TransportError as exc:
            circuit.failed(self.clock.now())
            raise WebhookFailed(f"webhook {url} unreachable: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            circuit.failed(self.clock.now())
            raise WebhookFailed(f"webhook {url} answered {response.status_code}")
        circuit.succeeded(self.clock.now())

    def _http(self) -> httpx2.AsyncClient:
        import httpx2

        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool (at host shutdown)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
