"""What the model gateway adds to one model call (issue 10).

The official ``openai`` SDK client makes ``--calls`` Chat Completions calls, one after
another, to a local server that speaks the wire protocol (``tests/fake_models.py``):

* baseline: straight to the server over TCP, as a runner holding the key would;
* gateway: through a session's gateway on its unix socket, as a runner does, the key
  added by the host, the tokens recorded in ``cronbox.db`` (the session's day and the
  run of the row the call names) before the answer goes back;
* gateway + budget: the same with a ``daily_token_budget``, so every call also reads
  the day's count first.

All three run in this process against the same server, interleaved in rounds so that
load from elsewhere falls on all of them alike. Each figure is the wall time of one
``chat.completions.create``; nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import anyio
import httpx2
import openai
from _common import percentile, ratio, secs, table

from cronbox_shared.agents import AgentProfile
from cronbox_shared.sessiondb import GATEWAY_ROWS_HEADER
from host.gateway import Gateways
from host.service import Cronbox
from host.writer import Writer
from tests.fake_models import fake_model, say

Call = Callable[[], Awaitable[object]]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=300, help="calls per variant")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    return p.parse_args()


def caller(client: openai.AsyncOpenAI) -> Call:
    async def one() -> object:
        return await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=16
        )

    return one


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, fake_model([say("ok")], repeat_last=True) as fake:
        store = Cronbox(Path(tmp) / "home")
        plain = store.create_session("plain")
        budgeted = store.create_session("budgeted")
        row = store.send_message(plain.id, "the row the calls are charged to")
        base = f"{fake.base}/v1"
        profiles = {
            plain.id: AgentProfile(provider="openai", model="m", base_url=base),
            budgeted.id: AgentProfile(
                provider="openai", model="m", base_url=base, daily_token_budget=10**12
            ),
        }
        gateways = Gateways(store, Writer())
        async with anyio.create_task_group() as tg:
            await tg.start(gateways.run)
            clients = {"baseline (direct)": openai.AsyncOpenAI(api_key="k", base_url=base)}
            for name, session in (("gateway", plain), ("gateway + budget", budgeted)):
                profile = profiles[session.id]
                await gateways.ensure(
                    session.id, store.session_dir(session.id),
                    lambda p=profile: (p, "sk-host"),  # type: ignore[misc]
                )  # fmt: skip
                fd = os.open(store.session_dir(session.id) / "gateway", os.O_RDONLY)
                transport = httpx2.AsyncHTTPTransport(uds=f"/proc/self/fd/{fd}/model.sock")
                clients[name] = openai.AsyncOpenAI(
                    api_key="held-by-the-host", base_url="http://model-gateway",
                    default_headers={GATEWAY_ROWS_HEADER: row.id},
                    http_client=openai.DefaultAsyncHttpxClient(transport=transport),
                )  # fmt: skip
            calls = {name: caller(client) for name, client in clients.items()}
            for call in calls.values():  # warm-up: connections, imports, first writes
                await call()
            times: dict[str, list[float]] = {name: [] for name in calls}
            per_round = max(1, args.calls // args.rounds)
            for _ in range(args.rounds):
                for name, call in calls.items():
                    for _ in range(per_round):
                        started = time.perf_counter()
                        await call()
                        times[name].append(time.perf_counter() - started)
            for client in clients.values():
                await client.close()
            gateways.close()
        used = store.tokens_today(plain.id)
        [run] = store.runs_of(plain.id, [row.id]).values()

    baseline = statistics.median(times["baseline (direct)"])
    rows = [
        [name, str(len(ts)), secs(statistics.median(ts), "ms"), secs(percentile(ts, 99), "ms"),
         ratio(baseline, statistics.median(ts))]
        for name, ts in times.items()
    ]  # fmt: skip
    print(f"one chat.completions.create, {per_round * args.rounds} calls per variant, "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    table(["variant", "calls", "median", "p99", "vs baseline (median)"], rows)
    print(
        f"recorded by the gateway for session plain today: {used.input_tokens} in, "
        f"{used.output_tokens} out; its row's run: {run.input_tokens} / {run.output_tokens}"
    )


if __name__ == "__main__":
    anyio.run(main, parse_args())
    sys.exit(0)
