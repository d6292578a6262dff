"""Promotion gate: does a candidate model beat the serving one? If so, promote it.

Both generators are evaluated with ONE evaluation config (eval.* with gate.num_gen /
gate.num_real): the same seeds (eval.seed .. + num_gen), the same seeded subset of reals from
the same dataset version (whose Inception features are cached next to its manifest, so the
second evaluation reuses them), the same truncation and the standard Inception. The reals are
the prepared, real-only version behind the candidate's training data (a feedback-merged
version names it in manifest["feedback"]["reference"]), or gate.data / --data.

Decision (gate.*):  promote iff  FID_cand <= FID_serving * (1 + fid_tolerance)
                               [and KID_cand <= KID_serving + kid_margin]
                               [and precision_cand >= precision_serving - precision_margin]
                               [and recall_cand >= recall_serving - recall_margin]
(bracketed checks only when their margin is set), and, when gate.max_copy_rate is set,
the candidate's memorisation copy rate (metrics/memorisation.py) <= max_copy_rate. A non-finite metric fails its check.
Conditional models (both candidate and serving conditional) are also measured for CFID, the
mean per-attribute-value FID (metrics/conditional.py), and, with gate.attribute_model, attribute
accuracy; these are shown beside FID/KID/PR (the report's metrics and a "shown, not a rule"
line) and gate only when set:  [CFID_cand <= CFID_serving * (1 + cfid_tolerance)]
                                [attr_acc_cand >= attr_acc_serving - attr_acc_margin].
Human rule (gate.min_human_win_rate set; data/comparison.py): people's /compare votes on
pairs of the candidate and the serving model must also pass -- the lower end of the Wilson
interval of the candidate's win rate >= min_human_win_rate -- and with fewer than
gate.min_votes votes the decision is "pending" (not promoted; `facegen gate` exits 3). Votes
are reported (verdict "off") even when the rule is off.
Decision "promoted" | "rejected" | "pending" | "passed" (the checks hold but the caller said promote=False).

Recorded: a report JSON at <root>/models/<candidate>/gate/<time>.json, and the candidate's
registry entry gets its metrics plus metrics["gate"] = {decision, reasons, serving version
and metrics, report URI, time}. On "promoted" the registry's serving pointer moves to the
candidate (Registry.promote); on "rejected" it is left alone.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from facegen_ray.config import EvalConfig, FacegenConfig, GateConfig, with_updates
from facegen_ray.data.feedback_merge import reference_dataset
from facegen_ray.errors import UserError
from facegen_ray.lifecycle.gate_rules import (  # noqa: F401
    PASSED,
    PENDING,
    PROMOTED,
    REJECTED,
    _finite,
    _fmt,
    conditional_notes,
    decide,
)
from facegen_ray.registry import Registry
from facegen_ray.runtime import ensure_ray
from facegen_ray.storage import Layout, Storage, join

# Imported where used, not here: metrics.evaluate, models.export (torch): only run_gate evaluates;
# the decision rules run without torch.

log = logging.getLogger(__name__)

GATE_METRICS = ["fid", "kid", "pr"]


@dataclass
class GateResult:
    """Outcome of one gate run (JSON-able with to_json())."""

    candidate: str
    serving: str
    decision: str  # "promoted" | "rejected" | "pending" (human votes) | "passed" (passed, but promote=False)
    reasons: list[str]
    checks: list[dict[str, Any]]
    candidate_metrics: dict[str, Any]
    serving_metrics: dict[str, Any]
    eval: dict[str, Any]
    report_uri: str
    time: str
    serving_after: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    human: dict[str, Any] | None = None  # human_votes.human_verdict(): votes, win rate, Wilson CI, verdict
    notes: list[str] = field(default_factory=list)  # metrics shown without a rule (conditional_notes)

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gate_eval_config(cfg: FacegenConfig) -> EvalConfig:
    """eval.* with the gate's sample counts; KID subsets no larger than the samples."""
    g = cfg.gate
    num_gen = g.num_gen or cfg.eval.num_gen
    num_real = g.num_real or cfg.eval.num_real
    upd: dict[str, Any] = {
        "num_gen": num_gen,
        "num_real": num_real,
        "kid_subset_size": max(2, min(cfg.eval.kid_subset_size, num_gen, num_real or num_gen)),
    }
    return with_updates(cfg, {f"eval.{k}": v for k, v in upd.items()}).eval  # validated, unlike model_copy


