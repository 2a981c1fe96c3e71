"""The ``docker`` runtime: each session's agent runner in a hardened container (SPEC §7).

A container sees only its session: ``inbox/`` read-only, ``outbox/`` and ``workspace/``
read-write, under ``/session``; nothing else of the host. It runs as a non-root user on
a read-only root filesystem (a small tmpfs at ``/tmp``), with every capability dropped,
``no-new-privileges``, memory (no swap), CPU and pids limits, the engine's init as PID 1
(it reaps gate scripts' zombies), no network unless the session names one, and the
runner environment allowlist (``cronbox_shared.environment``) with nothing of the
host's own variables.

Containers carry labels: ``cronbox.home`` (an opaque id kept in the home, never a path)
and ``cronbox.session``. A restarted host adopts the running ones and removes the
exited ones, so a crash leaves no stray and never a second container for a session. A
container exits by itself after its runner's idle timeout; the runtime reads its exit
status and last log line, then removes it. Every engine call runs in a worker thread.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import docker
import docker.errors
import requests
from docker import DockerClient
from docker.models.containers import Container
from docker.types import LogConfig, Mount

from cronbox_shared.environment import runner_environment
from cronbox_shared.errors import CronboxError, EngineUnavailable, ImageMissing
from cronbox_shared.sessiondb import GATEWAY, INBOX, OUTBOX, WORKSPACE
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, SystemClock, fmt, parse_utc
from host.limits import DEFAULT_LIMITS, ContainerLimits, memory_bytes
from host.runtimes.base import RunnerHandle, RunnerSpec, RunnerStartFailed

__all__ = [
    "HOME_LABEL", "SESSION_LABEL", "DockerConfig", "DockerRuntime", "connect", "default_image",
    "home_id",
]  # fmt: skip

log = logging.getLogger("cronbox.docker")
T = TypeVar("T")

IMAGE_NAME = "cronbox-agent"
HOME_LABEL = "cronbox.home"
SESSION_LABEL = "cronbox.session"
STARTED_LABEL = "cronbox.started_at"
HOME_ID_FILE = "host-id"
MOUNT_ROOT = "/session"
# How much of a container's log is read for its last words, and how much it may keep.
_TAIL_LINES = 20
_LOG_CONFIG = {"max-size": "1m", "max-file": "2"}
_TMPFS = "rw,nosuid,nodev,noexec,size=64m"


@dataclass(frozen=True)
class DockerConfig:
    """The host's settings for containers; a session's own limits override them."""

    image: str
    defaults: ContainerLimits
    user: str = "1000:1000"
    """uid:gid the containers run as when the host itself runs as root."""

    @classmethod
    def default(cls) -> DockerConfig:
        """This release's image with the built-in limits."""
        return cls(image=default_image(), defaults=DEFAULT_LIMITS)


def home_id(home: Path) -> str:
    """The home's opaque id for labels, made once and kept in ``<home>/host-id``.

    Written to a temporary file and linked into place, so a reader never sees a
    half-written id and two hosts racing for it agree on the one that was linked first.
    """
    path = Path(home) / HOME_ID_FILE
    if not path.exists():
        tmp = path.with_name(f"{HOME_ID_FILE}.{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_hex(8) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    value = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{16}", value):
        raise CronboxError(f"{path} does not hold a cronbox home id; remove it and start again")
    return value


@dataclass
class _Ended:
    code: int | None
    words: str | None


