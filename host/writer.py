"""The host's one writer: every write it makes runs here, one at a time, off the loop.

The sweep, delivery, the background jobs and the HTTP handlers all hand their writes to one
:class:`Writer`. Writes run in a worker thread, strictly one after another in the order
they were submitted, so no two of the host's own writes ever contend for a SQLite lock
and the event loop never waits on one. Reads do not need the writer: they run in
worker threads of their own (:func:`read`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

P = ParamSpec("P")
T = TypeVar("T")


class Writer:
    """Runs blocking write functions in a worker thread, one at a time, first come first."""

    def __init__(self) -> None:
        # One token: a write waits for the one before it (anyio's limiter is FIFO).
        self._limiter = anyio.CapacityLimiter(1)
        self.writes = 0
        self.after_write: Callable[[], object] | None = None
        """Called in the writer's thread right after each write (the host uses it to
        tell its own commits from other processes')."""

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as the only write in progress and return its result.

        Cancellation of the caller does not cut a write short: once started it finishes
        (the thread cannot be interrupted), and its result is dropped.
        """
        self.writes += 1
        return await anyio.to_thread.run_sync(
            functools.partial(self._write, fn, *args, **kwargs), limiter=self._limiter
        )

    def _write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            if self.after_write is not None:
                self.after_write()


async def read(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking read in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
