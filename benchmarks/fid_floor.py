"""The real-vs-real FID floor: FID between two disjoint sets of REAL faces at the sample counts
an evaluation uses, from Inception features that `facegen evaluate` already cached.

A generated set can at best look like another sample of reals, so FID(N real vs M other reals)
is what FID(N generated vs M reals) would read for a perfect generator at those counts (FID is
biased upwards for small N). Prints one JSON line.

    python benchmarks/fid_floor.py --features <dataset>/v1/stats/v1-r32-n5000-...npz \
        [--holdout <dataset>/v1/stats/...-holdout.npz] [--splits 1000,2000] [--repeats 3]

--features: a reference-statistics cache file with its `features` [N,2048] (N reals drawn from
the training split). For each n in --splits, n of them are drawn at random and compared with the
other N - n (disjoint), --repeats times with different draws. --holdout: a held-out split's cache
(`facegen prepare --holdout-fraction`); its features are compared with all N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from facegen_ray.metrics.fid import fid_from_features
from facegen_ray.metrics.kid import kernel_inception_distance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True)
    ap.add_argument("--holdout", default=None)
    ap.add_argument("--splits", default="1000,2000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    feats = np.load(args.features)["features"].astype(np.float64)
    n_all = len(feats)
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in [int(x) for x in args.splits.split(",")]:
        if not 2 <= n <= n_all - 2:
            ap.error(f"--splits: {n} must leave at least 2 of the {n_all} features on each side")
        fids, kids = [], []
        for _ in range(args.repeats):
            perm = rng.permutation(n_all)
            a, b = feats[perm[:n]], feats[perm[n:]]
            fids.append(fid_from_features(a, b))
            kids.append(kernel_inception_distance(a, b)["mean"])
        rows.append(
            {
                "real_a": n,
                "real_b": n_all - n,
                "fid": [round(f, 3) for f in fids],
                "fid_mean": round(statistics.mean(fids), 3),
                "kid_mean": round(statistics.mean(kids), 5),
            }
        )
    if args.holdout:
        held = np.load(args.holdout)["features"].astype(np.float64)
        rows.append(
            {
                "real_a": len(held),
                "real_b": n_all,
                "held_out": True,
                "fid": [round(fid_from_features(held, feats), 3)],
                "kid_mean": round(kernel_inception_distance(held, feats)["mean"], 5),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "fid_floor",
                "features": os.path.basename(args.features),
                "n_features": n_all,
                "repeats": args.repeats,
                "floors": rows,
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
