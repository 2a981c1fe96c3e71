"""The webhook channel against a real local HTTP receiver, and its circuit breaker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import SocketStream

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import InvalidInput
from cronbox_shared.models import DeliveryStatus
from cronbox_shared.timeutil import ManualClock, parse_utc
from host.delivery import ChannelRetry
from host.service import Cronbox
from host.sweep import Sweeper
from host.webhook import (
    DELIVERY_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CircuitBreaker,
    CircuitState,
    WebhookChannel,
    signature,
)
from tests.hosting import fast_sweep, make_settings, replies, running_host, wait_for

SECRET_ENV = "CRONBOX_TEST_WEBHOOK_SECRET"
SECRET = "hush-hush"
Mode = Literal["ok", "500", "drop", "hang"]

T0 = parse_utc("2026-01-15T08:00:00Z")
# How long a wait on a real event may take on a loaded machine (a guard, not a bound).
LOOP_GUARD = 120.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the circuit breaker and the backoff, as pure rules -------------------------------------


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state


def test_the_circuit_opens_after_five_failures_and_probes_once_after_its_cool_down() -> None:
    breaker = CircuitBreaker(threshold=5, cooldown=timedelta(seconds=30))
    for n in range(4):
        breaker.failed(at(n))
        assert breaker.allow(at(n)) is None
    breaker.failed(at(4))
    assert breaker.state is CircuitState.OPEN
    assert breaker.allow(at(10)) == at(34)  # held until the cool-down ends
    assert breaker.allow(at(34)) is None  # one probe: half-open
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow(at(34)) is not None  # no second request while the probe is out
    breaker.failed(at(35))  # the probe failed: open again, a fresh cool-down
    assert (breaker.state, breaker.allow(at(40))) == (CircuitState.OPEN, at(65))
    assert breaker.allow(at(65)) is None
    breaker.succeeded(at(66))
    assert (breaker.state, breaker.failures) == (CircuitState.CLOSED, 0)
    assert [s for _, s in breaker.transitions] == ["open", "half-open", "open", "half-open",
                                                   "closed"]  # fmt: skip


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(threshold=5)
    for n in range(4):
        breaker.failed(at(n))
    breaker.succeeded(at(5))
    for n in range(4):
        breaker.failed(at(6 + n))
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("rand", "attempts", "after"),
    [(0.0, 1, 5.0), (1.0, 1, 4.0), (0.0, 3, 20.0), (0.5, 3, 18.0), (0.0, 12, 600.0)],
)
def test_retries_back_off_exponentially_less_a_random_part(
    rand: float, attempts: int, after: float
) -> None:
    retry = ChannelRetry(max_attempts=20, rand=lambda: rand)
    assert retry.after(attempts, T0) == T0 + timedelta(seconds=after)
    assert ChannelRetry(max_attempts=3).after(3, T0) is None


def test_a_webhook_must_be_an_http_url_and_its_secret_a_variable_name(app: Cronbox) -> None:
    app.create_session("alpha")
    for url in ("ftp://example.com/x", "example.com/hook", "http://", ""):
        with pytest.raises(InvalidInput, match="not an http"):
            app.update_session("alpha", webhook=url)
    with pytest.raises(InvalidInput, match="needs a webhook"):
        app.update_session("alpha", webhook_secret_env="SECRET")
    with pytest.raises(InvalidInput, match="not an environment variable name"):
        app.update_session("alpha", webhook="https://example.com/h", webhook_secret_env="A B")
    assert app.get_session("alpha").webhook_url is None
    done = app.update_session("alpha", webhook="https://example.com/h", webhook_secret_env="S")
    assert (done.webhook_url, done.webhook_secret_env) == ("https://example.com/h", "S")
    cleared = app.update_session("alpha", clear_webhook=True)
    assert (cleared.webhook_url, cleared.webhook_secret_env) == (None, None)


# --- a real receiver --------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP/1.1 receiver whose behaviour the test scripts request by request."""

    url: str = ""
    mode: Mode = "ok"
    script: list[Mode] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            raw = b""
            try:
                while b"\r\n\r\n" not in raw:
                    raw += await stream.receive()
                head, _, body = raw.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {
                    k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
                }
                while len(body) < int(headers.get("content-length", 0)):
                    body += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            self.requests += 1
            mode = self.script.pop(0) if self.script else self.mode
            if mode == "drop":
                self._changed()
                return
            if mode == "hang":  # never answers; the sender's timeout ends it
                try:
                    while await stream.receive():
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
                self._changed()
                return
            code = b"200 OK" if mode == "ok" else b"500 Internal Server Error"
            await stream.send(
                b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            if mode == "ok":
                self.accepted.append(json.loads(body))
                self.headers.append(headers | {"body": body.decode()})
            self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    found = Receiver(url=f"http://127.0.0.1:{port}/hook")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, found.handle)
        try:
            yield found
        finally:
            tg.cancel_scope.cancel()


