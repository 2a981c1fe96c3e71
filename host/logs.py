"""How the host logs: human lines (rich on a terminal, plain otherwise) or one JSON object
per line for a supervisor.

Log calls about a session pass :func:`session_fields` as ``extra=``; the JSON format
carries those fields beside time, level, logger and message, and the human format
ignores them (the message already names the session).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from enum import StrEnum

from cronbox_shared.timeutil import fmt


class LogFormat(StrEnum):
    """``cronbox run --log-format``."""

    TEXT = "text"
    JSON = "json"


#: The ``extra=`` fields a JSON line carries when a log call sets them.
FIELDS = ("session", "session_id", "task_id", "message_id", "outcome", "runner")


def session_fields(
    name: str,
    session_id: str,
    *,
    task_id: str | None = None,
    message_id: str | None = None,
    outcome: str | None = None,
    runner: str | None = None,
) -> dict[str, str]:
    """The ``extra=`` of a log call about one session (unset fields are left out)."""
    values = {
        "session": name,
        "session_id": session_id,
        "task_id": task_id,
        "message_id": message_id,
        "outcome": outcome,
        "runner": runner,
    }
    return {key: value for key, value in values.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms, ``Z``), level, logger, message, the
    session fields the call set, and a traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": fmt(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """One plain line per record, for a log that is not a terminal: time (UTC, ms, ``Z``),
    level, logger, message, and a traceback after it when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        at = fmt(datetime.fromtimestamp(record.created, UTC))
        line = f"{at} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
