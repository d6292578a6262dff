"""Inception feature-extraction throughput (images/s) on this machine's CPU (or --device).

Default: prints ONE JSON line {"benchmark": "evaluate_inception", "device", "images",
"batch_size", "input_resolution", "images_per_s", "torch_threads", "mode"} for the extractor
as `facegen evaluate` runs it (eval.inception_mode). Images are random uint8 at --resolution,
resized to 299x299 as in the FID convention.

--variants: one JSON line per way of running the network ("script": the TorchScript fed
NCHW batches as shipped; "channels_last": fed NHWC batches; "bf16": weights and input in
bfloat16 — only with --only bf16: without AVX512-BF16 (this 2-core AVX2 EPYC) it is ~20x
slower than fp32; "optimized" / "optimized_channels_last": torch.jit.freeze +
optimize_for_inference, only with --only; "onnx": exported to ONNX and run by onnxruntime
(eval.inception_mode=onnx), when onnxruntime is installed), each with images/s over --images real faces,
the time split (resize vs network), and how far its features are from the shipped fp32 ones:
max abs difference, and FID(A, B) of two disjoint real sets computed with fp32 features vs
with the variant's (the issue's bar: FID unchanged to 0.1). Real faces come from --data (a
prepared dataset); without it, random images (no FID agreement then).

    python benchmarks/evaluate.py --variants --data ./facegen-data/datasets/faces --images 200
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from facegen_ray.metrics.fid import fid_from_features
from facegen_ray.metrics.inception import (
    INCEPTION_MODES,
    InceptionExtractor,
    OnnxInception,
    load_inception,
    onnx_available,
    preprocess,
)


def real_images(data: str, n: int, seed: int = 0) -> np.ndarray:
    from facegen_ray.metrics.evaluate import read_selected_images, select_reals
    from facegen_ray.storage import Storage

    storage = Storage()
    sel = select_reals(storage, data, n, seed)
    return read_selected_images(storage, sel, range(len(sel.rows)))


def run_variant(
    net, images: np.ndarray, batch: int, channels_last: bool, bf16: bool, device: str
) -> tuple[np.ndarray, float, float]:
    """Features [N,2048] float64, seconds resizing, seconds in the network."""
    out = np.zeros((len(images), 2048), np.float64)
    t_pre = t_net = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            t0 = time.perf_counter()
            x = preprocess(images[i : i + batch], device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            f = net(x.to(torch.bfloat16) if bf16 else x)
            out[i : i + len(x)] = f.reshape(len(x), 2048).double().cpu().numpy()
            t_pre += t1 - t0
            t_net += time.perf_counter() - t1
    return out, t_pre, t_net


def variants(args) -> None:
    if args.data:
        images = real_images(args.data, args.images)
    else:
        images = np.random.default_rng(0).integers(
            0, 256, (args.images, args.resolution, args.resolution, 3), dtype=np.uint8
        )
    n = len(images)
    half = n // 2
    base_feats = None

    def optimized(net):  # freeze (weights become constants) + optimize_for_inference (conv/BN
        # folding and oneDNN layouts where TorchScript's passes recognise the pattern)
        return torch.jit.optimize_for_inference(torch.jit.freeze(net))

    plan = [
        ("script", False, False, None),
        ("channels_last", True, False, None),
        ("bf16", False, True, None),
        ("optimized", False, False, optimized),
        ("optimized_channels_last", True, False, optimized),
        ("onnx", False, False, None),
    ]
    wanted = args.only.split(",") if args.only else ["script", "channels_last"] + (["onnx"] if onnx_available() else [])
    for name, cl, bf16, transform in plan:
        if name not in wanted:
            continue
        net = OnnxInception() if name == "onnx" else load_inception(device=args.device)
        if bf16:
            net = net.to(torch.bfloat16)
        if transform is not None:
            net = transform(net)
        run_variant(net, images[:2], 2, cl, bf16, args.device)  # warm-up (TorchScript profiling runs)
        run_variant(net, images[:2], 2, cl, bf16, args.device)
        t0 = time.perf_counter()
        feats, t_pre, t_net = run_variant(net, images, args.batch_size, cl, bf16, args.device)
        wall = time.perf_counter() - t0
        row = {
            "benchmark": "evaluate_inception_variant",
            "variant": name,
            "device": args.device,
            "images": n,
            "batch_size": args.batch_size,
            "input_resolution": int(images.shape[1]),
            "images_per_s": round(n / wall, 2),
            "resize_s": round(t_pre, 2),
            "network_s": round(t_net, 2),
            "torch_threads": torch.get_num_threads(),
            "real_faces": bool(args.data),
            "date": time.strftime("%Y-%m-%d"),
        }
        if name == "script":
            base_feats = feats
        if base_feats is not None:
            row["max_abs_diff"] = float(np.abs(feats - base_feats).max())
            if args.data and half >= 2:
                fid_base = fid_from_features(base_feats[:half], base_feats[half : 2 * half])
                fid_var = fid_from_features(feats[:half], feats[half : 2 * half])
                row.update(
                    {
                        "fid_ab_fp32": round(fid_base, 4),
                        "fid_ab_variant": round(fid_var, 4),
                        "fid_delta": round(abs(fid_var - fid_base), 4),
                    }
                )
        print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="auto", choices=INCEPTION_MODES, help="eval.inception_mode to time")
    ap.add_argument("--variants", action="store_true", help="time every way of running the network (see above)")
    ap.add_argument("--data", default=None, help="--variants: a prepared dataset's URI (real faces, FID agreement)")
    ap.add_argument("--only", default=None, help="--variants: comma-separated subset")
    args = ap.parse_args()
    if args.variants:
        variants(args)
        return
    ext = InceptionExtractor(device=args.device, batch_size=args.batch_size, mode=args.mode)
    imgs = np.random.default_rng(0).integers(0, 256, (args.images, args.resolution, args.resolution, 3), dtype=np.uint8)
    ext(imgs[: min(2, len(imgs))])  # warm-up (TorchScript profiling runs)
    ext(imgs[: min(2, len(imgs))])
    t0 = time.perf_counter()
    feats = ext(imgs)
    dt = time.perf_counter() - t0
    assert feats.shape == (args.images, 2048)
    print(
        json.dumps(
            {
                "benchmark": "evaluate_inception",
                "device": ext.device,
                "images": args.images,
                "batch_size": args.batch_size,
                "input_resolution": args.resolution,
                "images_per_s": round(args.images / dt, 2),
                "torch_threads": torch.get_num_threads(),
                "mode": args.mode,
                "runs": ext.runs,
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )


if __name__ == "__main__":
    main()
