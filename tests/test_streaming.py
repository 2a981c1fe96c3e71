"""Streamed model answers: the fake vendors stream the way the real APIs do, the official
SDKs read them through the host's gateway, the gateway passes the events on as they come
and counts the tokens the stream reports (and makes an OpenAI stream report them)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx2
import pytest

from agent_runner.mcp_client import ToolSpec
from agent_runner.providers.anthropic import AnthropicProvider, Messages
from agent_runner.providers.openai import ChatCompletions, OpenAIProvider
from agent_runner.toolloop import Dialect, ToolUse
from cronbox_shared.agents import AgentProfile
from cronbox_shared.errors import ProviderError
from cronbox_shared.settings import RunnerSettings
from host.gateway import Gateways, StreamUsage, counted_request
from host.service import Cronbox
from host.writer import Writer
from tests.fake_models import FakeModel, Turn, anthropic_events, fail, fake_model, openai_events

pytestmark = pytest.mark.anyio

SCHEDULE = ToolSpec("schedule_task", "Schedule a task.", {"type": "object", "properties": {}})
HELLO = Turn(text="hello there", input_tokens=9, output_tokens=4)
ARGS = {"prompt": "check the build", "recurrence": "0 9 * * MON-FRI"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["openai", "anthropic"])
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@asynccontextmanager
async def gateway_dialect(
    app: Cronbox, provider: str, fake: FakeModel, *, stream: bool
) -> AsyncIterator[tuple[Dialect, str]]:
    """The provider's dialect, its SDK client talking to a real gateway for the fake;
    and the id of the session whose gateway it is (the tokens are counted for it)."""
    base = f"{fake.base}/v1" if provider == "openai" else fake.base
    profile = AgentProfile(provider=provider, model="m", base_url=base)
    session = app.create_session("streams")
    session_dir = app.session_dir(session.id)
    gateways = Gateways(app, Writer())
    async with anyio.create_task_group() as tg:
        await tg.start(gateways.run)
        relative = await gateways.ensure(session.id, session_dir, lambda: (profile, "sk-host"))
        settings = RunnerSettings(
            session_dir=session_dir, provider=provider, model="m", gateway=relative, stream=stream
        )
        if provider == "openai":
            openai_provider = OpenAIProvider(settings, environ={})
            async with openai_provider.client() as client:
                yield ChatCompletions(client, settings), session.id
        else:
            anthropic_provider = AnthropicProvider(settings, environ={})
            async with anthropic_provider.client() as client:
                yield Messages(client, settings), session.id
        gateways.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_tool_calls_and_answers_read_the_same_streamed_or_not_and_are_counted(
    app: Cronbox, provider: str, stream: bool
) -> None:
    turns = [
        Turn(text="Let me schedule that.", calls=(("schedule_task", ARGS),),
             input_tokens=120, output_tokens=30),
        Turn(text="Done: every weekday at 9 I will remind you.", input_tokens=200,
             output_tokens=15),
    ]  # fmt: skip
    with fake_model(turns) as fake:
        async with gateway_dialect(app, provider, fake, stream=stream) as (dialect, sid):
            messages = dialect.opening("remind me every weekday at 9")
            first = await dialect.call(messages, [SCHEDULE])
            messages.append(first.message)
            second = await dialect.call(messages, [SCHEDULE])
            counted = app.tokens_today(sid).total
    assert first.text == "Let me schedule that."
    assert [(c.name, c.arguments) for c in first.calls] == [("schedule_task", ARGS)]
    assert isinstance(first.calls[0], ToolUse) and first.calls[0].id
    assert (first.input_tokens, first.output_tokens) == (120, 30)
    assert second.text == "Done: every weekday at 9 I will remind you." and not second.calls
    assert counted == 120 + 30 + 200 + 15  # the gateway's own count, from the vendor
    assert all(bool(body.get("stream")) is stream for body in fake.requests)
    # The tool call went back into the conversation as the vendor expects to see it.
    assert "schedule_task" in json.dumps(fake.requests[1]["messages"])


async def test_a_streamed_error_response_is_the_vendors_text(app: Cronbox, provider: str) -> None:
    with fake_model([fail(400, "max_tokens is too large for test-model")]) as fake:
        async with gateway_dialect(app, provider, fake, stream=True) as (dialect, _):
            with pytest.raises(ProviderError) as caught:
                await dialect.call(dialect.opening("hi"), [SCHEDULE])
    assert str(caught.value) == "the model API answered 400: max_tokens is too large for test-model"


async def test_the_gateway_makes_an_openai_stream_report_its_usage(app: Cronbox) -> None:
    """A runner that leaves out stream_options still has its tokens counted."""
    session = app.create_session("streams")
    session_dir = app.session_dir(session.id)
    with fake_model([Turn(text="hi", input_tokens=50, output_tokens=5)]) as fake:
        profile = AgentProfile(provider="openai", model="m", base_url=f"{fake.base}/v1")
        gateways = Gateways(app, Writer())
        async with anyio.create_task_group() as tg:
            await tg.start(gateways.run)
            await gateways.ensure(session.id, session_dir, lambda: (profile, None))
            fd = os.open(session_dir / "gateway", os.O_RDONLY)
            transport = httpx2.AsyncHTTPTransport(uds=f"/proc/self/fd/{fd}/model.sock")
            body = {"model": "m", "messages": [], "stream": True}
            async with (
                httpx2.AsyncClient(transport=transport, base_url="http://gw") as client,
                client.stream("POST", "/chat/completions", json=body) as response,
            ):
                events = [line async for line in response.aiter_lines() if line]
            os.close(fd)
            counted = app.tokens_today(session.id).total
            gateways.close()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]"
    assert fake.requests[0]["stream_options"] == {"include_usage": True}
    assert counted == 55


@contextmanager
def split_everywhere(events: list[bytes]) -> Iterator[list[bytes]]:
    """The stream cut into 7-byte pieces, so events straddle reads."""
    data = b"".join(events)
    yield [data[i : i + 7] for i in range(0, len(data), 7)]


@pytest.mark.parametrize(
    ("provider_name", "events"),
    [
        ("anthropic", anthropic_events(HELLO, "m", 1)),
        ("openai", openai_events(HELLO, "m", 1, include_usage=True)),
    ],
)  # fmt: skip
def test_stream_usage_reads_the_vendors_figures_across_reads(
    provider_name: str, events: list[bytes]
) -> None:
    usage = StreamUsage(provider_name)
    with split_everywhere(events) as pieces:
        for piece in pieces:
            usage.feed(piece)
    assert usage.tokens == (9, 4)


@pytest.mark.parametrize(
    ("body", "forwarded"),
    [
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": True, "stream_options": {"include_usage": False}},
         {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, {"stream": False}),
        ({"model": "m"}, {"model": "m"}),
    ],
)  # fmt: skip
def test_counted_request_asks_an_openai_stream_for_its_usage(
    body: dict[str, Any], forwarded: dict[str, Any]
) -> None:
    assert json.loads(counted_request("openai", json.dumps(body).encode())) == forwarded
    assert counted_request("anthropic", b'{"stream": true}') == b'{"stream": true}'
    assert counted_request("openai", b"not json") == b"not json"
