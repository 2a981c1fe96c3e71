"""The model gateway on its own: it forwards only the provider's one call, to the
profile's base_url, with the key added and the runner's own credentials dropped, refuses
requests over the size cap, and records the tokens the vendor reported in cronbox.db:
the session's day (which its budget is checked against, by any later gateway) and each
named run's share."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest

from cronbox_shared.agents import AgentProfile
from cronbox_shared.sessiondb import GATEWAY_ROWS_HEADER
from cronbox_shared.timeutil import ManualClock
from host.gateway import MAX_REQUEST_BYTES, MAX_ROWS, Gateways, charged_rows
from host.service import Cronbox
from host.store.records import TokenCount
from host.writer import Writer
from tests.fake_models import Turn, fake_model, say

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
CHAT = json.dumps({"model": "m", "messages": []})


@asynccontextmanager
async def gateway_client(
    app: Cronbox, session_id: str, profile: AgentProfile, key: str | None = "sk-host"
) -> AsyncIterator[httpx2.AsyncClient]:
    """A running gateway for the session, and an HTTP client on its socket."""
    session_dir = app.session_dir(session_id)
    gateways = Gateways(app, Writer())
    async with anyio.create_task_group() as tg:
        await tg.start(gateways.run)
        relative = await gateways.ensure(session_id, session_dir, lambda: (profile, key))
        assert relative == "gateway/model.sock"
        fd = os.open(session_dir / "gateway", os.O_RDONLY)
        transport = httpx2.AsyncHTTPTransport(uds=f"/proc/self/fd/{fd}/model.sock")
        try:
            async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield client
        finally:
            os.close(fd)
            gateways.close()
    assert not (session_dir / relative).exists()  # the socket goes with its gateway


async def test_the_gateway_forwards_only_its_route_with_the_key_and_caps_the_size(
    app: Cronbox,
) -> None:
    session = app.create_session("gw")
    with fake_model([say("hello")]) as fake:
        profile = AgentProfile(provider="openai", model="m", base_url=f"{fake.base}/v1")
        async with gateway_client(app, session.id, profile) as client:
            other = await client.post("/models", content=b"{}")
            big = await client.post("/chat/completions", content=b"x" * (MAX_REQUEST_BYTES + 1))
            ok = await client.post(
                "/chat/completions", content=CHAT,
                headers={"authorization": "Bearer forged", GATEWAY_ROWS_HEADER: "r1", **JSON},
            )  # fmt: skip
    assert other.status_code == 404
    assert "forwards only POST /chat/completions" in other.json()["error"]["message"]
    assert big.status_code == 413
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hello"
    assert [h["authorization"] for h in fake.headers] == ["Bearer sk-host"]
    # The rows header is the gateway's own: the vendor never sees it.
    assert GATEWAY_ROWS_HEADER not in fake.headers[0]
    assert app.tokens_today(session.id) == TokenCount(input_tokens=11, output_tokens=7)


async def test_a_calls_tokens_are_shared_by_the_sessions_working_rows_it_names(
    app: Cronbox,
) -> None:
    session = app.create_session("gw")
    other = app.create_session("other")
    first = app.send_message(session.id, "one")
    second = app.send_message(session.id, "two")
    foreign = app.send_message(other.id, "not yours")
    with fake_model([Turn(text="both", input_tokens=11, output_tokens=7)]) as fake:
        profile = AgentProfile(provider="anthropic", model="m", base_url=fake.base)
        async with gateway_client(app, session.id, profile) as client:
            named = f"{first.id}, {second.id},{foreign.id},no-such-row,{first.id}"
            ok = await client.post(
                "/v1/messages", content=CHAT, headers={GATEWAY_ROWS_HEADER: named, **JSON}
            )
    assert ok.status_code == 200
    assert fake.headers[0]["x-api-key"] == "sk-host"
    runs = app.runs_of(session.id, [first.id, second.id])
    # 11/7 over two rows: exact, the first row takes what does not divide.
    assert (runs[first.id].input_tokens, runs[first.id].output_tokens) == (6, 4)
    assert (runs[second.id].input_tokens, runs[second.id].output_tokens) == (5, 3)
    # Another session's row is not charged, nor is that session's day.
    assert app.runs_of(other.id, [foreign.id]) == {}
    assert app.tokens_today(other.id) == TokenCount()
    assert app.tokens_today(session.id).total == 18


async def test_the_budget_is_checked_against_what_earlier_gateways_recorded(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A budget used up before a restart (a new service and gateway on the same home)
    stays used up for the rest of that UTC day, and is free again the next day."""
    home = tmp_path / "home"
    before = Cronbox(home, clock=clock)
    session = before.create_session("gw")
    with fake_model([Turn(text="a", input_tokens=30, output_tokens=10), say("b")]) as fake:
        profile = AgentProfile(provider="openai", model="m", base_url=f"{fake.base}/v1",
                               daily_token_budget=25)  # fmt: skip
        async with gateway_client(before, session.id, profile) as client:
            spent = await client.post("/chat/completions", content=CHAT, headers=JSON)
        after = Cronbox(home, clock=clock)
        async with gateway_client(after, session.id, profile) as client:
            refused = await client.post("/chat/completions", content=CHAT, headers=JSON)
            clock.advance(hours=16)  # past midnight UTC
            tomorrow = await client.post("/chat/completions", content=CHAT, headers=JSON)
    assert spent.status_code == 200
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "type": "gateway_error",
        "message": "the session's daily token budget of 25 tokens is used up (40 used today, "
        "UTC); raise daily_token_budget in agents.toml or wait for tomorrow",
    }
    assert tomorrow.status_code == 200 and len(fake.requests) == 2


@pytest.mark.parametrize(
    ("tokens", "n", "shares"),
    [
        (TokenCount(input_tokens=11, output_tokens=7), 1, [(11, 7)]),
        (TokenCount(input_tokens=11, output_tokens=7), 2, [(6, 4), (5, 3)]),
        (TokenCount(input_tokens=2, output_tokens=0), 3, [(1, 0), (1, 0), (0, 0)]),
        (TokenCount(input_tokens=5, output_tokens=5), 0, []),
    ],
)
def test_shares_of_a_call_add_up_to_its_tokens(
    tokens: TokenCount, n: int, shares: list[tuple[int, int]]
) -> None:
    got = tokens.shares(n)
    assert [(s.input_tokens, s.output_tokens) for s in got] == shares
    if n:
        assert sum((s for s in got), TokenCount()) == tokens


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        (None, []),
        ("", []),
        (" a , b,,c ", ["a", "b", "c"]),
        ("x" * 201 + ",ok", ["ok"]),
        (",".join(f"r{i}" for i in range(MAX_ROWS + 5)), [f"r{i}" for i in range(MAX_ROWS)]),
    ],
)
def test_the_rows_a_runner_names_are_capped(header: str | None, rows: list[str]) -> None:
    assert charged_rows(header) == rows