def summarize_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """evaluate_model() output -> the flat figures the gate compares and records."""
    kid = result.get("kid")
    return {
        "fid": result.get("fid"),
        "kid": kid.get("mean") if isinstance(kid, dict) else kid,
        "kid_std": kid.get("std") if isinstance(kid, dict) else None,
        "precision": result.get("precision"),
        "recall": result.get("recall"),
        "num_gen": result.get("num_gen"),
        "num_real": result.get("num_real"),
        "data": result.get("data"),
        "data_version": result.get("data_version"),
        "seeds": result.get("seeds"),
        "truncation": result.get("truncation"),
        "extractor": result.get("extractor"),
        "reference_cached": (result.get("reference") or {}).get("cached"),
        **(
            {"copy_rate": result["memorisation"]["copy_rate"], "memorisation": result["memorisation"]}
            if "memorisation" in result
            else {}
        ),
        **(
            {
                "cfid": result["cfid"]["mean"],
                "cfid_groups_computed": result["cfid"]["groups_computed"],
                "cfid_groups_skipped": result["cfid"]["groups_skipped"],
                "cfid_groups": result["cfid"]["groups"],
            }
            if "cfid" in result
            else {}
        ),
        **(
            {
                "attr_acc": result["attr_acc"]["overall"]["accuracy"],
                "attr_acc_by_attribute": {k: result["attr_acc"][k] for k in ("age", "gender", "race")},
            }
            if "attr_acc" in result
            else {}
        ),
    }


def _human(storage: Storage, cfg: FacegenConfig, candidate: str, serving: str) -> dict[str, Any] | None:
    """The human verdict on candidate vs serving (human_votes.human_verdict), or None when the
    rule is off and nobody voted on that pair of versions."""
    from facegen_ray.lifecycle.human_votes import human_verdict, tally_votes

    g = cfg.gate
    tally = tally_votes(storage, cfg.storage.root, candidate, serving)
    if g.min_human_win_rate is None and not tally["votes"]:
        return None
    return human_verdict(tally, g.min_human_win_rate, g.min_votes, g.human_confidence)


def gate_conditional_metrics(conditional: bool, gcfg: GateConfig) -> list[str]:
    """What a conditional model is measured for besides GATE_METRICS: cfid, and attr_acc when the
    gate has an attribute model; nothing for an unconditional one."""
    if not conditional:
        return []
    return ["cfid"] + (["attr_acc"] if gcfg.attribute_model else [])


def reference_for(
    storage: Storage, cfg: FacegenConfig, cand_meta: dict[str, Any], serv_meta: dict[str, Any], data: str | None = None
) -> str:
    """Reals to compare on: --data / gate.data, else the real-only version behind the
    candidate's (then the serving model's) training dataset."""
    explicit = data or cfg.gate.data
    if explicit:
        return reference_dataset(storage, explicit)
    for meta in (cand_meta, serv_meta):
        ds = meta.get("dataset")
        if ds:
            return reference_dataset(storage, ds)
    raise UserError("cannot tell which dataset to evaluate on (the models' metadata name none): pass --data URI")


