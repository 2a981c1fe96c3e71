"""The host's Prometheus metrics (``GET /metrics``).

One registry per host (never the process-global one), so two hosts in one process, as in
the tests, never mix their figures. Labels are low-cardinality by design: an outcome, a
channel — never a task or session id.

Run figures are observed when the sweep settles an occurrence, from the run row that
settlement wrote, so ``cronbox_runs_total`` counts exactly the runs the history records as
finished while this host ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cronbox_shared.models import RunOutcome
from cronbox_shared.timeutil import parse_utc
from host.store.records import Run

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The outcome label of a run whose gate script failed (recorded as an error).
GATE_ERROR = "gate_error"
OUTCOMES = (*(o.value for o in RunOutcome), GATE_ERROR)
# The runner records a failed gate's error with this prefix (agent_runner.runner.gate_error).
GATE_PREFIX = "gate script"
DECISIONS = ("approved", "rejected")
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_SWEEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def outcome_label(run: Run) -> str | None:
    """The ``outcome`` label of a finished run: its outcome, or ``gate_error`` for an
    error its gate script caused; None while it has not finished."""
    if run.outcome is None:
        return None
    if run.outcome is RunOutcome.ERROR and (run.error or "").startswith(GATE_PREFIX):
        return GATE_ERROR
    return run.outcome.value


class Metrics:
    """Every instrument the host exports, in one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._last_ok = 0.0
        self.schedule_lag = Histogram(
            "cronbox_schedule_lag_seconds",
            "Runner start minus the process_after of the work that woke it.",
            buckets=_LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.runs = Counter(
            "cronbox_runs", "Occurrences that finished, by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.runs.labels(outcome=outcome)
        self.run_duration = Histogram(
            "cronbox_run_duration_seconds", "Started to finished, of each finished run.",
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.gate_duration = Histogram(
            "cronbox_gate_duration_seconds",
            "Duration of occurrences their gate script settled (skipped or gate_error).",
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.due_rows = Gauge(
            "cronbox_due_rows", "Rows due now (trigger rows of sessions past next_due_at).",
            registry=r,
        )  # fmt: skip
        self.pool_in_use = Gauge("cronbox_pool_in_use", "Runners alive now.", registry=r)
        self.pool_waiting = Gauge(
            "cronbox_pool_waiting", "Sessions with due work waiting for a slot.", registry=r
        )
        self.runner_starts = Counter(
            "cronbox_runner_starts", "Runners the sweep started.", registry=r
        )
        self.deliveries = Counter(
            "cronbox_deliveries", "Reply delivery attempts, by channel and outcome.",
            ["channel", "outcome"], registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "cronbox_last_success_timestamp_seconds",
            "Unix time a run last finished ok (0 before the first).", registry=r,
        )  # fmt: skip
        self.approvals = Counter(
            "cronbox_approvals",
            "Approval decisions in the run history (a person's or a timeout's), by decision.",
            ["decision"], registry=r,
        )  # fmt: skip
        self._decisions: dict[str, int] = {}
        for decision in DECISIONS:
            self.approvals.labels(decision=decision)
        self.approvals_awaiting = Gauge(
            "cronbox_approvals_awaiting", "Occurrences waiting for a person's approval now.",
            registry=r,
        )  # fmt: skip
        self.sweep_duration = Histogram(
            "cronbox_sweep_duration_seconds", "Duration of one sweep pass.",
            buckets=_SWEEP_BUCKETS, registry=r,
        )  # fmt: skip

    def finished(self, runs: Iterable[Run]) -> None:
        """Count runs settlement just finished."""
        for run in runs:
            label = outcome_label(run)
            if label is None:
                continue
            self.runs.labels(outcome=label).inc()
            if run.started_at is None or run.finished_at is None:
                continue
            took = (parse_utc(run.finished_at) - parse_utc(run.started_at)).total_seconds()
            self.run_duration.observe(max(0.0, took))
            if label in (RunOutcome.SKIPPED.value, GATE_ERROR):
                self.gate_duration.observe(max(0.0, took))
            if label == RunOutcome.OK.value:
                self._last_ok = max(self._last_ok, parse_utc(run.finished_at).timestamp())
                self.last_success.set(self._last_ok)

    def count_decisions(self, totals: dict[str, int]) -> None:
        """Advance the approvals counter to the history's totals (read at scrape time).

        Decisions are made by the CLI as well as this host, so the history is the one
        place that sees them all; a total that shrank (old runs pruned) is taken as the
        new base, never counted down.
        """
        for decision in DECISIONS:
            total = totals.get(decision, 0)
            seen = self._decisions.get(decision, 0)
            if total > seen:
                self.approvals.labels(decision=decision).inc(total - seen)
            self._decisions[decision] = total

    def delivery(self, channel: str, outcome: str) -> None:
        """Count one delivery attempt (``delivered``, ``retry`` or ``failed``)."""
        self.deliveries.labels(channel=channel, outcome=outcome).inc()

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        """The exposition text; ``refresh`` first sets the gauges read at scrape time."""
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
