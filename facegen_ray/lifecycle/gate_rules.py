"""The gate's rules: candidate vs serving metrics -> decision, reasons and one check per rule
(FID tolerance, KID/precision/recall margins, conditional metrics, copy rate), and the lines that
show measured-but-ungated metrics. Pure functions over summarize_metrics() dicts."""

from __future__ import annotations

import math
from typing import Any

from facegen_ray.config import GateConfig

PROMOTED, REJECTED, PASSED, PENDING = "promoted", "rejected", "passed", "pending"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def decide(
    candidate: dict[str, Any], serving: dict[str, Any], gcfg: GateConfig
) -> tuple[str, list[str], list[dict[str, Any]]]:
    """(decision, reasons, checks) from two summarize_metrics() dicts; see the module docstring."""
    checks: list[dict[str, Any]] = []

    def check(metric: str, cand: Any, serv: Any, limit_fn, better: str, rule: str) -> None:
        ok = _finite(cand) and _finite(serv)
        limit = limit_fn(float(serv)) if ok else None
        passed = bool(ok and (cand <= limit if better == "lower" else cand >= limit))
        checks.append(
            {
                "metric": metric,
                "candidate": cand,
                "serving": serv,
                "limit": limit,
                "better": better,
                "rule": rule,
                "passed": passed,
            }
        )

    tol = gcfg.fid_tolerance
    check(
        "fid",
        candidate.get("fid"),
        serving.get("fid"),
        lambda s: s * (1.0 + tol),
        "lower",
        f"candidate FID <= serving FID x (1 + {tol:g})",
    )
    if gcfg.kid_margin is not None:
        m = gcfg.kid_margin
        check(
            "kid",
            candidate.get("kid"),
            serving.get("kid"),
            lambda s: s + m,
            "lower",
            f"candidate KID <= serving KID + {m:g}",
        )
    for name, margin in (("precision", gcfg.precision_margin), ("recall", gcfg.recall_margin)):
        if margin is not None:
            check(
                name,
                candidate.get(name),
                serving.get(name),
                lambda s, m=margin: s - m,
                "higher",
                f"candidate {name} >= serving {name} - {margin:g}",
            )
    if gcfg.cfid_tolerance is not None:
        ct = gcfg.cfid_tolerance
        check(
            "cfid",
            candidate.get("cfid"),
            serving.get("cfid"),
            lambda s: s * (1.0 + ct),
            "lower",
            f"candidate CFID <= serving CFID x (1 + {ct:g})",
        )
    if gcfg.attr_acc_margin is not None:
        am = gcfg.attr_acc_margin
        check(
            "attr_acc",
            candidate.get("attr_acc"),
            serving.get("attr_acc"),
            lambda s: s - am,
            "higher",
            f"candidate attribute accuracy >= serving attribute accuracy - {am:g}",
        )
    if gcfg.max_copy_rate is not None:
        rate = candidate.get("copy_rate")
        checks.append(
            {
                "metric": "copy_rate",
                "candidate": rate,
                "serving": None,
                "limit": gcfg.max_copy_rate if _finite(rate) else None,
                "better": "lower",
                "rule": f"candidate suspected-copy rate <= {gcfg.max_copy_rate:g}",
                "passed": bool(_finite(rate) and rate <= gcfg.max_copy_rate),
            }
        )
    reasons = []
    for c in checks:
        if c["metric"] == "copy_rate":
            if c["limit"] is None:
                reasons.append(f"copy_rate: not measured (candidate {c['candidate']}) -> fails")
            else:
                reasons.append(
                    f"copy_rate: candidate {c['candidate']:.6g} {'<=' if c['passed'] else '>'} limit "
                    f"{c['limit']:.6g} ({c['rule']}) -> {'ok' if c['passed'] else 'FAILS'}"
                )
            continue
        if c["limit"] is None:
            reasons.append(f"{c['metric']}: not finite (candidate {c['candidate']}, serving {c['serving']}) -> fails")
            continue
        if c["better"] == "lower":
            op = "<=" if c["passed"] else ">"
        else:
            op = ">=" if c["passed"] else "<"
        verdict = "ok" if c["passed"] else "FAILS"
        reasons.append(
            f"{c['metric']}: candidate {c['candidate']:.6g} {op} limit {c['limit']:.6g} "
            f"(serving {c['serving']:.6g}; {c['rule']}) -> {verdict}"
        )
    decision = PROMOTED if checks and all(c["passed"] for c in checks) else REJECTED
    return decision, reasons, checks


def _fmt(x: Any) -> str:
    return f"{x:.6g}" if _finite(x) else str(x)


def conditional_notes(candidate: dict[str, Any], serving: dict[str, Any], gcfg: GateConfig) -> list[str]:
    """One line per conditional metric measured (cfid, attr_acc) that no gate rule checks, so it
    is shown beside the rule lines; a metric with a rule set gets its check line from decide()."""
    lines = []
    for metric, setting in (("cfid", "cfid_tolerance"), ("attr_acc", "attr_acc_margin")):
        if getattr(gcfg, setting) is not None or (metric not in candidate and metric not in serving):
            continue

        def show(m: dict[str, Any], metric: str = metric) -> str:
            if metric not in m:
                return "not measured"
            if metric == "cfid":
                return f"{_fmt(m['cfid'])} ({m['cfid_groups_computed']} groups, {m['cfid_groups_skipped']} skipped)"
            return _fmt(m["attr_acc"])

        lines.append(
            f"{metric}: candidate {show(candidate)}, serving {show(serving)} "
            f"(shown, not a rule: set gate.{setting} to gate on it)"
        )
    return lines
