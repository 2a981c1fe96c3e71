"""The runner's poll loop: claim due rows, run their gates, hand them to the provider.

The runner meets the host only through its :class:`~agent_runner.mailbox.Mailbox`
(by default the session directory's SQLite files). Each pass claims the oldest due rows
it has not acked for their current try, runs gate scripts, gives the survivors to the
provider as one batch and settles each row ``completed``, ``failed`` or ``skipped``
together with its reply. It beats while it works and exits by itself once idle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import anyio

from agent_runner.gate import GateResult, GateVerdict, run_gate
from agent_runner.mailbox import Mailbox, Settlement, wakes_agent
from agent_runner.mailbox.sqlite import SqliteMailbox
from agent_runner.prompt import render_batch, render_context, render_row
from agent_runner.provider import Batch, BatchItem, Provider, RowOutcome, SessionContext
from agent_runner.providers import get_provider
from cronbox_shared import sessiondb as sdb
from cronbox_shared.environment import gate_environment
from cronbox_shared.models import AckStatus, InboundMessage, MessageKind, preview
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, zone

log = logging.getLogger("agent_runner")


# --- pure decisions ----------------------------------------------------------------------


def provider_needed(claimed: Sequence[InboundMessage], survivors: Sequence[InboundMessage]) -> bool:
    """Whether the rows left after the gates go to the provider.

    They do when one of them wakes the agent. A batch claimed with no ``trigger=1`` row
    at all was full of context rows with a trigger row waiting behind it: those go too,
    or the trigger row would never fit in a batch.
    """
    if wakes_agent(survivors):
        return True
    return bool(survivors) and not wakes_agent(claimed)


def gate_error(reason: str | None) -> str:
    """The recorded error of a gate script that failed, always naming the gate script."""
    reason = reason or "failed"
    return reason if reason.startswith("gate script") else f"gate script: {reason}"


def settle_gate(message: InboundMessage, result: GateResult) -> Settlement | None:
    """The ack of a row whose gate decided not to wake the agent; None when it does."""
    if result.verdict is GateVerdict.WAKE:
        return None
    output = preview(result.output_preview) or None
    if result.verdict is GateVerdict.SKIP:
        return Settlement(message, AckStatus.SKIPPED, preview=output)
    return Settlement(message, AckStatus.FAILED, error=gate_error(result.reason), preview=output)


def settle_outcome(message: InboundMessage, outcome: RowOutcome) -> Settlement:
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

    async def run(self, stop: anyio.Event) -> int:
        cleared = await self.mailbox.open()
        # The agent's working directory is a local one, whatever holds the mailbox.
        await anyio.Path(self.workspace).mkdir(exist_ok=True)
        await self.mailbox.beat()
        log.info(
            "runner started for %s (provider %s, %d stale claim(s) cleared)",
            self.session_dir.name, self.config.provider, cleared,
        )  # fmt: skip
        idle_since = anyio.current_time()
        while not stop.is_set():
            await self.mailbox.beat()
            rows = await self.mailbox.claim(self.clock.now(), self.config.max_batch)
            if rows:
                async with self._beating():
                    await self._process(rows)
                idle_since = anyio.current_time()
                continue  # more work may be waiting: poll again at once
            idle_for = anyio.current_time() - idle_since
            if idle_for >= self.config.idle_timeout:
                log.info("runner idle for %.1f s, exiting", idle_for)
                return 0
            with anyio.move_on_after(
                min(self.config.poll_interval, self.config.idle_timeout - idle_for)
            ):
                await stop.wait()
        log.info("runner stopped")
        return 0

    @asynccontextmanager
    async def _beating(self) -> AsyncIterator[None]:
        """Keep touching the heartbeat while gates and the provider work."""

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

    async def _process(self, claimed: list[InboundMessage]) -> None:
        started = anyio.current_time()
        gates = await self._run_gates(claimed)
        settled: list[Settlement] = []
        items: list[BatchItem] = []
        for row in claimed:
            result = gates.get(row.id)
            if result is None:
                items.append(BatchItem(row, render_row(row)))
            elif (settlement := settle_gate(row, result)) is not None:
                settled.append(settlement)
            else:
                text = render_row(row, gated=True, gate_data=result.data)
                items.append(BatchItem(row, text, gated=True, gate_data=result.data))

        # Record the gates' decisions now, not only after the agent's turn.
        await self._settle(settled)
        survivors = [item.message for item in items]
        if provider_needed(claimed, survivors):
            answered = await self._call_provider(items)
            await self._settle(answered)
            settled += answered
        elif survivors:
            # Context rows alone do not wake the agent: they ride with the next trigger row.
            await self.mailbox.release(survivors)
        self._log_batch(claimed, settled, anyio.current_time() - started)

    async def _settle(self, settled: Sequence[Settlement]) -> None:
        await self.mailbox.settle(self.clock.now(), settled)

    async def _run_gates(self, rows: Sequence[InboundMessage]) -> dict[str, GateResult]:
        results: dict[str, GateResult] = {}

        async def gate(row: InboundMessage, script: str) -> None:
            results[row.id] = await run_gate(
                script, cwd=self.workspace, env=self.gate_env, timeout=self.config.gate_timeout
            )

        async with anyio.create_task_group() as tg:
            for row in rows:
                if row.kind is MessageKind.TASK and row.script:
                    tg.start_soon(gate, row, row.script)
        return results

    async def _call_provider(self, items: list[BatchItem]) -> list[Settlement]:
        tz_name = self.config.timezone
        local = self.clock.now().astimezone(zone(tz_name))
        context = SessionContext(self.session_dir, tz_name, local, state=self.mailbox)
        prompt = render_batch(render_context(tz_name, local), [item.text for item in items])
        batch = Batch(tuple(items), context, prompt)
        try:
            result = await self.provider.run(batch)
        except Exception as exc:  # the provider contract: raising = every row failed
            error = error_text(exc)
            return [Settlement(item.message, AckStatus.FAILED, error=error) for item in items]
        return [settle_outcome(item.message, result.outcome_for(item.message.id)) for item in items]

    def _log_batch(
        self, claimed: Sequence[InboundMessage], settled: Sequence[Settlement], took: float
    ) -> None:
        counts = {
            status: 0 for status in (AckStatus.COMPLETED, AckStatus.SKIPPED, AckStatus.FAILED)
        }
        for s in settled:
            counts[s.status] += 1
        released = len(claimed) - len(settled)
        errors = [s.error for s in settled if s.error]
        log.info(
            "batch of %d row(s): %d completed, %d skipped, %d failed%s in %.2f s%s",
            len(claimed), counts[AckStatus.COMPLETED], counts[AckStatus.SKIPPED],
            counts[AckStatus.FAILED], f", {released} context row(s) held back" if released else "",
            took, f"; first error: {errors[0]}" if errors else "",
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
    without the secrets ``config.secret_names`` names. A batch in progress when
    ``stop`` is set is finished first. Returns the exit code (0). Raises UnknownProvider
    or RunnerConfigError before touching any file when the provider name or the
    session is wrong.
    """
    provider = get_provider(config.provider)
    mailbox = mailbox or SqliteMailbox(config.session_dir)
    env = os.environ if environ is None else environ
    return await _Runner(config, clock, provider, mailbox, env).run(stop or anyio.Event())
