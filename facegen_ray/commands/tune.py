"""`facegen tune tune_configs/NAME.yaml [--set k=v ...] [--resume]`: hyperparameter sweep.

Ray Tune runs one training run (Ray Train) per trial with the sampled settings; each trial's
rank 0 reports FID (or KID) of G_ema at eval.every_images points and at the end; trials are
ranked by their final value (lower is better; ASHA may stop bad ones early). Prints the ranked
table, then ONE JSON object on the last stdout line (best trial: params, metric, full config;
all trials). Results land in <root>/tune/<name>/results.json, results.csv, best_config.yaml.

--set KEY=VALUE overrides the sweep's base config (e.g. --set storage.root=s3://b/p,
--set train.total_images=20000); a swept key cannot be --set. Re-running an existing sweep
name is an error unless --resume (continues unfinished/errored trials from their checkpoints,
or just re-prints the results of a finished sweep).
"""

from __future__ import annotations

import argparse
import json

from facegen_ray.commands._common import add_config_args
from facegen_ray.tune.spec import load_sweep

# Imported where used, not here: tune.runner (numpy, pyarrow; tests replace its run_sweep): cli.py
# imports every command module to build the parser, which loads no numpy/torch/ray
# (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="hyperparameter sweep (Ray Tune over training runs), ranked by FID",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", metavar="SWEEP_YAML", help="sweep file, e.g. tune_configs/quickstart-cpu.yaml")
    add_config_args(p, config_file=False)  # --set / --root apply to the sweep's base config
    p.add_argument("--name", default=None, help="experiment name (default: the sweep file's name)")
    p.add_argument("--resume", action="store_true", help="continue the existing experiment of this name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, args.overrides, name=args.name, root=args.root)  # SweepError -> exit 2, before Ray

    from facegen_ray.tune.results import format_table
    from facegen_ray.tune.runner import run_sweep

    summary = run_sweep(sweep, resume=args.resume)
    print(
        f"\n[facegen] sweep {summary['sweep']}: {summary['num_trials']} trials ranked by {summary['metric']} "
        f"(lower is better; {summary['num_gen']} generated vs {summary['num_real']} real images)"
    )
    print(format_table(summary))
    best = summary["best"]
    if best is not None:
        print(
            f"[facegen] best: trial {best['trial_id']} {summary['metric']} {best[summary['metric']]:.3f} "
            f"with {best['params']}; config: {summary['results']['best_config']}"
        )
    else:
        print("[facegen] no trial reported a result; see the errors above")
    print(f"[facegen] results: {summary['results']['json']}, {summary['results']['csv']}")
    print(json.dumps(summary, default=str))
    return 0 if best is not None else 1
