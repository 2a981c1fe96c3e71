"""Arguments of the wrong type, told to the agent as sentences it can act on.

The SDK checks a call's arguments against the tool function's signature before the tool
runs, and its ``ValidationError`` text (a pydantic report with a documentation URL) is
written for a Python programmer. :func:`argument_sentence` says the same in one
sentence per argument: ``prompt must be text, not a number``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cronbox_shared.errors import shown

# More than this many bad arguments in one call is a muddle; the first few say enough.
_MAX_SENTENCES = 3


def kind_of(value: object) -> str:
    """What a JSON value is, in words: "a number", "a list", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "text" if isinstance(value, str) else f"a {type(value).__name__}"


def _choices(expected: object) -> str:
    """pydantic's ``'pending' or 'paused'`` as ``"pending" or "paused"``."""
    return str(expected).replace("'", '"')


def _sentence(err: Any) -> str:
    where = ".".join(shown(part) for part in err["loc"]) or "the arguments"
    value = err.get("input")
    kind = err["type"]
    if kind == "missing":
        return f"{where} is required but was not given"
    if kind == "string_type":
        return f"{where} must be text, not {kind_of(value)}"
    if kind == "literal_error":
        expected = _choices((err.get("ctx") or {}).get("expected", ""))
        if isinstance(value, str):
            return f'{where} "{shown(value)}" is not one of the choices; use {expected}'
        return f"{where} must be {expected}, not {kind_of(value)}"
    if kind in ("int_type", "int_parsing", "float_type", "float_parsing"):
        return f"{where} must be a number, not {kind_of(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{where} must be true or false, not {kind_of(value)}"
    return f"{where}: {err['msg']}"


def argument_sentence(exc: ValidationError) -> str:
    """The problems of a call's arguments, one short sentence each, joined by "; "."""
    errors = exc.errors(include_url=False, include_context=True, include_input=True)
    sentences = [_sentence(err) for err in errors[:_MAX_SENTENCES]]
    return "; ".join(sentences) or "the arguments are not valid"