def webhook_of(sweeper: Sweeper) -> WebhookChannel:
    [hook] = [c for c in sweeper.delivery.channels if isinstance(c, WebhookChannel)]
    return hook


def fast_hooks(home: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "webhook_timeout": 0.5, "webhook_cooldown": 0.2, "delivery_retry_base": 0.02,
        "delivery_attempts": 1000,
    }  # fmt: skip
    return make_settings(home, **(values | overrides))


def attempts(store: Cronbox, session_id: str) -> list[sdb.DeliveryAttempt]:
    return [a for a in store.delivery_attempts(session_id) if a.channel == "webhook"]


@pytest.mark.anyio
@pytest.mark.e2e
async def test_a_reply_reaches_a_receiver_that_fails_three_ways_first_once_and_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    settings = fast_hooks(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    async with receiver() as hook:
        hook.script = ["500", "drop", "hang"]
        session = store.create_session("alpha")
        store.update_session("alpha", webhook=hook.url, webhook_secret_env=SECRET_ENV)
        message = store.send_message("alpha", "hello")
        async with running_host(settings):
            await wait_for(lambda: hook.accepted)
            await wait_for(lambda: len(attempts(store, session.id)) == 4)
        [reply] = replies(store, session.id)
    assert hook.requests == 4
    [got] = hook.accepted
    assert got["seq"] == reply["seq"]
    assert (got["session"], got["in_reply_to"], got["message_id"]) == (
        "alpha", message.id, reply["id"],
    )  # fmt: skip
    assert got["text"] == json.loads(reply["content"])["text"]
    [headers] = hook.headers
    assert headers[DELIVERY_HEADER.lower()] == f"{session.id}:{reply['seq']}"
    assert headers[IDEMPOTENCY_HEADER.lower()] == f"{session.id}:{reply['id']}"
    expected = signature(SECRET, headers[TIMESTAMP_HEADER.lower()], headers["body"].encode())
    assert headers[SIGNATURE_HEADER.lower()] == expected
    tries = attempts(store, session.id)
    assert [(a.attempt, a.status) for a in tries] == [
        (1, DeliveryStatus.PENDING), (2, DeliveryStatus.PENDING), (3, DeliveryStatus.PENDING),
        (4, DeliveryStatus.DELIVERED),
    ]  # fmt: skip
    assert "500" in (tries[0].error or "")
    assert "unreachable" in (tries[1].error or "")
    assert "did not answer within 0.5 s" in (tries[2].error or "")


@pytest.mark.anyio
@pytest.mark.e2e
async def test_a_receiver_down_while_twenty_replies_are_made_gets_each_once_in_order(
    tmp_path: Path,
) -> None:
    settings = fast_hooks(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    async with receiver() as hook:
        hook.mode = "drop"
        session = store.create_session("alpha")
        store.update_session("alpha", webhook=hook.url)
        async with running_host(settings) as sweeper:
            for n in range(20):
                store.send_message("alpha", f"message {n}")
            breaker = await wait_for(lambda: webhook_of(sweeper).circuits.get(hook.url))
            await wait_for(lambda: len(replies(store, session.id)) == 20, LOOP_GUARD)
            await wait_for(lambda: breaker.state is CircuitState.OPEN, LOOP_GUARD)
            seen_down = hook.requests
            hook.mode = "ok"
            await wait_for(lambda: len(hook.accepted) == 20, LOOP_GUARD)
            assert breaker.state is CircuitState.CLOSED
        made = replies(store, session.id)
    assert [r["seq"] for r in hook.accepted] == [r["seq"] for r in made]
    assert [r["text"] for r in hook.accepted] == [json.loads(r["content"])["text"] for r in made]
    states = [s for _, s in breaker.transitions]
    assert states[0] == CircuitState.OPEN and states[-1] == CircuitState.CLOSED
    assert CircuitState.HALF_OPEN in states
    # Every request that was not one of the twenty accepted is a recorded failed attempt,
    # and only the oldest reply still owed was ever tried (order holds while failing).
    failed = [a for a in attempts(store, session.id) if a.status is DeliveryStatus.PENDING]
    assert len(failed) == hook.requests - 20 >= seen_down
    assert [a.seq for a in failed] == sorted(a.seq for a in failed)
    delivered = [a.seq for a in attempts(store, session.id) if a.status is DeliveryStatus.DELIVERED]
    assert delivered == [r["seq"] for r in made]


@pytest.mark.anyio
@pytest.mark.e2e
async def test_replies_owed_to_a_webhook_are_delivered_after_a_host_restart(
    tmp_path: Path,
) -> None:
    settings = fast_hooks(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    async with receiver() as hook:
        hook.mode = "drop"
        session = store.create_session("alpha")
        store.update_session("alpha", webhook=hook.url)
        for n in range(3):
            store.send_message("alpha", f"message {n}")
        async with running_host(settings):
            await wait_for(lambda: len(replies(store, session.id)) == 3)
            await wait_for(lambda: attempts(store, session.id))
        assert hook.accepted == []
        hook.mode = "ok"
        async with running_host(settings):
            await wait_for(lambda: len(hook.accepted) == 3)
        made = replies(store, session.id)
    assert [r["seq"] for r in hook.accepted] == [r["seq"] for r in made]


@pytest.mark.anyio
@pytest.mark.e2e
async def test_a_receiver_down_for_thirty_seconds_of_the_host_clock_gets_twenty_replies_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outage is driven by the host's injected clock, never by sleeping: the backoff,
    the breaker's cool-down and the retries all read it."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    settings = make_settings(
        tmp_path / "home", webhook_timeout=0.5, webhook_cooldown=30.0, webhook_failures=5,
        delivery_retry_base=1.0, delivery_attempts=1000,
    )  # fmt: skip
    # The runner's heartbeat is on the real clock: never judge it silent as this one runs on.
    sweep = fast_sweep(settings, heartbeat_ceiling=3600.0)
    store = Cronbox.from_settings(settings, clock=clock)
    async with receiver() as hook:
        hook.mode = "drop"
        session = store.create_session("alpha")
        store.update_session("alpha", webhook=hook.url, webhook_secret_env=SECRET_ENV)
        async with running_host(settings, sweep, clock=clock) as sweeper:

            async def step(seconds: float) -> None:
                """Move the host's clock on and let a whole pass see the new instant."""
                clock.advance(seconds)
                sweeper.wake()
                now = clock.now()
                await wait_for(
                    lambda: sweeper.last_pass_at is not None and sweeper.last_pass_at >= now
                )

            down_from = clock.now()
            for n in range(20):
                store.send_message("alpha", f"message {n}")
                await step(0.5)
            await wait_for(lambda: len(replies(store, session.id)) == 20)
            while clock.now() < down_from + timedelta(seconds=30):
                await step(0.5)
            breaker = webhook_of(sweeper).circuits[hook.url]
            assert state_of(breaker) is CircuitState.OPEN
            # While open, nothing went out: only the five failures that opened it.
            assert hook.requests == 5
            hook.mode = "ok"
            while len(hook.accepted) < 20:
                await step(0.5)
                assert clock.now() < down_from + timedelta(seconds=120)
            assert state_of(breaker) is CircuitState.CLOSED
        made = replies(store, session.id)
    assert [r["seq"] for r in hook.accepted] == [r["seq"] for r in made]
    assert [r["text"] for r in hook.accepted] == [json.loads(r["content"])["text"] for r in made]
    for headers in hook.headers:
        stamp = headers[TIMESTAMP_HEADER.lower()]
        assert headers[SIGNATURE_HEADER.lower()] == signature(
            SECRET, stamp, headers["body"].encode()
        )
    # Open on the fifth consecutive failure; one probe once the cool-down has passed on
    # the host's clock; closed by its success.
    tries = attempts(store, session.id)
    failures = [a for a in tries if a.status is DeliveryStatus.PENDING]
    assert len(failures) == 5 and {a.seq for a in failures} == {made[0]["seq"]}
    [(opened, s1), (probed, s2), (closed, s3)] = breaker.transitions
    assert (s1, s2, s3) == (CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED)
    assert opened == parse_utc(failures[-1].at)
    assert probed >= opened + timedelta(seconds=30) and closed == probed
    assert probed >= down_from + timedelta(seconds=30)
    delivered = [a.seq for a in tries if a.status is DeliveryStatus.DELIVERED]
    assert delivered == [r["seq"] for r in made]
    assert hook.requests == 5 + 20
