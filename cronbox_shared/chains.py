"""Chains and approval gates: the rules the CLI, HTTP, MCP server and host share.

A chained task (``--after PARENT``) waits for its parent series; each parent occurrence
that finishes with the right outcome and an output that matches inserts one run of it.
An approval-gated task (``--approval``) has each due occurrence wait for a person. This
module validates the request fields and decides matches; nothing here writes anything.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TypeVar

from cronbox_shared.errors import InvalidInput
from cronbox_shared.models import RunOutcome

MAX_PATTERN_CHARS = 200
"""A ``whenOutput`` condition is at most this long."""
MAX_MATCHED_CHARS = 2000
"""A parent's output is matched (and shown to the child) up to this many characters."""
PARENT_OUTPUT = "{{parent.output}}"
MAX_CHAIN_DEPTH = 20
"""How many ancestors a chained task may have."""

# A repetition applied to a group that itself repeats, e.g. ``(a+)+`` or ``(a|aa)*``:
# the shapes that make a backtracking matcher take exponential time. Refused, with
# backreferences, so a match costs at most about pattern length times output length.
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*(?:[*+?}]|\|)(?:[^()\\]|\\.)*\)\s*[*+{?]")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


class AfterOutcome(StrEnum):
    """Which finished parent occurrences fire a chained task."""

    OK = "ok"
    ERROR = "error"
    """An error or a timeout."""
    ANY = "any"
    """Any run that ran: ok, error or timeout (a gate's skip, a missed slot and a
    rejection never ran, so they fire nothing)."""

    def fires_on(self, outcome: RunOutcome) -> bool:
        ran = {RunOutcome.OK, RunOutcome.ERROR, RunOutcome.TIMEOUT}
        if self is AfterOutcome.OK:
            return outcome is RunOutcome.OK
        if self is AfterOutcome.ERROR:
            return outcome in (RunOutcome.ERROR, RunOutcome.TIMEOUT)
        return outcome in ran


class OnTimeout(StrEnum):
    """What an unanswered approval becomes at its deadline."""

    REJECT = "reject"
    APPROVE = "approve"


def check_outcome(value: str | None) -> AfterOutcome:
    """``--on`` / ``afterOutcome``: ok (the default), error or any."""
    return _choice(AfterOutcome, value, AfterOutcome.OK,
                   "afterOutcome", "say which outcomes of the parent run this task")  # fmt: skip


def check_on_timeout(value: str | None) -> OnTimeout:
    """``--on-timeout`` / ``onTimeout``: reject (the default) or approve."""
    return _choice(OnTimeout, value, OnTimeout.REJECT,
                   "onTimeout", "say what an unanswered approval becomes")  # fmt: skip


_E = TypeVar("_E", bound=StrEnum)


def _choice(kind: type[_E], value: str | None, default: _E, field: str, fix: str) -> _E:
    if value is None:
        return default
    try:
        return kind(value.strip().lower())
    except ValueError:
        names = ", ".join(m.value for m in kind)
        raise InvalidInput(f'{field} "{value[:40]}" is not one of {names}; {fix}') from None


def check_when_output(value: str | None) -> str | None:
    """A ``whenOutput`` condition, checked: ``contains:TEXT`` or ``regex:PATTERN``.

    A pattern must compile, be at most 200 characters, and neither repeat a group that
    repeats or holds alternatives (``(a+)+``, ``(a|aa)*``) nor refer back to a group, so
    matching it stays cheap.
    """
    if value is None or not value.strip():
        return None
    if len(value) > MAX_PATTERN_CHARS + len("contains:"):
        raise InvalidInput(
            f"whenOutput is {len(value)} characters, over the limit of {MAX_PATTERN_CHARS}; "
            "give a shorter condition"
        )
    kind, sep, text = value.partition(":")
    if not sep or kind not in ("contains", "regex") or not text:
        raise InvalidInput(
            f'whenOutput "{value[:60]}" is not "contains:TEXT" or "regex:PATTERN"; '
            'write for example "contains:ALERT"'
        )
    if kind == "regex":
        try:
            re.compile(text)
        except re.error as exc:
            raise InvalidInput(
                f'whenOutput regex "{text[:60]}" does not compile ({exc}); fix the pattern'
            ) from None
        except RecursionError:
            raise InvalidInput("whenOutput regex is nested too deeply; simplify it") from None
        if _NESTED.search(text) or _BACKREF.search(text):
            raise InvalidInput(
                f'whenOutput regex "{text[:60]}" repeats a group that itself repeats or holds '
                "alternatives, or refers back to a group, which can take very long to match; "
                "simplify it (a character class such as [ab]* repeats safely)"
            )
    return value


def output_matches(condition: str | None, output: str | None) -> bool:
    """Whether a parent's output (its first 2000 characters) meets a checked condition."""
    if condition is None:
        return True
    text = (output or "")[:MAX_MATCHED_CHARS]
    kind, _, wanted = condition.partition(":")
    if kind == "contains":
        return wanted in text
    try:
        return re.search(wanted, text) is not None
    except (re.error, RecursionError):
        return False  # a stored condition is checked already; a damaged one never fires


def render_prompt(prompt: str, output: str | None) -> str:
    """A child's prompt with ``{{parent.output}}`` replaced by the parent's output (capped)."""
    if PARENT_OUTPUT not in prompt:
        return prompt
    text = (output or "")[:MAX_MATCHED_CHARS]
    return prompt.replace(PARENT_OUTPUT, text)
