"""The runner's poll loop: claim due rows, hand them to the provider, run gates beside it.

The runner meets the host only through its :class:`~agent_runner.mailbox.Mailbox`
(by default the session directory's SQLite files). Each pass claims the oldest due rows
it has not acked for their current try. Chat, system and ungated task rows go to the
provider at once; a gated task's script runs as a job of its own beside the loop, so no
gate delays other rows or the next claim. When a gate finishes, its row is settled
``skipped`` or ``failed`` there and then, or, woken, goes to the provider with whatever
else is ready. The provider takes one batch at a time, and each row is settled
``completed`` or ``failed`` together with its reply. The runner beats while it works and
exits by itself once idle with no gate running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from agent_runner.history import Remember
from agent_runner.mailbox import Mailbox, Settlement, wakes_agent
from agent_runner.mailbox.sqlite import SqliteMailbox
from agent_runner.prompt import render_batch, render_context, render_row
from agent_runner.provider import Batch, BatchItem, Provider, RowOutcome, SessionContext
from agent_runner.providers import get_provider
from cronbox_shared import outbox as sdb
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.environment import gate_environment
from cronbox_shared.rows import AckStatus, InboxRow, MessageKind, preview
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, zone

if TYPE_CHECKING:
    from agent_runner.gate import GateResult

log = logging.getLogger("agent_runner")


# --- pure decisions ----------------------------------------------------------------------


def provider_needed(claimed: Sequence[InboxRow], survivors: Sequence[InboxRow]) -> bool:
    """Whether the rows left after the gates go to the provider.

    They do when one of them wakes the agent. A batch just claimed with no ``trigger=1``
    row at all was full of context rows with a trigger row waiting behind it: those go
    too, or the trigger row would never fit in a batch. Context rows held from an earlier
    pass (their trigger row is still in its gate) do not go when nothing new was claimed.
    """
    if wakes_agent(survivors):
        return True
    return bool(claimed) and bool(survivors) and not wakes_agent(claimed)


def claim_limit(ready: Sequence[InboxRow], max_batch: int) -> int:
    """How many rows to claim while ``ready`` rows already wait for the provider.

    Ready rows with a trigger row go in the next batch, so claim only what fills it.
    Context rows held for a gate's row do not count: a claim cut short by them could
    come back full of fresh context rows and wake the agent for context alone.
    """
    return max_batch - len(ready) if wakes_agent(ready) else max_batch


def next_batch(ready: Sequence[BatchItem], limit: int) -> tuple[list[BatchItem], list[BatchItem]]:
    """The rows to hand the provider now, and the rows left waiting.

    An isolated task runs alone, in a conversation of its own. The other rows go
    together, up to ``limit``, as long as one of them wakes the agent; when none does,
    the first isolated row goes next, and the others wait for a row that wakes it.
    """
    isolated = [item for item in ready if item.message.isolated]
    if not isolated:
        return list(ready[:limit]), list(ready[limit:])
    shared = [item for item in ready if not item.message.isolated]
    chosen = shared[:limit] if wakes_agent([i.message for i in shared]) else isolated[:1]
    taken = {id(item) for item in chosen}
    return chosen, [item for item in ready if id(item) not in taken]


def gate_error(reason: str | None) -> str:
    """The recorded error of a gate script that failed, always naming the gate script."""
    reason = reason or "failed"
    return reason if reason.startswith("gate script") else f"gate script: {reason}"


def settle_gate(message: InboxRow, result: GateResult) -> Settlement | None:
    """The ack of a row whose gate decided not to wake the agent; None when it does."""
    from agent_runner.gate import GateVerdict  # loaded with the first gate script

    if result.verdict is GateVerdict.WAKE:
        return None
    output = preview(result.output_preview) or None
    if result.verdict is GateVerdict.SKIP:
        return Settlement(message, AckStatus.SKIPPED, preview=output)
    return Settlement(message, AckStatus.FAILED, error=gate_error(result.reason), preview=output)


def settle_outcome(message: InboxRow, outcome: RowOutcome) -> Settlement:
    """The ack of a row the provider handled (or failed to)."""
    if outcome.ok:
        return Settlement(
            message, AckStatus.COMPLETED, preview=preview(outcome.reply) or None,
            reply=outcome.reply or None,
        )  # fmt: skip
    return Settlement(message, AckStatus.FAILED, error=outcome.error)


def error_text(exc: BaseException) -> str:
    """One line for a provider's exception: its message, or its type when it has none."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the loop --------------------------------------------------------------------------


