"""Conversation history: trimming as a pure decision tested by table, the SQLite
mailbox keeping it bounded, and an isolated task running alone."""

from __future__ import annotations

from typing import Any

import pytest

from agent_runner.history import Exchange, estimate_tokens, fit, flatten, remember
from agent_runner.mailbox import Mailbox
from agent_runner.mailbox.sqlite import SqliteMailbox
from agent_runner.provider import BatchItem
from agent_runner.runner import next_batch
from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import MessageKind
from cronbox_shared.rows import InboxRow
from cronbox_shared.timeutil import ManualClock
from host.service import Cronbox

pytestmark = pytest.mark.anyio


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def tool_turns(n: int) -> list[dict[str, Any]]:
    """A tool call and its result, ``n`` times (the OpenAI format)."""
    turns: list[dict[str, Any]] = []
    for i in range(n):
        call = {"id": f"c{i}", "type": "function",
                "function": {"name": "list_tasks", "arguments": "{}"}}  # fmt: skip
        turns += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "no tasks " * 20},
        ]
    return turns


def exchange(i: int, tools: int = 0, words: int = 10) -> Exchange:
    messages = [user(f"question {i} " + "x " * words), *tool_turns(tools), answer(f"answer {i}")]
    return Exchange("openai", tuple(messages), i)


def names(kept: list[Exchange]) -> list[tuple[int | None, int]]:
    """Each kept exchange as (id, number of messages)."""
    return [(e.id, len(e.messages)) for e in kept]


SMALL = exchange(0).tokens
WITH_TOOLS = exchange(0, tools=2).tokens


@pytest.mark.parametrize(
    ("exchanges", "budget", "kept"),
    [
        pytest.param([], 1000, [], id="nothing-yet"),
        pytest.param([exchange(1), exchange(2)], 10 * SMALL, [(1, 2), (2, 2)], id="all-fit"),
        pytest.param([exchange(1), exchange(2), exchange(3)], 2 * SMALL, [(2, 2), (3, 2)],
                     id="oldest-dropped"),
        pytest.param([exchange(1, tools=2), exchange(2)], SMALL + SMALL + 2, [(1, 2), (2, 2)],
                     id="oldest-condensed-to-prompt-and-answer"),
        pytest.param([exchange(1, tools=2), exchange(2)], WITH_TOOLS + SMALL, [(1, 6), (2, 2)],
                     id="tool-turns-kept-whole"),
        pytest.param([exchange(1), exchange(2, words=2000)], 3 * SMALL, [], id="newest-too-big"),
        pytest.param([exchange(1), exchange(2)], 0, [], id="no-budget"),
    ],
)  # fmt: skip
def test_fit_keeps_the_newest_whole_exchanges_within_the_budget(
    exchanges: list[Exchange], budget: int, kept: list[tuple[int, int]]
) -> None:
    chosen = fit(exchanges, budget)
    assert names(chosen) == kept
    assert sum(e.tokens for e in chosen) <= budget


def test_a_tool_call_is_never_sent_without_its_result() -> None:
    exchanges = [exchange(i, tools=i % 3) for i in range(1, 30)]
    for budget in range(0, 3000, 37):
        messages = flatten(fit(exchanges, budget))
        calls = {c["id"] for m in messages for c in m.get("tool_calls", [])}
        results = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
        assert calls == results
        assert not messages or messages[0]["role"] == "user"


def test_remember_forgets_what_could_no_longer_be_sent() -> None:
    earlier = [exchange(1), exchange(2), exchange(3)]
    assert remember(earlier, exchange(4), 10 * SMALL).keep_from == 1
    assert remember(earlier, exchange(4), 2 * SMALL).keep_from == 3
    assert remember(earlier, exchange(4, words=2000), SMALL).keep_from is None


def test_estimate_counts_about_four_characters_a_token() -> None:
    assert estimate_tokens([]) == 1  # "[]"
    assert 240 <= estimate_tokens([user("y" * 1000)]) <= 260


