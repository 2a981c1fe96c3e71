"""Random host SIGKILLs over a mixed run, and the verdict on what they cost (issue 14).

The host runs as a real ``cronbox run`` process with real runners; the test process plays
the user (scheduling tasks, sending chats) and a webhook receiver that counts
``Idempotency-Key`` headers. Each cycle starts a host, lets it make progress, then kills
it with SIGKILL, alone or together with its runners' process groups. A last host then
finishes the work and shuts down cleanly, and the verdict is read from the records:

* lost: a one-time task or chat not completed, a series with no live occurrence;
* run twice: an occurrence answered by more than one reply, or a series slot twice;
* missing from history: a completed occurrence with no finished run record;
* delivered twice: a reply printed twice by the console, or posted to the webhook
  under two keys; posts repeating one key (a redelivery after a crash, recognisably
  the same message) are counted apart.

Shared by ``tests/test_crashes.py`` (a few kills) and ``scripts/bench/faults.py`` (30).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from cronbox_shared.models import MessageKind, MessageStatus
from host.service import Cronbox
from tests.hosting import kill_group, make_settings, replies, runner_pids, wait_for
from tests.test_e2e_restart import host_env, host_process
from tests.test_webhook import Receiver, receiver

SESSIONS = 6


@dataclass(frozen=True)
class Workload:
    kills: int
    one_time: int
    series: int
    chats: int
    seed: int = 14

    @property
    def span(self) -> float:
        """Seconds over which the one-time tasks fall due (about a cycle per kill)."""
        return 1.5 * self.kills


@dataclass(frozen=True)
class Verdict:
    kills_alone: int
    kills_with_runners: int
    lost: int
    run_twice: int
    missing_from_history: int
    printed_twice: int
    posted_under_two_keys: int
    repeated_keys: int
    replies: int

    def line(self) -> str:
        return (
            f"{self.kills_alone + self.kills_with_runners} host SIGKILLs "
            f"({self.kills_alone} alone, {self.kills_with_runners} with runners): "
            f"{self.lost} lost, {self.run_twice} run twice, {self.missing_from_history} "
            f"missing from history, {self.printed_twice + self.posted_under_two_keys} "
            f"delivered twice ({self.replies} replies; {self.repeated_keys} webhook "
            f"redeliveries under the same Idempotency-Key)"
        )


def crash_env(home: Path) -> dict[str, str]:
    """The restart tests' host environment, with webhook retries that keep up."""
    return host_env(home) | {
        "CRONBOX_WEBHOOK_TIMEOUT": "2",
        "CRONBOX_WEBHOOK_COOLDOWN": "0.2",
        "CRONBOX_DELIVERY_RETRY_BASE": "0.05",
        "CRONBOX_DELIVERY_ATTEMPTS": "1000",
    }


