"""How noisy is one FID? The same generator, the same reals, different generated seeds.

A sweep ranks trials by an FID of --num-gen generated faces (fixed seeds per trial) against a
fixed subset of --num-real reals. The reals are common to every trial; what differs between two
trials besides their quality is which faces their seeds happened to draw. This measures that:
--repeats disjoint seed sets of --num-gen faces from ONE model, each scored against the same
cached real features, and prints one JSON line with every FID, their mean, standard deviation
and range. A rung decision (tune scheduler.margin) should be larger than that spread.

    python benchmarks/fid_noise.py MODEL_DIR --data <root>/datasets/faces \
        [--num-gen 2000] [--num-real 5000] [--repeats 5] [--root <root>]

MODEL_DIR: an exported model (runs/<run>/model) or a local training checkpoint folder
(runs/<run>/checkpoint-N, its G_ema exported to a temporary folder with --config's model
section, which must be the one the run trained with). In-process,
no Ray: the reals' features come from the cache a sweep or `facegen evaluate` wrote (computed
here if absent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model directory (URI)")
    ap.add_argument("--data", required=True, help="dataset URI (DEST of facegen prepare)")
    ap.add_argument("--root", default=None, help="storage root (default: the config's)")
    ap.add_argument("--config", default=None, help="facegen config for eval.* settings (default: built-in)")
    ap.add_argument("--num-gen", type=int, default=2000)
    ap.add_argument("--num-real", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed-stride", type=int, default=1_000_000, help="seed sets start at k * stride")
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    if args.repeats < 2:
        raise SystemExit("--repeats must be >= 2 (a spread needs two values)")

    from facegen_ray.config import FacegenConfig, apply_overrides, read_yaml_mapping
    from facegen_ray.metrics.fid import fid_from_features
    from facegen_ray.metrics.generated import GeneratedFeatureWorker, conditioning_for, generated_features
    from facegen_ray.metrics.reals import data_labels, reference_features, select_reals
    from facegen_ray.storage import Storage

    raw = read_yaml_mapping(args.config, "config", "sections") if args.config else {}
    sets = [f"eval.num_gen={args.num_gen}", f"eval.num_real={args.num_real}"]
    if args.root:
        sets.append(f"storage.root={args.root}")
    if args.batch_size:
        sets.append(f"eval.batch_size={args.batch_size}")
    cfg = FacegenConfig.model_validate(apply_overrides(raw, sets))
    ecfg = cfg.eval
    storage = Storage(cfg.storage)
    t0 = time.perf_counter()
    real, info = reference_features(storage, args.data, ecfg)
    model_uri = args.model
    tmp = None
    if os.path.isfile(os.path.join(model_uri, "state.pt")) and not os.path.isfile(
        os.path.join(model_uri, "model.json")
    ):
        tmp = tempfile.TemporaryDirectory(prefix="fid-noise-")
        model_uri = _export(cfg, model_uri, tmp.name)
    worker = GeneratedFeatureWorker(
        storage, model_uri, ecfg.inception_path, ecfg.device, ecfg.batch_size, ecfg.inception_mode
    )
    labels = None
    if getattr(worker.G, "conditional", False):
        sel = select_reals(storage, args.data, ecfg.num_real, ecfg.seed)
        labels = data_labels(storage, sel, worker.model_cfg.age_buckets)
    fids = []
    for k in range(args.repeats):
        start = ecfg.seed + k * args.seed_stride
        seeds = list(range(start, start + args.num_gen))
        c = conditioning_for(worker.G, labels, len(seeds), start) if labels is not None else None
        gen, _ = generated_features(seeds, ecfg.truncation, ecfg, c=c, local=worker)
        fids.append(round(fid_from_features(gen, real), 3))
        print(f"[fid_noise] seeds {start}..{start + args.num_gen - 1}: FID {fids[-1]}", file=sys.stderr, flush=True)
    meta = worker.metadata or {}
    out = {
        "benchmark": "fid_noise",
        "model": args.model,
        "images_seen": meta.get("images_seen"),
        "num_gen": args.num_gen,
        "num_real": info["n_real"],
        "reference": info["key"],
        "repeats": args.repeats,
        "fid": fids,
        "mean": round(statistics.mean(fids), 3),
        "std": round(statistics.stdev(fids), 3),
        "range": round(max(fids) - min(fids), 3),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "date": dt.date.today().isoformat(),
    }
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()


def _export(cfg, checkpoint_dir: str, dest: str) -> str:
    """G_ema of a training checkpoint as a model directory under dest (not registered)."""
    from facegen_ray.models.export import save_model_dir
    from facegen_ray.storage import Storage
    from facegen_ray.train.checkpoint import load_g_ema

    G, state = load_g_ema(checkpoint_dir, cfg.model)  # a model section unlike the run's fails here
    uri = os.path.join(dest, "model")
    meta = {"images_seen": int(state["counters"]["images_seen"]), "checkpoint": checkpoint_dir}
    save_model_dir(Storage(cfg.storage), uri, G, cfg.model, meta)
    return uri


if __name__ == "__main__":
    main()
