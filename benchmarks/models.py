"""Parameter counts and forward times of the full-size StyleGAN G and D (default ModelConfig
widths: fmap_base 16384, fmap_max 512, z/w 512, 8 mapping layers) at several resolutions.

    python benchmarks/models.py [--resolutions 64,256,1024] [--batch 1] [--reps 3] [--device cpu|cuda]

Prints ONE JSON line: {"device", "threads", "batch", "reps", "results": [{"resolution",
"g_params", "d_params", "mapping_params", "g_forward_ms", "d_forward_ms"}, ...]}.
Times are the median of `reps` timed forwards (torch.no_grad, eval, noise_mode="const")
after one warm-up; on CUDA, synchronised.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facegen_ray.config import ModelConfig
from facegen_ray.models import Discriminator, Generator


def _time(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(out)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench(resolution: int, batch: int, reps: int, device: torch.device, amp: bool) -> dict:
    cfg = ModelConfig(resolution=resolution)
    torch.manual_seed(0)
    G = Generator(cfg).to(device).eval()
    D = Discriminator(cfg).to(device).eval()
    z = torch.randn(batch, cfg.z_dim, device=device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def run_g():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            return G(z, noise_mode="const")

    img = run_g().float()

    def run_d():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            return D(img)

    return {
        "resolution": resolution,
        "g_params": count(G),
        "mapping_params": count(G.mapping),
        "d_params": count(D),
        "num_ws": G.num_ws,
        "g_forward_ms": round(_time(run_g, reps, device), 2),
        "d_forward_ms": round(_time(run_d, reps, device), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", default="64,256,1024")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="autocast (fp16 on cuda, bf16 on cpu)")
    args = ap.parse_args()
    device = torch.device(args.device)
    results = [bench(int(r), args.batch, args.reps, device, args.amp) for r in args.resolutions.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        json.dumps(
            {
                "benchmark": "models",
                "device": f"{device.type}: {name}",
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "reps": args.reps,
                "amp": args.amp,
                "torch": torch.__version__,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
