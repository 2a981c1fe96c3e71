"""Host settings: ``CRONBOX_*`` environment variables and ``.env`` (pydantic-settings)."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.settings import ENV_PREFIX
from cronbox_shared.timeutil import resolve_host_timezone
from host.environ import DOTENV, default_home


class Settings(BaseSettings):
    """Everything an operator can set; see the configuration table in README.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=DOTENV, extra="ignore")

    home: Path = Field(default_factory=default_home)
    sweep_interval: float = Field(default=DEFAULTS.sweep_interval, gt=0)
    max_containers: int = Field(default=DEFAULTS.max_containers, ge=1)
    idle_timeout: float = Field(default=DEFAULTS.idle_timeout, gt=0)
    runtime: Literal["process", "docker"] = "process"
    fork_server: bool = True
    """The process runtime forks runners from a warm template instead of starting each
    as a fresh interpreter (``CRONBOX_FORK_SERVER``; ``0`` spawns them)."""
    change_signal: bool = True
    """Idle runners and the host wait on change signals (inotify) instead of polling
    (``CRONBOX_CHANGE_SIGNAL``; ``0`` polls as before, 5 times a second)."""
    idle_poll: float = Field(default=DEFAULTS.idle_poll, gt=0)
    """Seconds between the fallback polls of what waits on a change signal
    (``CRONBOX_IDLE_POLL``); keep it under the 30 s heartbeat ceiling."""
    min_interval: float = Field(default=DEFAULTS.min_interval, gt=0)
    max_tasks_per_session: int = Field(default=DEFAULTS.max_tasks_per_session, ge=1)
    task_timeout: float = Field(default=DEFAULTS.task_timeout, gt=0)
    failure_backoff: float = Field(default=DEFAULTS.failure_backoff, gt=0)
    """Seconds a series waits after a failed occurrence at least (``CRONBOX_FAILURE_BACKOFF``);
    it doubles with each failure in a row, up to 30 times this."""
    keep_finished: float = Field(default=DEFAULTS.keep_finished, gt=0)
    """Seconds a finished inbox row is kept (``CRONBOX_KEEP_FINISHED``); runs stay."""
    image: str | None = None
    """The agent image of the docker runtime (``CRONBOX_IMAGE``; ``cronbox-agent:<version>``)."""
    docker_network: str = "none"
    docker_memory: str = "512m"
    docker_cpus: float = Field(default=1.0, gt=0)
    docker_pids: int = Field(default=256, ge=16)
    docker_user: str = Field(default="1000:1000", pattern=r"^[1-9][0-9]*:[0-9]+$")
    """uid:gid containers run as when the host runs as root (else the host's own)."""
    http_host: str = DEFAULTS.http_host
    """Address the HTTP API listens on (``CRONBOX_HTTP_HOST``)."""
    http_port: int = Field(default=DEFAULTS.http_port, ge=0, le=65535)
    """Port of the HTTP API; 0 disables it (``CRONBOX_HTTP_PORT``)."""
    api_key: str | None = None
    """When set, every ``/api/`` request must carry it in ``x-api-key``."""
    webhook_timeout: float = Field(default=DEFAULTS.webhook_timeout, gt=0)
    webhook_cooldown: float = Field(default=DEFAULTS.webhook_cooldown, gt=0)
    webhook_failures: int = Field(default=DEFAULTS.webhook_failures, ge=1)
    delivery_retry_base: float = Field(default=DEFAULTS.delivery_retry_base, gt=0)
    delivery_attempts: int = Field(default=DEFAULTS.delivery_attempts, ge=1)
    backup_keep: int = Field(default=DEFAULTS.backup_keep, ge=1)
    backup_at: time = Field(default=time.fromisoformat(DEFAULTS.backup_at))
    cleanup_at: time = Field(default=time.fromisoformat(DEFAULTS.cleanup_at))
    keep_runs_days: int = Field(default=DEFAULTS.keep_runs_days, ge=0)
    keep_audit_days: int = Field(default=DEFAULTS.keep_audit_days, ge=0)
    outbox_max_bytes: int = Field(default=DEFAULTS.outbox_max_bytes, ge=64 * 1024)
    """Bytes a session's outbound.db may hold before the session is quarantined."""
    outbox_read_limit: float = Field(default=DEFAULTS.outbox_read_limit, gt=0)
    """Seconds one read of an outbox may take before the session is quarantined."""
    outbox_stall: float = Field(default=DEFAULTS.outbox_stall, gt=0)
    """Seconds an outbox may stay locked by its writer before the session is quarantined."""
    stale_check_every: float = Field(default=DEFAULTS.stale_check_every, gt=0)
    jobs_disabled: str = ""
    """Comma-separated background jobs not to run on their schedule (``backup,cleanup``)."""

    def disabled_jobs(self) -> frozenset[str]:
        """The names in ``CRONBOX_JOBS_DISABLED``."""
        return frozenset(n.strip() for n in self.jobs_disabled.split(",") if n.strip())

    def timezone(self) -> str:
        """The host's zone name (TZ env, ``TZ=`` in ./.env, system zone, UTC)."""
        tz, _source = resolve_host_timezone()
        return tz.key
