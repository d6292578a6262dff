"""`facegen retrain` and `facegen gate CANDIDATE`: the feedback loop and the promotion gate.

retrain: approved feedback images + the base dataset -> a new dataset version -> a candidate
fine-tuned from the serving model (Ray Train, warm start) -> the gate -> promoted or rejected.
gate:    the gate alone, on an already registered candidate version.
Neither deletes from the feedback store: retention is `facegen feedback expire`, a separate job
that never deletes what a merge or the gate reads (feedback records, votes, the images they name).

Both print `[facegen] ...` progress lines, then ONE JSON object on the last line. Exit codes:
0 done (whether the gate promoted or rejected; the JSON's "decision" says which), 1 when the
gate rejected and --require-promotion (or gate.require_promotion) was given, 2 bad input (no
serving model, unknown dataset/candidate, no approved feedback without --allow-empty), 3
"pending": the human rule is on (gate.min_human_win_rate) and the candidate has fewer than
gate.min_votes /compare votes against the serving model -- not promoted; collect votes
(POST /admin/compare/start) and run `facegen gate CANDIDATE` again.
"""

from __future__ import annotations

import argparse

from facegen_ray.commands._common import add_config_args, config_from_args, option_updates
from facegen_ray.config import parse_overrides
from facegen_ray.serve.admin_client import admin_token, reload_app
from facegen_ray.storage import Storage

# Imported where used, not here: lifecycle.retrain, lifecycle.gate (numpy, pyarrow): cli.py imports
# every command module to build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain",
        help="merge approved feedback, fine-tune the serving model, gate and promote",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=None,
        metavar="URI",
        help="base dataset (default: the one the serving model was trained on)",
    )
    p.add_argument("--images", type=int, default=None, help="images to train beyond the serving model (retrain.images)")
    p.add_argument("--min-approvals", type=int, default=None, help="approvals an image needs (retrain.min_approvals)")
    p.add_argument("--run-name", default=None, help="candidate run name (default <prefix>-<serving>-<UTC time>)")
    p.add_argument("--allow-empty", action="store_true", help="no approved feedback: retrain on the base data anyway")
    p.add_argument("--merge-only", action="store_true", help="only write the merged dataset version")
    p.add_argument("--no-gate", action="store_true", help="register the candidate without evaluating/promoting")
    _gate_args(p)
    add_config_args(p)
    p.set_defaults(func=run_retrain)

    g = sub.add_parser(
        "gate",
        help="evaluate a candidate against the serving model; promote it if it passes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("candidate", metavar="CANDIDATE", help="registered model version (e.g. v4)")
    g.add_argument("--no-promote", action="store_true", help="evaluate and record the decision, never promote")
    _gate_args(g)
    add_config_args(g)
    g.set_defaults(func=run_gate_cmd)


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=None,
        metavar="URI",
        help="reals to compare on (gate.data; default: the "
        "prepared real-only version behind the candidate's training data)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="gate.fid_tolerance (promote iff FID_cand <= FID_serving x (1 + tolerance))",
    )
    p.add_argument("--num-gen", type=int, default=None, help="generated images per model (gate.num_gen)")
    p.add_argument("--num-real", type=int, default=None, help="reals (gate.num_real)")
    p.add_argument("--require-promotion", action="store_true", help="exit 1 when the gate rejects the candidate")
    p.add_argument(
        "--serve-url", default=None, help="running app to reload after a promotion (needs FACEGEN_ADMIN_TOKEN)"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the reload")


_GATE_OPTS = {"tolerance": "gate.fid_tolerance", "num_gen": "gate.num_gen", "num_real": "gate.num_real"}


def _finish(cfg, args, out: dict, candidate: str | None) -> int:
    """Reload the app after a promotion (--serve-url), print the JSON, pick the exit code."""
    from facegen_ray.lifecycle.retrain import dumps

    if out.get("decision") == "promoted" and args.serve_url and candidate:
        body = reload_app(args.serve_url, candidate, args._token, args.timeout)
        out["reloaded"] = {
            "url": args.serve_url,
            "model_version": body.get("model_version"),
            "replicas": body.get("replicas"),
        }
        print(f"[facegen] {args.serve_url} now serves {body.get('model_version')} on {body.get('replicas')} replica(s)")
    if out.get("decision") == "pending" and candidate:
        print(
            f"[facegen] gate: {candidate} is pending human votes, not promoted: compare it with the serving "
            f'model (POST /admin/compare/start {{"candidate": "{candidate}"}}), let people vote on /compare, '
            f"then run `facegen gate {candidate}` again"
        )
    print(dumps(out), flush=True)
    if out.get("decision") == "pending":
        return 3
    rejected = out.get("decision") == "rejected"
    return 1 if rejected and (args.require_promotion or cfg.gate.require_promotion) else 0


def _token(cfg, args) -> str | None:
    return admin_token(cfg) if args.serve_url else None  # fail before any work when it is missing


def run_retrain(args: argparse.Namespace) -> int:
    from facegen_ray.lifecycle.retrain import retrain

    updates = option_updates(args, {**_GATE_OPTS, "images": "retrain.images", "min_approvals": "retrain.min_approvals"})
    cfg = config_from_args(args, updates)
    args._token = _token(cfg, args)
    out = retrain(
        cfg,
        storage=Storage(cfg.storage),
        overrides=parse_overrides(args.overrides or []),
        dataset=args.dataset,
        run_name=args.run_name,
        allow_empty=args.allow_empty,
        merge_only=args.merge_only,
        gate=not args.no_gate,
        data=args.data,
    )
    return _finish(cfg, args, out, out.get("candidate"))


def run_gate_cmd(args: argparse.Namespace) -> int:
    from facegen_ray.lifecycle.gate import run_gate

    cfg = config_from_args(args, option_updates(args, _GATE_OPTS))
    args._token = _token(cfg, args)
    result = run_gate(cfg, args.candidate, storage=Storage(cfg.storage), data=args.data, promote=not args.no_promote)
    for line in result.reasons:
        print(f"[facegen] gate: {line}")
    print(f"[facegen] gate: {result.decision} (serving: {result.serving_after}; report {result.report_uri})")
    out = {
        "candidate": result.candidate,
        "serving_before": result.serving,
        "decision": result.decision,
        "reasons": result.reasons,
        "candidate_metrics": result.candidate_metrics,
        "serving_metrics": result.serving_metrics,
        "eval": result.eval,
        "gate_report": result.report_uri,
        "serving": result.serving_after,
        "human": result.human,
        "notes": result.notes,
    }
    return _finish(cfg, args, out, result.candidate)