def run_gate(
    cfg: FacegenConfig,
    candidate: str,
    *,
    storage: Storage | None = None,
    data: str | None = None,
    promote: bool = True,
    progress=print,
) -> GateResult:
    """Evaluate `candidate` (a registry version) and the serving model with one eval config,
    decide, record, and (when `promote` and it passes) make the candidate the serving model.

    UserError / RegistryError for an unknown candidate, no serving model, or the candidate
    already serving."""
    from facegen_ray.metrics.evaluate import evaluate_model
    from facegen_ray.models.export import MODEL_FILE

    storage = storage or Storage(cfg.storage)
    reg = Registry(storage, cfg.storage.root)
    cand_entry = reg.get(candidate)  # RegistryError (exit 2) when unknown
    serving = reg.serving()
    if not serving:
        raise UserError(
            "no model is serving, so there is nothing to gate against: promote one first (`facegen promote VERSION`)"
        )
    if serving == candidate:
        raise UserError(f"{candidate} is already the serving model; gate a different candidate")
    serv_entry = reg.get(serving)

    def doc_of(entry: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(storage.read_json(join(entry["uri"], MODEL_FILE)))
        except FileNotFoundError:
            raise UserError(f"model directory {entry['uri']} is missing its {MODEL_FILE}") from None

    docs = {"candidate": doc_of(cand_entry), "serving": doc_of(serv_entry)}
    meta = {k: dict(d.get("metadata") or {}) for k, d in docs.items()}
    conditional = {k: bool((d.get("model") or {}).get("conditional")) for k, d in docs.items()}
    versions = {"candidate": candidate, "serving": serving}
    for setting in ("cfid_tolerance", "attr_acc_margin"):
        plain = [versions[k] for k in ("candidate", "serving") if not conditional[k]]
        if getattr(cfg.gate, setting) is not None and plain:
            raise UserError(
                f"gate.{setting} compares conditional models, but {' and '.join(plain)} "
                f"{'is' if len(plain) == 1 else 'are'} unconditional: unset gate.{setting}"
            )
    ref = reference_for(storage, cfg, meta["candidate"], meta["serving"], data)
    human = _human(storage, cfg, candidate, serving)
    ev = gate_eval_config(cfg)
    if cfg.gate.use_ray:
        ensure_ray()
    results = {}
    for label, version, entry in (("candidate", candidate, cand_entry), ("serving", serving, serv_entry)):
        progress(
            f"[facegen] gate: evaluating {label} {version} ({ev.num_gen} generated vs "
            f"{ev.num_real or 'all'} reals of {ref})"
        )
        metrics = GATE_METRICS + (
            ["memorisation"] if label == "candidate" and cfg.gate.max_copy_rate is not None else []
        )
        metrics += gate_conditional_metrics(conditional[label], cfg.gate)
        res = evaluate_model(
            storage,
            entry["uri"],
            ref,
            ev,
            metrics=metrics,
            use_ray=cfg.gate.use_ray,
            attribute_model=cfg.gate.attribute_model,
            sheet_uri=join(Layout(cfg.storage.root).model(candidate), "gate", "memorisation-sheet.png")
            if "memorisation" in metrics
            else None,
        )
        results[label] = summarize_metrics(res)
    decision, reasons, checks = decide(results["candidate"], results["serving"], cfg.gate)
    notes = conditional_notes(results["candidate"], results["serving"], cfg.gate)
    for line in notes:
        progress(f"[facegen] gate: {line}")
    if human is not None:
        from facegen_ray.lifecycle.human_votes import combine_decision

        reasons.append(human["reason"])
        decision = combine_decision(decision, human)
    now = _dt.datetime.now(_dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    report_uri = join(Layout(cfg.storage.root).model(candidate), "gate", f"{stamp}.json")
    eval_info = {
        "data": ref,
        "num_gen": ev.num_gen,
        "num_real": results["candidate"]["num_real"],
        "seeds": results["candidate"]["seeds"],
        "truncation": ev.truncation,
        "data_version": results["candidate"]["data_version"],
        "metrics": GATE_METRICS + gate_conditional_metrics(conditional["candidate"], cfg.gate),
    }
    result = GateResult(
        candidate=candidate,
        serving=serving,
        decision=decision,
        reasons=reasons,
        checks=checks,
        candidate_metrics=results["candidate"],
        serving_metrics=results["serving"],
        eval=eval_info,
        report_uri=report_uri,
        time=now.isoformat(timespec="seconds"),
        human=human,
        notes=notes,
    )
    promoting = promote and decision == PROMOTED
    if decision == PROMOTED and not promote:
        decision = PASSED  # passed the gate, but the caller asked not to promote
        result.decision = decision
    result.serving_after = candidate if promoting else serving
    report = {**result.to_json(), "gate": cfg.gate.model_dump(mode="json")}
    storage.write_json(report_uri, report)
    cand = results["candidate"]
    reg.set_metrics(
        candidate,
        {
            **{k: cand[k] for k in ("fid", "kid", "precision", "recall", "num_gen", "num_real", "data_version")},
            **{k: cand[k] for k in ("cfid", "attr_acc") if k in cand},
            "gate": {
                "decision": decision,
                "reasons": reasons,
                "time": result.time,
                "report": report_uri,
                "serving_version": serving,
                "candidate": cand,
                "serving": results["serving"],
                "tolerance": cfg.gate.fid_tolerance,
                "promoted": promoting,
                "human": human,
            },
        },
    )
    if promoting:
        reg.promote(candidate)
    return result


__all__ = [
    "GateResult",
    "gate_eval_config",
    "summarize_metrics",
    "decide",
    "conditional_notes",
    "gate_conditional_metrics",
    "reference_for",
    "run_gate",
    "PROMOTED",
    "REJECTED",
    "PASSED",
    "PENDING",
]
