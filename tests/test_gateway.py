"""The model gateway on its own: it forwards only the provider's one call, to the
profile's base_url, with the key added and the runner's own credentials dropped, and
refuses requests over the size cap."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import anyio
import httpx2
import pytest

from cronbox_shared.agents import AgentProfile
from host.gateway import MAX_REQUEST_BYTES, Gateways
from tests.fake_models import fake_model, say

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_gateway_forwards_only_its_route_with_the_key_and_caps_the_size(
    tmp_path: Path,
) -> None:
    with fake_model([say("hello")]) as fake:
        profile = AgentProfile(provider="openai", model="m", base_url=f"{fake.base}/v1")
        gateways = Gateways(lambda: date(2026, 1, 1))
        async with anyio.create_task_group() as tg:
            await tg.start(gateways.run)
            relative = await gateways.ensure("s1", tmp_path, lambda: (profile, "sk-host"))
            fd = os.open(tmp_path / "gateway", os.O_RDONLY)
            transport = httpx2.AsyncHTTPTransport(uds=f"/proc/self/fd/{fd}/model.sock")
            async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
                other = await client.post("/models", content=b"{}")
                big = await client.post("/chat/completions", content=b"x" * (MAX_REQUEST_BYTES + 1))
                ok = await client.post(
                    "/chat/completions",
                    content=json.dumps({"model": "m", "messages": []}),
                    headers={"authorization": "Bearer forged", "content-type": "application/json"},
                )
            os.close(fd)
            tokens = gateways.tokens_today("s1")
            gateways.close()
    assert relative == "gateway/model.sock"
    assert other.status_code == 404
    assert "forwards only POST /chat/completions" in other.json()["error"]["message"]
    assert big.status_code == 413
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hello"
    assert [h["authorization"] for h in fake.headers] == ["Bearer sk-host"]
    assert tokens == 18
    assert not (tmp_path / relative).exists()  # the socket goes with its gateway
