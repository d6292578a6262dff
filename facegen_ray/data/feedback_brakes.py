"""Poisoning brakes of the feedback merge: which opinions count, and how much one retrain takes.

Approved images go back into training, so whoever approves decides the next training set. The
serve app already gives every opinion a rater and rate-limits raters and addresses
(serve/identity.py, serve/ratelimit.py); here, at merge time, three more rules apply:

  quarantine  a rater's opinions are held back (not counted, either way) when
              - the opinion came less than retrain.quarantine_new_rater_minutes after the rater
                was first seen (the session's signed issue time, else the rater's first record), or
              - the rater made more than retrain.quarantine_approvals_per_hour approvals within
                any one hour (then all of that rater's opinions are held back).
  review      with retrain.review set (a file from `facegen feedback review --out`), only image
              ids listed in it are merged.
  cap         at most min(retrain.max_feedback_images, max(1, floor(retrain.max_feedback_share x
              base images))) images per merge; the most-approved first (ties: by image id).

The per-rater breakdown (approvals counted, images they helped merge, held back and why) goes
into the merged version's manifest and the retrain / gate report, so a reviewer sees when a few
raters decide a model.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from facegen_ray.data.feedback import rater_of
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage

HOUR_S = 3600.0


@dataclass(frozen=True)
class Brakes:
    """The merge's limits (RetrainConfig fields of the same names)."""

    quarantine_new_rater_minutes: float = 0.0
    quarantine_approvals_per_hour: int | None = None
    review: frozenset[str] | None = None


@dataclass
class HeldBack:
    """What the quarantine removed: rater -> reason, and how many opinions."""

    raters: dict[str, str] = field(default_factory=dict)
    opinions: int = 0


def _ts(value: Any) -> float | None:
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def _max_in_window(times: list[float], window: float) -> int:
    """The most timestamps inside any `window`-second span."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def quarantine(records: list[dict[str, Any]], brakes: Brakes) -> tuple[list[dict[str, Any]], HeldBack]:
    """(records that count, what was held back) under the quarantine rules above."""
    by_rater: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_rater[rater_of(rec)].append(rec)
    held = HeldBack()
    kept: list[dict[str, Any]] = []
    min_age = brakes.quarantine_new_rater_minutes * 60.0
    for rater, recs in by_rater.items():
        created = [t for t in (_ts(r.get("created")) for r in recs) if t is not None]
        approvals = [t for r in recs if r.get("approved") for t in [_ts(r.get("created"))] if t is not None]
        if brakes.quarantine_approvals_per_hour is not None:
            peak = _max_in_window(approvals, HOUR_S)
            if peak > brakes.quarantine_approvals_per_hour:
                held.raters[rater] = f"{peak} approvals within an hour"
                held.opinions += len(recs)
                continue
        since = [float(r["rater_since"]) for r in recs if isinstance(r.get("rater_since"), (int, float))]
        first = min(since + created) if (since or created) else None
        young = 0
        for r in recs:
            t = _ts(r.get("created"))
            if min_age > 0 and (first is None or t is None or t - first < min_age):
                young += 1
            else:
                kept.append(r)
        if young:
            held.opinions += young
            held.raters.setdefault(
                rater, f"{young} opinion(s) within {brakes.quarantine_new_rater_minutes:g} min of first seen"
            )
    return kept, held


def merge_cap(base_images: int, max_images: int, max_share: float) -> int:
    """Feedback images one merge may add to a base of `base_images` images."""
    return max(1, min(int(max_images), math.floor(max_share * max(0, int(base_images)))))


def rater_report(items: list[Any], summaries: dict[str, dict[str, Any]], held: HeldBack) -> dict[str, Any]:
    """Per rater: approvals counted (any image), merged images they approved, and the held back
    ones; sorted by merged images, most first."""
    merged: dict[str, int] = defaultdict(int)
    approvals: dict[str, int] = defaultdict(int)
    for s in summaries.values():
        for rater, ok in s.get("raters", {}).items():
            approvals[rater] += int(ok)
    for it in items:
        for rater, ok in summaries[it.image_id].get("raters", {}).items():
            merged[rater] += int(ok)
    rows = sorted(
        ({"rater": r, "approvals": approvals[r], "merged_images": merged.get(r, 0)} for r in approvals),
        key=lambda x: (-x["merged_images"], -x["approvals"], x["rater"]),
    )
    n = len(items)
    top = rows[0]["merged_images"] / n if rows and n else 0.0
    return {
        "raters": len(rows),
        "top_rater_share": round(top, 4),  # share of merged images the busiest rater approved
        "by_rater": rows[:50],
        "held_back": dict(sorted(held.raters.items())[:200]),
        "held_back_raters": len(held.raters),
        "held_back_opinions": held.opinions,
    }


__all__ = ["Brakes", "HeldBack", "merge_cap", "quarantine", "rater_report"]


def read_review(uri: str) -> list[str]:
    """The image ids of a review file; UserError when it is missing or malformed."""
    try:
        doc = json.loads(Storage().read_bytes(uri).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"retrain.review file {uri} does not exist: write it with `facegen feedback review --out`"
        ) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"retrain.review file {uri} is not JSON: {e}") from None
    ids = doc.get("image_ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"retrain.review file {uri} has no 'image_ids' list of strings")
    return ids
