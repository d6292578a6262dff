"""`facegen evaluate MODEL --data URI`: FID / KID / precision-recall / IS / diversity of a
generator against a dataset version; prints ONE JSON object on stdout (logs go to stderr).
Conditional models (model.conditional: true) also: cfid (FID per attribute value and their
mean) and attr_acc (does the attribute classifier read back the requested attributes).

MODEL: a registry version (v3, serving, latest) or a model directory URI. Reference
features of the dataset version are cached next to its manifest and reused. Features are
extracted with Ray (Ray Data over the shards, actors over generated batches) unless --local.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from facegen_ray.commands._common import add_config_args, config_from_args, option_updates
from facegen_ray.errors import UserError
from facegen_ray.progress import configure_ray_data
from facegen_ray.registry import Registry
from facegen_ray.runtime import ensure_ray, require_shared
from facegen_ray.storage import Storage, join

# Imported where used, not here: metrics.evaluate (torch): cli.py imports every command module to
# build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not 0 <= v <= 1 for v in vals):
        raise argparse.ArgumentTypeError(f"truncation values must lie in [0, 1], got {text!r}")
    return vals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FID/KID/precision-recall/IS/diversity of a model against a dataset (JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="registry version (v1, serving, latest) or model directory URI")
    p.add_argument("--data", required=True, metavar="URI", help="dataset URI (DEST of prepare, or DEST/v<N>)")
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated subset of fid,kid,pr,is,diversity,memorisation,cfid,attr_acc "
        "(default eval.metrics; cfid and attr_acc: conditional models only)",
    )
    p.add_argument("--num-gen", type=int, default=None, help="generated images (default eval.num_gen)")
    p.add_argument("--num-real", type=int, default=None, help="real images (default: all distinct images)")
    p.add_argument("--truncation", type=float, default=None, help="truncation ψ in [0,1] (default eval.truncation)")
    p.add_argument(
        "--sweep",
        type=_floats,
        default=None,
        metavar="PSI,PSI,...",
        help="also FID and precision/recall for each ψ (e.g. 0.5,0.7,1.0)",
    )
    p.add_argument("--sweep-plot", default=None, metavar="PNG", help="write the sweep plot (FID, P/R vs ψ) here")
    p.add_argument(
        "--attribute-model", default=None, metavar="URI", help="attribute classifier folder (for diversity, attr_acc)"
    )
    p.add_argument(
        "--sheet",
        default=None,
        metavar="PNG",
        help="memorisation contact sheet (generated | nearest training face); default MODEL_DIR/memorisation-sheet.png",
    )
    p.add_argument("--local", action="store_true", help="extract features in this process instead of Ray")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.metrics.evaluate import evaluate_model, plot_sweep

    updates: dict[str, Any] = {}
    if args.metrics:
        updates["eval.metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    updates.update(
        option_updates(args, {"num_gen": "eval.num_gen", "num_real": "eval.num_real", "truncation": "eval.truncation"})
    )
    cfg = config_from_args(args, updates)
    if args.sweep_plot and not args.sweep:
        raise UserError("--sweep-plot needs --sweep PSI,PSI,... (e.g. --sweep 0.5,0.7,1.0)")
    storage = Storage(cfg.storage)
    model_uri, version = Registry(storage, cfg.storage.root).resolve(args.model)
    if not args.local:
        ensure_ray()
        configure_ray_data()
        # the feature actors load the model, shards and the Inception on their own nodes
        require_shared({"MODEL": model_uri, "--data": args.data, "eval.inception_path": cfg.eval.inception_path})

    result = evaluate_model(
        storage,
        model_uri,
        args.data,
        cfg.eval,
        sweep=args.sweep,
        attribute_model=args.attribute_model,
        use_ray=not args.local,
        sheet_uri=args.sheet or join(model_uri, "memorisation-sheet.png"),
    )
    result["model"] = args.model
    result["model_dir"] = model_uri
    result["model_version"] = version or result.get("model_version")
    if args.sweep_plot:
        storage.write_bytes(args.sweep_plot, plot_sweep(result["sweep"]))
        result["sweep_plot"] = args.sweep_plot
    print(json.dumps(result, default=str), file=sys.stdout, flush=True)
    return 0