@contextmanager
def json_host(home: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cronbox run --log-format json``, its lines appended to ``log``."""
    with host_process(home, log, args=("--log-format", "json"), env=crash_env(home)) as proc:
        yield proc


def completed(store: Cronbox, ids: list[str]) -> int:
    return sum(r.status is MessageStatus.COMPLETED for sid in ids for r in store.inbound_rows(sid))


def all_replies(store: Cronbox, ids: list[str]) -> list[dict[str, object]]:
    """Every chat reply written, with its session's id."""
    return [r | {"session_id": sid} for sid in ids for r in replies(store, sid)]


def finished(store: Cronbox, ids: list[str], chats: int, one_time: int, hook: Receiver) -> bool:
    """Every one-time task and chat completed, every reply posted, each series ran since."""
    rows = [r for sid in ids for r in store.inbound_rows(sid)]
    done = [r for r in rows if r.series_id is None or r.recurrence is None]
    once = [r for r in done if r.kind is not MessageKind.SYSTEM]
    if len(once) < chats + one_time or any(r.status.live for r in once):
        return False
    keys = {h["idempotency-key"] for h in hook.headers}
    made = all_replies(store, ids)
    return all(f"{r['session_id']}:{r['id']}" in keys for r in made)


async def crash_run(tmp: Path, work: Workload) -> Verdict:
    """Run ``work`` with its kills and return the verdict."""
    rng = random.Random(work.seed)
    home, log = tmp / "home", tmp / "host.log"
    store = Cronbox.from_settings(make_settings(home))
    async with receiver() as hook:
        ids = [store.create_session(f"s{n}").id for n in range(SESSIONS)]
        for sid in ids:
            store.update_session(sid, webhook=hook.url)
        for n in range(work.one_time):
            after = 1 + work.span * n / max(1, work.one_time)
            store.schedule_task(
                ids[n % SESSIONS],
                {"taskId": f"once-{n}", "prompt": f"once {n}", "processAfter": f"+{after:.0f}s"},
            )
        series = [
            store.schedule_task(
                ids[n % SESSIONS], {"taskId": f"tick-{n}", "prompt": f"tick {n}",
                                    "recurrence": "@every 2s"},
            ).series_id
            for n in range(work.series)
        ]  # fmt: skip
        alone = with_runners = 0
        sent = 0
        for cycle in range(work.kills):
            with json_host(home, log) as host:
                while sent < work.chats * (cycle + 1) // work.kills:
                    store.send_message(ids[sent % SESSIONS], f"chat {sent}")
                    sent += 1
                before = await anyio.to_thread.run_sync(completed, store, ids)
                await wait_for(lambda: completed(store, ids) > before, limit=60)  # noqa: B023
                # The kill lands at a random instant of the work that follows.
                await anyio.sleep(rng.uniform(0, 0.6))
                victims = runner_pids(home) if rng.random() < 0.5 else []
                host.send_signal(signal.SIGKILL)
                for pid in victims:
                    kill_group(pid)
                alone += not victims
                with_runners += bool(victims)
        while sent < work.chats:
            store.send_message(ids[sent % SESSIONS], f"chat {sent}")
            sent += 1
        with json_host(home, log) as host:
            await wait_for(lambda: finished(store, ids, work.chats, work.one_time, hook), limit=120)
            start = {s: sum(1 for _ in store.iter_runs(s)) for s in series}
            await wait_for(
                lambda: all(sum(1 for _ in store.iter_runs(s)) > start[s] for s in series),
                limit=60,
            )
            host.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(host.wait)
        return _verdict(store, ids, log, hook, alone, with_runners)


def _verdict(
    store: Cronbox, ids: list[str], log: Path, hook: Receiver, alone: int, with_runners: int
) -> Verdict:
    rows = [r for sid in ids for r in store.inbound_rows(sid)]
    made = all_replies(store, ids)
    answers = Counter(r["in_reply_to"] for r in made)
    once = [r for r in rows if r.recurrence is None and r.kind is not MessageKind.SYSTEM]
    lost = sum(r.status is not MessageStatus.COMPLETED for r in once)
    by_series: dict[str, list[str | None]] = {}
    for r in rows:
        if r.recurrence is not None and r.series_id is not None:
            by_series.setdefault(r.series_id, []).append(r.scheduled_for)
    live = Counter(r.series_id for r in rows if r.recurrence is not None and r.status.live)
    lost += sum(live[s] != 1 for s in by_series)
    run_twice = sum(n - 1 for n in answers.values() if n > 1)
    run_twice += sum(n - 1 for v in by_series.values() for n in Counter(v).values() if n > 1)
    missing = 0
    for sid in ids:
        done = [r.id for r in store.inbound_rows(sid) if r.status is MessageStatus.COMPLETED]
        runs = store.runs_of(sid, done)
        missing += sum(1 for m in done if m not in runs or runs[m].outcome is None)
    printed = Counter(
        (line["session_id"], line["message_id"])
        for line in _log_lines(log)
        if line.get("logger") == "cronbox.reply" and "message_id" in line
    )
    keys_of: dict[str, set[str]] = {}
    for h in hook.headers:
        body = json.loads(h["body"])
        keys_of.setdefault(f"{body['session_id']}:{body['message_id']}", set()).add(
            h["idempotency-key"]
        )
    posts = Counter(h["idempotency-key"] for h in hook.headers)
    return Verdict(
        kills_alone=alone,
        kills_with_runners=with_runners,
        lost=lost,
        run_twice=run_twice,
        missing_from_history=missing,
        printed_twice=sum(n - 1 for n in printed.values() if n > 1),
        posted_under_two_keys=sum(len(k) - 1 for k in keys_of.values()),
        repeated_keys=sum(n - 1 for n in posts.values() if n > 1),
        replies=len(made),
    )


def _log_lines(log: Path) -> Iterator[dict[str, str]]:
    for raw in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a line cut short by a SIGKILL
        if isinstance(line, dict):
            yield line
