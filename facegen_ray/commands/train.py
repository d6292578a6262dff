"""`facegen train --config FILE [--set k=v] [--root URI]`: distributed StyleGAN training.

What `ray job submit --working-dir . -- facegen train ...` runs on a cluster; locally (no
RAY_ADDRESS) it starts an embedded Ray instance. Re-running with the same train.run_name
resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from facegen_ray.commands._common import add_config_args, config_from_args

# Imported where used, not here: train.trainer (numpy, pyarrow): cli.py imports every command module
# to build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the StyleGAN on prepared shards (Ray Train, DDP, progressive growing)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--run-name", default=None, help="same as --set train.run_name=NAME (re-use a name to resume)")
    p.add_argument("--dataset", default=None, help="dataset URI (default <root>/datasets/faces)")
    p.add_argument("--num-workers", type=int, default=None, help="same as --set train.num_workers=N")
    p.add_argument("--no-export", action="store_true", help="do not export/register the final G_ema")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facegen_ray.train.trainer import train

    updates: dict[str, Any] = {}
    if args.run_name:
        updates["train.run_name"] = args.run_name
    if args.dataset:
        updates["train.dataset"] = args.dataset
    if args.num_workers is not None:
        updates["train.num_workers"] = args.num_workers
    cfg = config_from_args(args, updates)
    out = train(cfg, export=False if args.no_export else None)
    print(f"[facegen] run {out.run_name}: {out.images_seen} images seen; run folder {out.run_uri}")
    if out.version:
        print(f"[facegen] exported model {out.version}: {out.model_uri}")
    print(
        json.dumps(
            {
                "run": out.run_name,
                "run_uri": out.run_uri,
                "images_seen": out.images_seen,
                "checkpoint": out.checkpoint_path,
                "model_version": out.version,
                "model_uri": out.model_uri,
                # where each DDP worker ran and the digest of its weights (equal = in sync)
                "workers": [
                    {k: w.get(k) for k in ("rank", "node_ip", "d_steps", "g_steps", "g_digest", "d_digest")}
                    for w in out.workers
                ],
            }
        )
    )
    return 0
