"""Errors a user can cause. The CLI prints their message and exits non-zero (2).

`format_validation_error` renders a pydantic ValidationError (a config, a sweep file) as one
line per problem, the same way everywhere: where, then what, then the value given when the
message does not already say it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# Imported where used, not here: pydantic (this module is imported by the CLI before any config).


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


def dotted_location(loc: Sequence[Any]) -> str:
    """("train", "num_workers") -> "train.num_workers"; list indices as [i]; () -> "<root>"."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int) and parts:
            parts[-1] += f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts) or "<root>"


def format_validation_error(
    err: Any,
    heading: str,
    *,
    location: Callable[[Sequence[Any]], str] = dotted_location,
    unknown_field: Callable[[Sequence[Any]], str] | None = None,
) -> str:
    """`heading`, then "  <where>: <what>" for each error of a pydantic ValidationError `err`.

    - a validator's own ValueError: its message alone (it names the value; pydantic's
      "Value error, " prefix dropped);
    - a missing field: "required";
    - an unknown field: unknown_field(loc), by default "unknown field";
    - any other check (type, range, length): pydantic's message and "(got <value>)".
    """
    lines = [heading]
    for e in err.errors():
        where = location(e["loc"])
        kind = e["type"]
        if kind == "value_error":
            what = str(e["msg"]).removeprefix("Value error, ")
        elif kind == "missing":
            what = "required"
        elif kind == "extra_forbidden":
            what = unknown_field(e["loc"]) if unknown_field else "unknown field"
        else:
            what = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"  {where}: {what}")
    return "\n".join(lines)
