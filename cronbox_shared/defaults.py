"""Every default cronbox ships with, in one table.

The host's settings, the sweep, the runner's settings, the MCP server and the gate
scripts all read their defaults here, so a default is changed in one place. Seconds
are floats, counts are ints.
"""

from __future__ import annotations


class Defaults:
    # Class attributes, read through the one instance. Empty slots leave the instance
    # no attributes of its own, so none can be set: read-only, and cheaper to define
    # than a frozen dataclass, whose generated methods cost every process 2.5 ms.
    __slots__ = ()

    sweep_interval: float = 60.0
    """Seconds between safety-net sweeps (due work wakes the host sooner)."""
    max_containers: int = 5
    """Runners allowed at once (the pool)."""
    idle_timeout: float = 30.0
    """Seconds a runner with nothing to do keeps its slot before it exits."""
    min_interval: float = 60.0
    """Shortest allowed recurrence period, seconds."""
    max_tasks_per_session: int = 1000
    """Live tasks a session may hold."""
    task_timeout: float = 600.0
    """Seconds a run may take unless its task sets its own timeout."""
    keep_finished: float = 7 * 86400.0
    """Seconds finished rows and runs are kept before they may be cleaned up."""
    runner_poll: float = 0.2
    """Seconds between a runner's polls of its inbox (and heartbeats while it works)."""
    idle_poll: float = 10.0
    """Seconds between the fallback polls of an idle runner, and of the host watching
    idle runners and its files, when they wait on change signals instead of polling."""
    max_batch: int = 10
    """Rows handed to the agent at once, oldest first."""
    failure_backoff: float = 120.0
    """Seconds a series waits after a failed occurrence at least; doubles with each
    failure in a row, up to 30 times this (2, 4, 8, 16, 32, then 60 minutes)."""
    outbox_max_bytes: int = 64 * 1024 * 1024
    """Bytes a session's ``outbox/outbound.db`` may hold before the host stops reading it
    and quarantines the session (64 MiB)."""
    outbox_read_limit: float = 2.0
    """Seconds one read of a session's outbox may take before it is abandoned."""
    outbox_stall: float = 30.0
    """Seconds a session's outbox may stay locked by its writer before the session is
    quarantined."""
    gate_timeout: float = 30.0
    """Seconds a gate script may run."""
    history_tokens: int = 8000
    """Tokens (estimated, about 4 characters each) of earlier conversation an API
    provider sends with each wake; older turns are dropped (0: no history)."""
    gate_output_cap: int = 1024 * 1024
    """Bytes a gate script may print to stdout (1 MiB)."""
    http_host: str = "127.0.0.1"
    """Address the host's HTTP API listens on."""
    http_port: int = 8377
    """Port of the host's HTTP API (0 disables it)."""
    webhook_timeout: float = 10.0
    """Seconds a webhook receiver has to answer one POST."""
    webhook_cooldown: float = 30.0
    """Seconds a webhook's open circuit waits before one probe goes out."""
    webhook_failures: int = 5
    """Consecutive failures that open a webhook's circuit."""
    delivery_retry_base: float = 5.0
    """Seconds before a failed reply delivery is retried the first time (doubling after)."""
    delivery_attempts: int = 8
    """Attempts a channel makes at one reply before it is recorded failed."""
    backup_keep: int = 10
    """Backup archives kept under ``backups/`` (the newest)."""
    backup_at: str = "03:00"
    """Time of day (host zone) of the daily backup."""
    cleanup_at: str = "04:00"
    """Time of day (host zone) of the daily retention cleanup."""
    keep_runs_days: int = 90
    """Days a finished run stays in the history (0 keeps forever)."""
    keep_audit_days: int = 180
    """Days an audit entry is kept (0 keeps forever)."""
    stale_check_every: float = 60.0
    """Seconds between stale-run checks."""
    http_read_threads: int = 4
    """Worker threads the HTTP API's reads may use at once (the sweep keeps the rest)."""


DEFAULTS = Defaults()