@pytest.fixture
def mailbox(app: Cronbox) -> Mailbox:
    return SqliteMailbox(app.session_dir(app.create_session("talk").id))


async def test_the_stored_history_stays_bounded_however_long_the_session_talks(
    mailbox: Mailbox, app: Cronbox
) -> None:
    await mailbox.open()
    clock = ManualClock("2026-01-15T09:00:00Z")
    budget = 5 * SMALL
    for i in range(200):
        earlier = fit(await mailbox.load_history("openai"), budget)
        new = Exchange("openai", exchange(i, tools=i % 2).messages)
        await mailbox.settle(clock.now(), [], remember(earlier, new, budget))
    stored = await mailbox.load_history("openai")
    assert len(stored) <= 6
    assert sum(e.tokens for e in stored) <= budget + WITH_TOOLS
    assert stored[-1].messages[0]["content"].startswith("question 199 ")
    sent = fit(stored, budget)
    assert sum(e.tokens for e in sent) <= budget and sent[-1] == stored[-1]


async def test_another_profiles_history_is_dropped_with_the_next_exchange(mailbox: Mailbox) -> None:
    await mailbox.open()
    clock = ManualClock("2026-01-15T09:00:00Z")
    old = Exchange("openai", (user("hi"), answer("hello")))
    await mailbox.settle(clock.now(), [], remember([], old, 1000))
    new = Exchange("anthropic", (user("hi again"), answer("hello again")))
    await mailbox.settle(clock.now(), [], remember([], new, 1000))
    assert await mailbox.load_history("openai") == []
    assert [e.messages for e in await mailbox.load_history("anthropic")] == [new.messages]


async def test_a_history_row_that_is_not_a_message_list_is_left_out(
    mailbox: Mailbox, app: Cronbox
) -> None:
    await mailbox.open()
    session = app.list_sessions()[0]
    with sdb.outbound(app.session_dir(session.id)) as db, db.atomic():
        db.execute("INSERT INTO history (dialect, created_at, messages) VALUES "
                   "('openai', 'x', 'not json'), ('openai', 'x', '{\"a\": 1}')")  # fmt: skip
        sdb.add_history(db, "openai", "x", [user("hi"), answer("hello")])
    [kept] = await mailbox.load_history("openai")
    assert kept.messages == (user("hi"), answer("hello"))


def item(name: str, *, trigger: int = 1, isolated: bool = False) -> BatchItem:
    row = InboxRow(
        id=name, seq=2, kind=MessageKind.TASK, created_at="2026-01-15T09:00:00.000Z",
        process_after=None, scheduled_for=None, recurrence=None,
        timezone="UTC", series_id=name, tries=0, trigger=trigger, content={"prompt": name},
        isolated=isolated,
    )  # fmt: skip
    return BatchItem(row, name)


@pytest.mark.parametrize(
    ("ready", "limit", "batch", "rest"),
    [
        pytest.param(["a", "b", "c"], 2, ["a", "b"], ["c"], id="no-isolated-row"),
        pytest.param(["a", "I", "b"], 10, ["a", "b"], ["I"], id="others-first"),
        pytest.param(["I", "J"], 10, ["I"], ["J"], id="isolated-alone"),
        pytest.param(["ctx", "I"], 10, ["I"], ["ctx"], id="context-waits-for-a-trigger"),
        pytest.param(["a", "b", "I", "c"], 2, ["a", "b"], ["I", "c"], id="limit"),
    ],
)  # fmt: skip
def test_an_isolated_task_runs_in_a_batch_of_its_own(
    ready: list[str], limit: int, batch: list[str], rest: list[str]
) -> None:
    items = [item(n, trigger=0 if n == "ctx" else 1, isolated=n.isupper()) for n in ready]
    chosen, left = next_batch(items, limit)
    assert [i.message.id for i in chosen] == batch
    assert [i.message.id for i in left] == rest
