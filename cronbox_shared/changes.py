"""Change signals: wait for files to change instead of polling them (inotify).

An idle runner waits for its inbox to change and the host waits for cronbox.db, its
doorbell and the outboxes of its live runners to change, each with a slow fallback poll
in case a signal is missed (a file system without inotify events, such as some network
mounts). Linux's inotify is reached through the C library with ``ctypes``: no package is
needed, and the runner's container image has nothing to install. Where inotify is not
available :meth:`ChangeWatch.open` returns None and the caller polls as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import anyio

__all__ = ["ChangeWatch"]

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_MODIFY = 0x002
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_ONLYDIR = 0x01000000
_IN_Q_OVERFLOW = 0x4000
# Not IN_CLOSE_WRITE: SQLite opens its files read-write even to read them, so every read
# would look like a change (and a runner and its host would wake each other forever).
_MASK = _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
_READ_SIZE = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    # The process's own symbols include the C library's (find_library would run ldconfig).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - present only on Linux
    except (OSError, AttributeError):
        return None
    return libc


@dataclass(frozen=True)
class _Watch:
    directory: Path
    prefixes: tuple[str, ...]
    """Only names starting with one of these count; empty: every name."""
    tag: str

    def counts(self, name: str) -> bool:
        return not self.prefixes or name.startswith(self.prefixes)


class ChangeWatch:
    """One inotify instance watching some directories, each for some of its files.

    Not thread-safe: use it from one event loop (its blocking calls are non-blocking
    system calls, cheap enough for the loop).
    """

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        self._watches: dict[int, _Watch] = {}
        self._by_dir: dict[Path, int] = {}

    @classmethod
    def open(cls) -> ChangeWatch | None:
        """A new watch, or None where inotify is not available."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return None
        return cls(libc, fd)

    def fileno(self) -> int:
        return self._fd

    def add(self, directory: Path, prefixes: tuple[str, ...] = (), tag: str = "") -> bool:
        """Watch ``directory`` for files whose name starts with one of ``prefixes`` (every
        file when empty) being created, written, moved in or deleted; False when it
        cannot be watched (gone, or the inotify limit reached)."""
        directory = Path(directory)
        if directory in self._by_dir:
            return True
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            return False
        self._watches[wd] = _Watch(directory, prefixes, tag)
        self._by_dir[directory] = wd
        return True

    def remove(self, directory: Path) -> None:
        """Stop watching ``directory`` (nothing happens when it was not watched)."""
        wd = self._by_dir.pop(Path(directory), None)
        if wd is not None:
            self._watches.pop(wd, None)
            self._libc.inotify_rm_watch(self._fd, wd)

    @property
    def directories(self) -> set[Path]:
        return set(self._by_dir)

    def take(self) -> set[str]:
        """Read every pending event; the tags of the watches whose files changed.

        A queue overflow counts as a change of every watch.
        """
        tags: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return tags
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    tags.update(w.tag for w in self._watches.values())
                    continue
                watch = self._watches.get(wd)
                if watch is not None and watch.counts(os.fsdecode(raw.rstrip(b"\0"))):
                    tags.add(watch.tag)

    async def wait(self) -> set[str]:
        """Wait until a watched file changes; the tags of the watches that changed."""
        while True:
            await anyio.wait_readable(self._fd)
            tags = self.take()
            if tags:
                return tags

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