class _Runner:
    def __init__(
        self,
        config: RunnerSettings,
        clock: Clock,
        provider: Provider,
        mailbox: Mailbox,
        environ: Mapping[str, str],
    ) -> None:
        self.config = config
        self.clock = clock
        self.provider = provider
        self.mailbox = mailbox
        self.session_dir = config.session_dir
        self.workspace = config.session_dir / sdb.WORKSPACE
        self.gate_env = gate_environment(environ, config.secret_names)
        # Claimed rows waiting for the provider: ungated rows, rows their gate woke, and
        # context rows held while a gate may still wake the agent.
        self._ready: list[BatchItem] = []
        self._gates = 0  # gate jobs started and not finished (their rows are claimed)
        # As many scripts at once as one batch could start, however many rows are due.
        self._gate_slots = anyio.CapacityLimiter(config.max_batch)
        self._wakeup = anyio.Event()
        # Gate jobs settle rows while the loop claims and settles: one write at a time.
        self._writing = anyio.Lock()

    async def run(self, stop: anyio.Event) -> int:
        cleared = await self.mailbox.open()
        # The agent's working directory is a local one, whatever holds the mailbox.
        await anyio.Path(self.workspace).mkdir(exist_ok=True)
        await self.mailbox.beat()
        log.info(
            "runner started for %s (provider %s, %d stale claim(s) cleared)",
            self.session_dir.name, self.config.provider, cleared,
        )  # fmt: skip
        changes = self.mailbox.inbox_changes() if self.config.change_signal else None
        try:
            async with anyio.create_task_group() as jobs:
                jobs.start_soon(self._wake_on, stop)
                if changes is not None:
                    jobs.start_soon(self._wake_on_changes, changes)
                code = await self._loop(stop, jobs, watching=changes is not None)
                jobs.cancel_scope.cancel()  # only the watchers are left: no gate runs
        finally:
            if changes is not None:
                changes.close()
        return code

    async def _wake_on(self, stop: anyio.Event) -> None:
        await stop.wait()
        self._wakeup.set()

    async def _wake_on_changes(self, changes: ChangeWatch) -> None:
        while True:
            await changes.wait()
            self._wakeup.set()

    async def _idle_wait(self, watching: bool) -> float:
        """How long an idle runner waits for its wakeup: with a change signal until the
        next row comes due (or the slow fallback poll), else one poll interval."""
        if not watching:
            return self.config.poll_interval
        now = self.clock.now()
        due = await self.mailbox.next_due(now)
        wait = self.config.idle_poll
        if due is not None:
            wait = min(wait, max(0.0, (due - now).total_seconds()))
        return wait

    async def _loop(self, stop: anyio.Event, jobs: TaskGroup, *, watching: bool = False) -> int:
        idle_since = anyio.current_time()
        while True:
            # Set by a gate that finishes, or by stop, at any point of this pass.
            self._wakeup = anyio.Event()
            await self.mailbox.beat()
            claimed: list[InboxRow] = []
            limit = claim_limit([item.message for item in self._ready], self.config.max_batch)
            if not stop.is_set() and limit > 0:
                async with self._writing:
                    claimed = await self.mailbox.claim(self.clock.now(), limit)
                self._take(claimed, jobs)
            if await self._hand_over(claimed) or claimed:
                idle_since = anyio.current_time()
                continue  # more work may be waiting: poll again at once
            if self._gates:
                idle_since = anyio.current_time()
                wait = self.config.poll_interval
            elif stop.is_set():
                log.info("runner stopped")
                return 0
            else:
                idle_for = anyio.current_time() - idle_since
                if idle_for >= self.config.idle_timeout:
                    log.info("runner idle for %.1f s, exiting", idle_for)
                    return 0
                wait = min(await self._idle_wait(watching), self.config.idle_timeout - idle_for)
            with anyio.move_on_after(wait):
                await self._wakeup.wait()

    def _take(self, claimed: Sequence[InboxRow], jobs: TaskGroup) -> None:
        """Start the gate of each gated row; every other row is ready for the provider."""
        for row in claimed:
            if row.kind is MessageKind.TASK and row.script:
                self._gates += 1
                jobs.start_soon(self._gate, row, row.script)
            else:
                self._ready.append(BatchItem(row, render_row(row)))

    async def _hand_over(self, claimed: Sequence[InboxRow]) -> bool:
        """Give the ready rows to the provider if they need it; True when it was called."""
        rows = [item.message for item in self._ready]
        if provider_needed(claimed, rows):
            items, self._ready = next_batch(self._ready, self.config.max_batch)
            started = anyio.current_time()
            async with self._beating():
                answered, remember = await self._call_provider(items)
            await self._settle(answered, remember)
            self._log_batch(answered, anyio.current_time() - started)
            return True
        if rows and not self._gates:
            # Context rows alone do not wake the agent: they ride with the next trigger row.
            self._ready = []
            async with self._writing:
                await self.mailbox.release(rows)
            log.info("%d context row(s) held back for the next trigger row", len(rows))
        return False

    async def _gate(self, row: InboxRow, script: str) -> None:
        """Run one row's gate beside the loop; settle the row, or make it ready."""
        # A wake with no gated row never loads the gate scripts' machinery.
        from agent_runner.gate import run_gate

        try:
            async with self._gate_slots:
                result = await run_gate(
                    script, cwd=self.workspace, env=self.gate_env,
                    timeout=self.config.gate_timeout,
                )  # fmt: skip
            settlement = settle_gate(row, result)
            if settlement is None:
                text = render_row(row, gated=True, gate_data=result.data)
                self._ready.append(BatchItem(row, text, gated=True, gate_data=result.data))
            else:
                # Recorded at once, not after whatever agent turn is under way.
                await self._settle([settlement])
                log.info(
                    "gate of %s: %s%s", row.id, settlement.status.value,
                    f": {settlement.error}" if settlement.error else "",
                )  # fmt: skip
        finally:
            self._gates -= 1
            self._wakeup.set()

    @asynccontextmanager
    async def _beating(self) -> AsyncIterator[None]:
        """Keep touching the heartbeat while the provider works."""

        async def beat() -> None:
            while True:
                await anyio.sleep(self.config.poll_interval)
                await self.mailbox.beat()

        async with anyio.create_task_group() as tg:
            tg.start_soon(beat)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _settle(
        self, settled: Sequence[Settlement], remember: Remember | None = None
    ) -> None:
        async with self._writing:
            await self.mailbox.settle(self.clock.now(), settled, remember)

    async def _call_provider(
        self, items: list[BatchItem]
    ) -> tuple[list[Settlement], Remember | None]:
        tz_name = self.config.timezone
        local = self.clock.now().astimezone(zone(tz_name))
        context = SessionContext(
            self.session_dir, tz_name, local, state=self.mailbox, conversation=self.mailbox
        )
        prompt = render_batch(render_context(tz_name, local), [item.text for item in items])
        batch = Batch(tuple(items), context, prompt)
        try:
            result = await self.provider.run(batch)
        except Exception as exc:  # the provider contract: raising = every row failed
            error = error_text(exc)
            return [Settlement(item.message, AckStatus.FAILED, error=error) for item in items], None
        settled = [
            settle_outcome(item.message, result.outcome_for(item.message.id)) for item in items
        ]
        return settled, result.remember

    def _log_batch(self, settled: Sequence[Settlement], took: float) -> None:
        completed = sum(s.status is AckStatus.COMPLETED for s in settled)
        errors = [s.error for s in settled if s.error]
        log.info(
            "batch of %d row(s): %d completed, %d failed in %.2f s%s",
            len(settled), completed, len(settled) - completed, took,
            f"; first error: {errors[0]}" if errors else "",
        )  # fmt: skip


async def run_runner(
    config: RunnerSettings,
    clock: Clock,
    stop: anyio.Event | None = None,
    mailbox: Mailbox | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the poll loop until idle for ``config.idle_timeout`` or ``stop`` is set.

    ``mailbox`` defaults to the SQLite files of ``config.session_dir``; ``environ`` is
    the runner's environment (default: this process's), which its gate scripts get
    without the secrets ``config.secret_names`` names. Work in progress when ``stop`` is
    set is finished first: the provider's turn, every running gate script, and the turn
    of each row a gate wakes; nothing new is claimed. Returns the exit code (0). Raises
    UnknownProvider or RunnerConfigError before touching any file when the provider name
    or the session is wrong.
    """
    provider = get_provider(config.provider, config)
    mailbox = mailbox or SqliteMailbox(config.session_dir)
    env = os.environ if environ is None else environ
    return await _Runner(config, clock, provider, mailbox, env).run(stop or anyio.Event())
