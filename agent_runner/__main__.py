"""``python -m agent_runner``: run one session's agent runner from its environment.

Exit codes: 0 after going idle or on SIGTERM/SIGINT (the batch in progress is finished
first), 1 when a second signal stopped it mid-batch, 2 for a bad environment or an
unknown provider (one line on stderr).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping

import anyio
from anyio.abc import TaskStatus

from agent_runner.runner import run_runner
from cronbox_shared.errors import CronboxError
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import SystemClock

log = logging.getLogger("agent_runner")

EXIT_BAD_ENV = 2
EXIT_INTERRUPTED = 1


async def _stop_on_signals(
    stop: anyio.Event,
    scope: anyio.CancelScope,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                # Rows still claimed stay `processing`; the host retries them.
                log.warning("%s again: stopping now", name)
                scope.cancel()
                return
            log.info("%s: finishing the current batch, then exiting", name)
            stop.set()


async def _serve(config: RunnerSettings) -> int:
    stop = anyio.Event()
    code = EXIT_INTERRUPTED
    async with anyio.create_task_group() as tg:
        await tg.start(_stop_on_signals, stop, tg.cancel_scope)
        try:
            code = await run_runner(config, SystemClock(), stop)
        except CronboxError as exc:
            code = _refuse(exc)
        tg.cancel_scope.cancel()
    return code


def _refuse(exc: CronboxError) -> int:
    print(f"agent_runner: {exc}", file=sys.stderr)  # noqa: T201 - the one-line user error
    return EXIT_BAD_ENV


def main(environ: Mapping[str, str] | None = None) -> int:
    """Read the environment, run the runner, return the process exit code."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = RunnerSettings.from_env(os.environ if environ is None else environ)
    except CronboxError as exc:
        return _refuse(exc)
    return anyio.run(_serve, config)


if __name__ == "__main__":
    sys.exit(main())
