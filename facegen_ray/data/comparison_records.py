"""The comparison store's record checks: what a stored comparison, pair or vote must hold to be
used (readers skip anything else with a warning), and the sides and choices they name."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from facegen_ray.data.feedback import check_id

SIDES = ("left", "right")
CHOICES = ("left", "right", "cant_tell")


def is_id(value: Any) -> bool:
    try:
        check_id(value)
        return True
    except ValueError:
        return False


def _is_version(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def comparison_record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict) or not is_id(rec.get("comparison_id")):
        return "no valid comparison_id"
    for side in ("baseline", "candidate"):
        if not isinstance(rec.get(side), dict) or not _is_version(rec[side].get("version")):
            return f"no {side} version"
    if not isinstance(rec.get("started"), str):
        return "no start time"
    return None


def pair_record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict) or not is_id(rec.get("pair_id")) or not is_id(rec.get("comparison_id")):
        return "no valid pair_id/comparison_id"
    if rec.get("candidate_side") not in SIDES:
        return "candidate_side is not left/right"
    if not _is_version(rec.get("candidate")) or not _is_version(rec.get("baseline")):
        return "no candidate/baseline version"
    try:
        _dt.datetime.fromisoformat(rec["expires"])
    except (KeyError, TypeError, ValueError):
        return "no valid expiry time"
    return None


def vote_record_problem(rec: Any) -> str | None:
    """Why `rec` is not a usable vote (None when it is): what the tally relies on is checked."""
    if not isinstance(rec, dict) or not is_id(rec.get("pair_id")) or not is_id(rec.get("vote_id")):
        return "no valid pair_id/vote_id"
    if rec.get("choice") not in CHOICES or rec.get("winner") not in ("candidate", "baseline", "cant_tell"):
        return "choice/winner is not one of the known values"
    if not _is_version(rec.get("candidate")) or not _is_version(rec.get("baseline")):
        return "no candidate/baseline version"
    if rec["winner"] != "cant_tell" and rec.get("winner_version") != rec[rec["winner"]]:
        return "winner_version does not match the winner"
    return None


def comparison_info(cmp: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A comparison as the admin routes show it (schemas.ComparisonInfo)."""
    c = counts.get(cmp["comparison_id"], {})
    return {
        "comparison_id": cmp["comparison_id"],
        "baseline": cmp["baseline"]["version"],
        "candidate": cmp["candidate"]["version"],
        "started": cmp["started"],
        "stopped": cmp.get("stopped"),
        **{k: int(c.get(k, 0)) for k in ("votes", "wins", "losses", "cant_tell")},
    }