class DockerRuntime:
    """Runs ``python -m agent_runner`` of ``config.image`` in one container per session."""

    name = "docker"

    def __init__(
        self, config: DockerConfig, *, client: DockerClient | None = None,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self._client = client
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._ended: dict[RunnerHandle, _Ended] = {}
        self._limits: dict[RunnerHandle, ContainerLimits] = {}

    # -- checks at host start ---------------------------------------------------------

    def check_ready(self) -> None:
        """Raise EngineUnavailable or ImageMissing in one sentence; blocking, call at start."""
        try:
            self.client.images.get(self.config.image)
        except docker.errors.ImageNotFound:
            raise ImageMissing(self.config.image) from None
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(engine_reason(exc)) from exc

    @property
    def client(self) -> DockerClient:
        """The engine's client, connected on first use (EngineUnavailable when it can't)."""
        if self._client is None:
            self._client = connect()
        return self._client

    # -- the Runtime protocol ---------------------------------------------------------

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        return await _engine_call(self._start_sync, spec)

    async def is_running(self, handle: RunnerHandle) -> bool:
        return await _engine_call(self._is_running_sync, handle)

    async def exit_code(self, handle: RunnerHandle) -> int | None:
        ended = await self._end_of(handle)
        return ended.code if ended else None

    async def last_words(self, handle: RunnerHandle) -> str | None:
        ended = await self._end_of(handle)
        return ended.words if ended else None

    async def _end_of(self, handle: RunnerHandle) -> _Ended | None:
        """What an exited container left (None while it runs, or when nothing is known)."""
        if await self.is_running(handle):
            return None
        with self._lock:
            return self._ended.get(handle)

    async def stop(self, handle: RunnerHandle, grace: float) -> None:
        await _engine_call(self._stop_sync, handle, grace)

    async def kill(self, handle: RunnerHandle) -> None:
        await _engine_call(self._kill_sync, handle)

    async def list_own(self, home: Path) -> list[RunnerHandle]:
        return await _engine_call(self._list_own_sync, home)

    async def engine_version(self) -> str:
        """The engine's version (``/version`` of the HTTP API shows it)."""
        return await _engine_call(lambda: str(self.client.version().get("Version", "unknown")))

    def close(self) -> None:
        """Close the engine client's connections; the containers keep running."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- blocking halves --------------------------------------------------------------

    def _start_sync(self, spec: RunnerSpec) -> RunnerHandle:
        label = home_id(spec.home)
        name = f"cronbox-{label}-{spec.session_id}"
        limits = self._effective(spec.limits)
        started = self._clock.now()
        try:
            memory = memory_bytes(limits.memory or "512m")
            env = self._environment(spec)
            user = self._prepare_files(spec.session_dir)
        except (CronboxError, OSError) as exc:
            raise RunnerStartFailed(spec.session_id, str(exc)) from exc
        client = self.client
        try:
            old = client.containers.get(name)
        except docker.errors.NotFound:
            old = None
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(engine_reason(exc)) from exc
        if old is not None:
            if old.status == "running":
                # Never a second container for a session: the one running is its runner.
                handle = _handle_of(old)
                if handle is not None:
                    return handle
            self._remove(old)
        try:
            container = client.containers.run(
                self.config.image,
                name=name,
                detach=True,
                init=True,
                user=user,
                read_only=True,
                tmpfs={"/tmp": _TMPFS},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                mem_limit=memory,
                memswap_limit=memory,  # no swap beyond the limit
                nano_cpus=int((limits.cpus or 1.0) * 1e9),
                pids_limit=limits.pids,
                network_mode=limits.network or "none",
                ipc_mode="private",
                environment=env,
                working_dir=f"{MOUNT_ROOT}/{WORKSPACE}",
                mounts=[
                    _bind(spec.session_dir / INBOX, read_only=True),
                    _bind(spec.session_dir / OUTBOX, read_only=False),
                    _bind(spec.session_dir / WORKSPACE, read_only=False),
                    # The model gateway's socket (a socket on a read-only mount connects).
                    _bind(spec.session_dir / GATEWAY, read_only=True),
                ],
                labels={
                    HOME_LABEL: label, SESSION_LABEL: spec.session_id, STARTED_LABEL: fmt(started),
                },
                log_config=LogConfig(type=LogConfig.types.JSON, config=_LOG_CONFIG),
                stop_signal="SIGTERM",
            )  # fmt: skip
        except docker.errors.ImageNotFound:
            raise RunnerStartFailed(spec.session_id, str(ImageMissing(self.config.image))) from None
        except docker.errors.APIError as exc:
            raise RunnerStartFailed(spec.session_id, engine_reason(exc)) from exc
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(engine_reason(exc)) from exc
        handle = RunnerHandle(spec.session_id, str(container.short_id), started)
        with self._lock:
            for old_handle in [h for h in self._ended if h.session_id == spec.session_id]:
                del self._ended[old_handle]
            self._limits[handle] = limits
        return handle

    def _effective(self, limits: ContainerLimits | None) -> ContainerLimits:
        return (limits or ContainerLimits()).over(self.config.defaults.over(DEFAULT_LIMITS))

    def _environment(self, spec: RunnerSpec) -> dict[str, str]:
        """The allowlist: the runner's settings (its session dir as the container sees
        it), its secrets; none of the host's own variables, not even PATH or HOME."""
        settings = dict(spec.env)
        settings[RunnerSettings.env_name("session_dir")] = MOUNT_ROOT
        return runner_environment({}, settings, spec.secrets)

    def _prepare_files(self, session_dir: Path) -> str:
        """The container's uid:gid; as root, hand it the outbox and workspace (only)."""
        (session_dir / GATEWAY).mkdir(mode=0o755, exist_ok=True)  # mounted, so it must exist
        if os.geteuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        uid, gid = (int(part) for part in self.config.user.split(":"))
        for sub in (OUTBOX, WORKSPACE):
            top = session_dir / sub
            top.mkdir(parents=True, exist_ok=True)
            if top.stat().st_uid != uid:
                _chown_tree(top, uid, gid)
        # The runner reads its inbox; it never writes there (the mount is read-only).
        inbox = session_dir / INBOX
        inbox.chmod(0o755)
        for path in inbox.iterdir():
            if path.is_file() and not path.is_symlink():
                path.chmod(0o644)
        return f"{uid}:{gid}"

    def _container(self, handle: RunnerHandle) -> Container | None:
        try:
            return self.client.containers.get(handle.ref)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(engine_reason(exc)) from exc

    def _is_running_sync(self, handle: RunnerHandle) -> bool:
        with self._lock:
            if handle in self._ended:
                return False
        container = self._container(handle)
        if container is not None and container.status in {"running", "created", "restarting"}:
            return True
        self._record_end(handle, container)
        return False

    def _record_end(self, handle: RunnerHandle, container: Container | None) -> None:
        """Keep the exit status and last words of a container that is done, then remove it."""
        ended = _Ended(code=None, words=None)
        if container is not None:
            state: dict[str, Any] = container.attrs.get("State", {})
            code = state.get("ExitCode")
            ended.code = _exit_status(code) if isinstance(code, int) else None
            ended.words = self._last_words(container)
            if state.get("OOMKilled"):
                with self._lock:
                    limits = self._limits.get(handle)
                limit = limits.memory if limits and limits.memory else "its memory limit"
                ended.words = f"killed: the container ran out of memory (limit {limit})"
            self._remove(container)
        with self._lock:
            self._ended[handle] = ended
            self._limits.pop(handle, None)

    def _last_words(self, container: Container) -> str | None:
        try:
            tail = bytes(container.logs(tail=_TAIL_LINES)).decode("utf-8", "replace")
        except docker.errors.DockerException:
            return None
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1][:500] if lines else None

    def _remove(self, container: Container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # removal already in progress
                raise

    def _stop_sync(self, handle: RunnerHandle, grace: float) -> None:
        container = self._container(handle)
        if container is None or container.status not in {"running", "created", "restarting"}:
            self._record_end(handle, container)
            return
        try:
            # SIGTERM to the init, which passes it to the runner; SIGKILL after the grace.
            container.stop(timeout=max(1, math.ceil(grace)))
            container.wait(timeout=max(5, math.ceil(grace) + 5))
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # the engine's own timeout: kill outright
            log.debug("stopping container %s: %s", handle.ref[:12], exc)
            self._kill_sync(handle)
            return
        self._record_end(handle, self._container(handle))

    def _kill_sync(self, handle: RunnerHandle) -> None:
        container = self._container(handle)
        if container is not None and container.status in {"running", "created", "restarting"}:
            try:
                container.kill()
                container.wait(timeout=30)
            except docker.errors.NotFound:
                container = None
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: it stopped meanwhile
                    raise
            if container is not None:
                container = self._container(handle)
        self._record_end(handle, container)

    def _list_own_sync(self, home: Path) -> list[RunnerHandle]:
        label = home_id(home)
        try:
            found = self.client.containers.list(
                all=True, filters={"label": f"{HOME_LABEL}={label}"}
            )
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(engine_reason(exc)) from exc
        newest: dict[str, tuple[RunnerHandle, Container]] = {}
        for container in found:
            handle = _handle_of(container)
            if handle is None or container.status != "running":
                self._remove(container)
                continue
            kept = newest.get(handle.session_id)
            if kept is None or kept[0].started_at < handle.started_at:
                if kept is not None:
                    self._remove(kept[1])
                newest[handle.session_id] = (handle, container)
            else:
                self._remove(container)
        return [handle for handle, _ in newest.values()]


async def _engine_call(work: Callable[..., T], *args: Any) -> T:
    """Run one blocking engine call in a worker thread; a lost connection to the engine
    (which the client raises as a requests error) becomes EngineUnavailable."""
    try:
        return await anyio.to_thread.run_sync(work, *args)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise EngineUnavailable(engine_reason(exc)) from exc


def _bind(source: Path, *, read_only: bool) -> Mount:
    return Mount(
        target=f"{MOUNT_ROOT}/{source.name}", source=str(source), type="bind",
        read_only=read_only,
    )  # fmt: skip


def _handle_of(container: Container) -> RunnerHandle | None:
    labels: dict[str, str] = container.labels or {}
    session_id = labels.get(SESSION_LABEL)
    started = labels.get(STARTED_LABEL)
    if not session_id or not started:
        return None
    try:
        started_at: datetime = parse_utc(started)
    except ValueError:
        return None
    return RunnerHandle(session_id, str(container.short_id), started_at)


def _exit_status(code: int) -> int:
    """The engine's 128+N for a signal-killed runner as the Protocol's -N."""
    return -(code - 128) if 128 < code < 160 else code


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def default_image() -> str:
    """``cronbox-agent:<version>``: the image this release's runtime starts."""
    return f"{IMAGE_NAME}:{package_version('cronbox')}"


def connect() -> DockerClient:
    """A client of the engine ``DOCKER_HOST`` (or the local socket) names, checked alive.

    Raises EngineUnavailable with the client's reason in one sentence.
    """
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(engine_reason(exc)) from exc
    return client


def engine_reason(exc: BaseException) -> str:
    """The first line of an engine error, short enough for a sentence."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
