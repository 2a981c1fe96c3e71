"""The host's one writer: every write it makes runs here, one at a time, off the loop.

The sweep, delivery, the background jobs and the HTTP handlers all hand their writes to one
:class:`Writer`. Writes run in a worker thread, strictly one after another in the order
they were submitted, so no two of the host's own writes ever contend for a SQLite lock
and the event loop never waits on one. Reads do not need the writer: they run in
worker threads of their own (:func:`read`).

The HTTP API runs in a process of its own (:mod:`host.api_process`) with a writer of its
own; both hold the home's write lock (``writer.lock``, an ``flock``) for each write, so
the home still has one writer at a time — a backup taken as one write sees no API write
half done across its databases.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

from host.store.base import ChangeFeed

P = ParamSpec("P")
T = TypeVar("T")
WRITE_LOCK = "writer.lock"


class Writer:
    """Runs blocking write functions in a worker thread, one at a time, first come first."""

    def __init__(self, home: Path | None = None) -> None:
        # One token: a write waits for the one before it (anyio's limiter is FIFO).
        self._limiter = anyio.CapacityLimiter(1)
        self.writes = 0
        self._lock = home / WRITE_LOCK if home is not None else None
        self._fd: int | None = None
        self._hooks: tuple[Callable[[], object], Callable[[], object]] | None = None
        """Called in the writer's thread right before and right after each write, under
        the write lock (the host uses them to tell its own commits from other
        processes'); see :meth:`around_writes`."""

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as the only write in progress and return its result.

        Cancellation of the caller does not cut a write short: once started it finishes
        (the thread cannot be interrupted), and its result is dropped.
        """
        self.writes += 1
        return await anyio.to_thread.run_sync(
            functools.partial(self._locked, fn, *args, **kwargs), limiter=self._limiter
        )

    def _locked(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` under the home's write lock (in the writer's thread), when there is one."""
        if self._lock is None:
            return self._watched(fn, *args, **kwargs)
        if self._fd is None:
            self._fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            return self._watched(fn, *args, **kwargs)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def around_writes(self, before: Callable[[], object], after: Callable[[], object]) -> None:
        """Call ``before`` and ``after`` around every write from now on. A write already
        in progress gets neither: each write takes the pair as it starts, so the two
        always go together (``after`` may release what ``before`` took)."""
        self._hooks = (before, after)

    def _watched(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        hooks = self._hooks
        if hooks is None:
            return fn(*args, **kwargs)
        before, after = hooks
        before()
        try:
            return fn(*args, **kwargs)
        finally:
            after()

    def close(self) -> None:
        """Let go of the lock file (at shutdown)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def read(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking read in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class OutsideCommits:
    """Tells the commits of other processes (the CLI, the API) from the host's own.

    The feed reports every commit of another connection, the host's own writer's
    included; those would wake the sweep after each of its passes, forever. Followed
    by the writer, the feed is read right before each write (what it holds then is
    another process's, and kept) and right after it (the host's own, dropped). A
    commit of another process in the instant between the two is dropped with it: the
    caller needs a check of its own for what must not be missed.
    """

    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed
        self._lock = threading.Lock()
        self._kept = False

    def follow(self, writer: Writer) -> None:
        writer.around_writes(self._before, self._after)

    def _before(self) -> None:
        # Held until the write's end: a look from another thread in the middle of the
        # write (the change signal fires as the commit lands, before the writer returns)
        # would take the host's own commit for another process's.
        self._lock.acquire()
        try:
            self._kept = self._feed.changed() or self._kept
        except BaseException:
            self._lock.release()
            raise

    def _after(self) -> None:
        try:
            self._feed.changed()
        finally:
            self._lock.release()

    def changed(self) -> bool:
        """True once for every batch of outside commits since the last call."""
        with self._lock:
            seen, self._kept = self._feed.changed() or self._kept, False
        return seen
