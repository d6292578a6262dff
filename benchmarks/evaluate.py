"""Inception feature-extraction throughput (images/s) on this machine's CPU (or --device).

Prints ONE JSON line: {"benchmark": "evaluate_inception", "device", "images", "batch_size",
"input_resolution", "images_per_s", "torch_threads"}. Images are random uint8 at
--resolution, resized to 299x299 as in the FID convention.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from facegen_ray.metrics.inception import InceptionExtractor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ext = InceptionExtractor(device=args.device, batch_size=args.batch_size)
    imgs = np.random.default_rng(0).integers(0, 256, (args.images, args.resolution, args.resolution, 3), dtype=np.uint8)
    ext(imgs[: min(2, len(imgs))])  # warm-up (TorchScript profiling runs)
    t0 = time.perf_counter()
    feats = ext(imgs)
    dt = time.perf_counter() - t0
    assert feats.shape == (args.images, 2048)
    print(json.dumps({
        "benchmark": "evaluate_inception", "device": ext.device, "images": args.images, "batch_size": args.batch_size,
        "input_resolution": args.resolution, "images_per_s": round(args.images / dt, 2),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
