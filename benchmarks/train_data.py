"""The training data path without a model: does it keep a fast GPU fed?

A Ray Train worker reads its dataset shard through the same ShardFeeder and dataset the
training loop uses (train.trainer.training_dataset: the decoded dataset, materialized in the
object store when it fits train.cache_dataset_bytes) and "trains" at a fixed rate: after each
batch it sleeps for the time a step of --rate images/s would take. It reports the share of
wall time spent waiting for data (what `data_wait` is in the training log), over several
epochs, overall and per epoch (epoch 0 streams from Ray Data; a dataset that fits
train.cache_dataset_bytes is served from the worker's memory from epoch 1 on).

    python benchmarks/train_data.py --data ./facegen-data/quality/datasets/faces --resolution 32 --rate 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from facegen_ray.config import FacegenConfig
from facegen_ray.storage import Storage


def consume(config: dict) -> None:
    import ray.train

    from facegen_ray.data.feeder import ShardFeeder

    feeder = ShardFeeder(
        ray.train.get_dataset_shard("train"),
        chunk=config["chunk"],
        seed=0,
        rank=0,
        shuffle_buffer=config["shuffle_buffer"],
        cache=config["in_memory"],
        prefetch=config["prefetch"],
    )
    batch, rate, total = config["batch"], config["rate"], config["images"]
    step_s = batch / rate
    wait = 0.0
    seen = 0
    t_start = time.perf_counter()
    first_batch_s = None
    by_epoch: dict[int, list[float]] = {}  # epoch a batch ended in -> [wait s, wall s]
    slowest: list[tuple[float, int, int]] = []  # the longest waits: (s, images after it, epoch)
    while seen < total:
        t0 = time.perf_counter()
        feeder.take(batch)
        dt = time.perf_counter() - t0
        seen += batch
        time.sleep(step_s)  # the model's step
        if first_batch_s is None:
            first_batch_s = dt  # pipeline start-up: reported apart
            continue
        wait += dt
        slowest.append((dt, seen, feeder.position["epoch"]))
        if len(slowest) > 64:
            slowest.sort(reverse=True)
            del slowest[8:]
        w_t = by_epoch.setdefault(feeder.position["epoch"], [0.0, 0.0])
        w_t[0] += dt
        w_t[1] += time.perf_counter() - t0
    wall = time.perf_counter() - t_start - (first_batch_s or 0.0)
    result = {
        "wait_s": wait,
        "wall_s": wall,
        "first_batch_s": first_batch_s,
        "images": seen,
        "epochs": feeder.position["epoch"],
        "in_memory": feeder.in_memory,
        "wait_share_by_epoch": {str(e): round(w / max(t, 1e-9), 4) for e, (w, t) in sorted(by_epoch.items())},
        "slowest_takes": [
            {"ms": round(w * 1000, 1), "images": n, "epoch": e} for w, n, e in sorted(slowest, reverse=True)[:8]
        ],
    }
    with open(config["out"], "w") as f:  # Ray Train's Result.metrics comes back empty on some versions
        json.dump(result, f)
    ray.train.report(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared dataset URI")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--rate", type=float, default=2000.0, help="images/s the simulated step consumes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=3.0, help="epochs to consume (per-epoch costs show)")
    ap.add_argument("--shuffle-buffer", type=int, default=2000)
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="rows per Ray Data batch the feeder pulls (train.data_chunk; default: its default)",
    )
    ap.add_argument("--cache-bytes", type=int, default=None, help="train.cache_dataset_bytes (0: no cache)")
    ap.add_argument(
        "--no-prefetch",
        action="store_true",
        help="in-memory epochs gather each batch when asked (the feeder's prefetch thread off)",
    )
    args = ap.parse_args()

    from ray.train import RunConfig, ScalingConfig

    from facegen_ray.data.shards import read_manifest
    from facegen_ray.runtime import ensure_ray
    from facegen_ray.train.trainer import caches_dataset, torch_trainer_class, training_dataset, worker_resources

    train_over = {"shuffle_buffer": args.shuffle_buffer}
    if args.chunk is not None:
        train_over["data_chunk"] = args.chunk
    if args.cache_bytes is not None:
        train_over["cache_dataset_bytes"] = args.cache_bytes
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": tempfile.mkdtemp(prefix="facegen-data-bench-")},
            "model": {"resolution": args.resolution},
            "train": train_over,
        }
    )
    storage = Storage(cfg.storage)
    rows = int(read_manifest(storage, args.data)["num_images"])
    ensure_ray()
    t0 = time.perf_counter()
    ds = training_dataset(storage, args.data, cfg)
    setup_s = time.perf_counter() - t0
    total = int(rows * args.epochs) // args.batch * args.batch
    trainer = torch_trainer_class()(
        consume,
        train_loop_config={
            "batch": args.batch,
            "rate": args.rate,
            "images": total,
            "shuffle_buffer": args.shuffle_buffer,
            "chunk": cfg.train.data_chunk,
            "in_memory": caches_dataset(cfg, rows),
            "prefetch": not args.no_prefetch,
            "out": os.path.join(cfg.storage.root, "data-bench.json"),
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker=worker_resources(cfg)),
        run_config=RunConfig(name="data-bench", storage_path=cfg.storage.root),
        datasets={"train": ds},
    )
    trainer.fit()
    with open(os.path.join(cfg.storage.root, "data-bench.json")) as f:
        m = json.load(f)
    print(
        json.dumps(
            {
                "benchmark": "train_data_wait",
                "dataset_rows": rows,
                "resolution": args.resolution,
                "rate_img_per_s": args.rate,
                "batch": args.batch,
                "chunk": cfg.train.data_chunk,
                "shuffle_buffer": args.shuffle_buffer,
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "images": m["images"],
                "epochs": m["epochs"],
                "cached": caches_dataset(cfg, rows),
                "dataset_setup_s": round(setup_s, 1),
                "first_batch_s": round(m["first_batch_s"], 2),
                "data_wait_share": round(m["wait_s"] / max(m["wall_s"], 1e-9), 4),
                "in_memory_epochs": m["in_memory"],
                "wait_share_by_epoch": m["wait_share_by_epoch"],
                "slowest_takes": m.get("slowest_takes"),
                "prefetch": not args.no_prefetch,
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
