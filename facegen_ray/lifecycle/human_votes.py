"""The human rule of the promotion gate: votes from the pairwise comparison store
(data/comparison.py) tallied for one candidate/baseline pair, the candidate's win rate
("can't tell" counts as half a win) with its Wilson score interval, and the verdict the gate
combines with its automatic one (lifecycle/gate.py).

The tally counts, for two versions A (candidate) and B (baseline), every vote on a pair of A
and B whichever was the baseline of its comparison: wins (A chosen), losses (B chosen),
cant_tell. "Can't tell" counts as half a win and half a loss: it is a vote (it counts toward
gate.min_votes) that says the candidate looked as real as the baseline, so all-"can't tell"
gives a win rate of exactly 0.5. The interval is Wilson's score interval for a binomial
proportion, at gate.human_confidence, with n = all votes and successes = wins + cant_tell / 2.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from facegen_ray.data.comparison import CANT_TELL_WEIGHT, DEFAULT_MIN_VOTES, ComparisonStore
from facegen_ray.storage import Storage


def tally_votes(storage: Storage, root: str, candidate: str, baseline: str) -> dict[str, Any]:
    """Votes on pairs of `candidate` and `baseline` (in any comparison, either side its baseline):
    {"candidate", "baseline", "votes", "wins", "losses", "cant_tell", "comparisons": [ids]}."""
    out = {"candidate": candidate, "baseline": baseline, "votes": 0, "wins": 0, "losses": 0, "cant_tell": 0}
    cids: set[str] = set()
    by_rater: dict[str, int] = {}
    by_source: dict[str, int] = {}  # votes per network (a vote without a source: its rater's own)
    for v in ComparisonStore(storage, root).iter_votes() if candidate != baseline else ():
        if {v["candidate"], v["baseline"]} != {candidate, baseline}:
            continue
        out["votes"] += 1
        cids.add(v["comparison_id"])
        rater = v.get("rater") or "unidentified"
        by_rater[rater] = by_rater.get(rater, 0) + 1
        source = v.get("source") or "rater:" + rater
        by_source[source] = by_source.get(source, 0) + 1
        if v["winner"] == "cant_tell":
            out["cant_tell"] += 1
        elif v["winner_version"] == candidate:
            out["wins"] += 1
        else:
            out["losses"] += 1
    out["comparisons"] = sorted(cids)
    # who decided: votes per rater (a reviewer sees when a few raters carry the verdict)
    top = sorted(by_rater.items(), key=lambda kv: (-kv[1], kv[0]))
    out["raters"] = len(top)
    out["top_rater_share"] = round(top[0][1] / out["votes"], 4) if top else 0.0
    out["by_rater"] = dict(top[:20])
    out["networks"] = len(by_source)
    out["top_network_share"] = round(max(by_source.values()) / out["votes"], 4) if by_source else 0.0
    return out


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion successes/n at `confidence` (two-sided):
    (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def human_verdict(
    tally: dict[str, Any], min_win_rate: float | None, min_votes: int | None, confidence: float = 0.95
) -> dict[str, Any]:
    """The human rule on a tally_votes() result: the win rate (cant_tell = half a win), its
    Wilson interval and a verdict: "pass" (lower bound >= min_win_rate), "fail", "pending"
    (fewer than min_votes votes), or "off" (min_win_rate None: shown, not required)."""
    n = int(tally["votes"])
    wins = tally["wins"] + CANT_TELL_WEIGHT * tally["cant_tell"]
    rate = wins / n if n else None
    lo, hi = wilson_interval(wins, n, confidence)
    need = (min_votes or DEFAULT_MIN_VOTES) if min_win_rate is not None else None
    out = {
        **tally,
        "win_rate": rate,
        "ci": [lo, hi] if n else None,
        "confidence": confidence,
        "min_win_rate": min_win_rate,
        "min_votes": need,
    }
    pct = f"{confidence:.0%}"
    seen = (
        f"{n} vote(s): {tally['wins']} for the candidate, {tally['losses']} for the serving model, "
        f"{tally['cant_tell']} can't tell"
    )
    if n:
        seen += f"; win rate {rate:.3f} ({pct} Wilson CI {lo:.3f}-{hi:.3f})"
        if "raters" in tally:
            seen += f"; {tally['raters']} rater(s), the busiest cast {tally['top_rater_share']:.0%}"
            if "networks" in tally:
                seen += f"; {tally['networks']} network(s), the busiest cast {tally['top_network_share']:.0%}"
    if min_win_rate is None:
        out.update(verdict="off", reason=f"human votes: {seen} -> not required (gate.min_human_win_rate unset)")
    elif n < need:
        out.update(
            verdict="pending",
            reason=f"human votes: {seen} -> PENDING: {need} votes needed (gate.min_votes), {need - n} to go",
        )
    else:
        ok = lo >= min_win_rate
        out.update(
            verdict="pass" if ok else "fail",
            reason=f"human votes: {seen} -> CI lower bound {lo:.3f} {'>=' if ok else '<'} "
            f"{min_win_rate:g} (gate.min_human_win_rate) -> {'ok' if ok else 'FAILS'}",
        )
    return out


def combine_decision(automatic: str, human: dict[str, Any] | None) -> str:
    """The gate's decision from the automatic one ("promoted" | "rejected") and the human
    verdict: automatic rejection stands; then "fail" rejects, "pending" waits, "pass"/"off"/None
    keep the automatic decision."""
    if automatic != "promoted" or human is None:
        return automatic
    return {"fail": "rejected", "pending": "pending"}.get(human["verdict"], automatic)


__all__ = ["tally_votes", "wilson_interval", "human_verdict", "combine_decision"]
