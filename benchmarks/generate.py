"""Generation latency of the generator (as G_ema serves it): z -> image, truncation psi 0.7,
constant noise, one JSON line.

    python benchmarks/generate.py --device cuda                       # 256:1, 1024:1, 1024:32
    python benchmarks/generate.py --cases 64:1,64:16 --device cpu      # anywhere

Each case RES:BATCH builds a random generator at RES (StyleGAN2 config-f widths by default:
channel base 32768, max 512, z/w 512, 8 mapping layers; the issue's reference figures are
for that network) and times one forward per iteration, synchronised, after warm-up:

- fp32        eager, float32 (PyTorch's default TF32 settings)
- fp16        eager under autocast float16 (CUDA only)
- fp16+graph  the fp16 forward captured once as a CUDA graph and replayed (CUDA only): no
              Python or kernel-launch cost per layer, which is what dominates at batch 1
- fp32+graph  the same for float32
- compile     torch.compile(mode="max-autotune-no-cudagraphs") of the fp16 forward (slow to build;
              opt-in with --modes)
- replica, replica+graph   what a Serve replica runs per batch: `generate()` from seeds (latents
              drawn on the CPU, uint8 images back in host memory), eagerly or with
              serve.cuda_graphs' GraphedSynthesis (opt-in with --modes)

Reported per case and mode: median and p90 latency (ms) of the forward, images/s at the
median, and for the best mode the latency including the uint8 conversion and the copy to
host memory (what a server pays before encoding). A mode that fails records its error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facegen_ray.config import ModelConfig
from facegen_ray.models import Generator
from facegen_ray.models.sampling import GraphedSynthesis, generate, to_uint8

GPU_MODES = ("fp32", "fp16", "fp32+graph", "fp16+graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, reps: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def make_runner(G: torch.nn.Module, z: torch.Tensor, mode: str, psi: float):
    """() -> image tensor on the device, for one mode."""
    device = z.device
    half = "fp16" in mode or mode == "compile"
    if half and device.type != "cuda":
        raise RuntimeError("fp16 modes need CUDA")

    def forward(zz: torch.Tensor) -> torch.Tensor:
        # autocast's weight cache must be off while a CUDA graph captures (torch.cuda.graphs docs)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half, cache_enabled=False):
            return G(zz, truncation_psi=psi, noise_mode="const")

    if mode in ("replica", "replica+graph"):
        synth = GraphedSynthesis(G.synthesis, device) if mode == "replica+graph" else None
        seeds = list(range(z.shape[0]))
        return lambda: generate(G, seeds, psi, synthesis=synth)
    if mode in ("fp32", "fp16"):
        return lambda: forward(z)
    if mode == "compile":
        compiled = torch.compile(forward, mode="max-autotune-no-cudagraphs", dynamic=False)
        return lambda: compiled(z)
    if mode.endswith("+graph"):
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need CUDA")
        static_z = z.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                forward(static_z)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = forward(static_z)

        def replay() -> torch.Tensor:
            graph.replay()
            return static_out

        return replay
    raise ValueError(f"unknown mode {mode!r}")


def bench_case(res: int, batch: int, args, device: torch.device) -> dict:
    cfg = ModelConfig(
        resolution=res,
        z_dim=args.z_dim,
        w_dim=args.z_dim,
        mapping_layers=args.mapping_layers,
        fmap_base=args.fmap_base,
        fmap_max=args.fmap_max,
    )
    torch.manual_seed(0)
    G = Generator(cfg).to(device).eval()
    G.set_stage(G.max_stage, 1.0)
    z = torch.randn(batch, cfg.z_dim, device=device)
    reps = args.reps if batch == 1 else max(5, args.reps // 4)
    modes = [m for m in args.modes.split(",") if m]
    result: dict = {
        "resolution": res,
        "batch": batch,
        "g_params": sum(p.numel() for p in G.parameters()),
        "reps": reps,
        "modes": {},
    }
    best = None
    for mode in modes:
        try:
            t_build = time.perf_counter()
            run = make_runner(G, z, mode, args.psi)
            run()
            _sync(device)
            build_s = time.perf_counter() - t_build
            ms = _timed(run, reps, args.warmup, device)
            med = statistics.median(ms)
            entry = {
                "median_ms": round(med, 3),
                "p90_ms": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 3),
                "images_per_s": round(batch * 1000.0 / med, 1),
                "build_s": round(build_s, 1),
            }
            if best is None or med < best[1]:
                best = (mode, med, run)
        except Exception as e:  # noqa: BLE001 - a mode that fails is reported, the others still run
            entry = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        result["modes"][mode] = entry
        print(json.dumps({"case": f"{res}:{batch}", "mode": mode, **entry}), file=sys.stderr, flush=True)
    if best is not None:
        mode, _, run = best
        ms = _timed(lambda: run() if mode.startswith("replica") else to_uint8(run()), reps, args.warmup, device)
        result["best"] = {"mode": mode, "median_ms_with_uint8_to_host": round(statistics.median(ms), 3)}
    del G
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cases", default="256:1,1024:1,1024:32", help="RES:BATCH,...")
    ap.add_argument("--modes", default=None, help=f"comma list (default: {','.join(GPU_MODES)} on CUDA, fp32 on CPU)")
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fmap-base", type=int, default=32768)
    ap.add_argument("--fmap-max", type=int, default=512)
    ap.add_argument("--z-dim", type=int, default=512)
    ap.add_argument("--mapping-layers", type=int, default=8)
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.modes is None:
        args.modes = ",".join(GPU_MODES) if device.type == "cuda" else "fp32"
    cases = []
    for item in args.cases.split(","):
        res, _, batch = item.partition(":")
        cases.append((int(res), int(batch or 1)))
    results = [bench_case(r, b, args, device) for r, b in cases]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    line = json.dumps(
        {
            "benchmark": "generate_latency",
            "device": name,
            "torch": torch.__version__,
            "psi": args.psi,
            "widths": {
                "fmap_base": args.fmap_base,
                "fmap_max": args.fmap_max,
                "z_dim": args.z_dim,
                "mapping_layers": args.mapping_layers,
            },
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "results": results,
        }
    )
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
