"""Load test of the Serve app over real HTTP; prints one JSON line.

Starts a local Ray + Serve, deploys facegen_ray.serve.app with the given model directory (or a
random model of --size), then for 1, 8 and 64 concurrent clients sends a bounded number of
`GET /generate?seed=N` requests (each a new image: generated, PNG-encoded, recorded in the
feedback store) and reports p50/p95/p99 latency and images/s. It also times the raw generator
(direct G forward + uint8 conversion, same device and thread count as one replica) at batch
sizes 1, 8 and 64, so batching efficiency = served img/s at concurrency c / raw img/s at batch c.

    python benchmarks/serve_load.py [--model DIR] [--size tiny|small|default] [--requests 64,256,1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time

SIZES = {
    "tiny": dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, fmap_base=128, fmap_max=32, fmap_min=8),
    "small": dict(resolution=32, z_dim=128, w_dim=128, mapping_layers=4, fmap_base=1024, fmap_max=128, fmap_min=16),
    "default": dict(resolution=64),  # ModelConfig defaults (512-d z/w, 8-layer mapping)
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


async def _load(url: str, concurrency: int, n_requests: int, seed0: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    counter = iter(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def worker():
            nonlocal errors
            for i in counter:
                t0 = time.perf_counter()
                r = await client.get("/generate", params={"seed": seed0 + i})
                if r.status_code != 200:
                    errors += 1
                else:
                    lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency, "requests": n_requests, "errors": errors,
        "p50_ms": round(1000 * _pct(lat, 50), 2), "p95_ms": round(1000 * _pct(lat, 95), 2),
        "p99_ms": round(1000 * _pct(lat, 99), 2), "mean_ms": round(1000 * statistics.mean(lat), 2) if lat else None,
        "images_per_s": round(len(lat) / wall, 2), "wall_s": round(wall, 2),
    }


def _raw_throughput(G, batch: int, threads: int, min_time: float = 2.0) -> float:
    import torch

    from facegen_ray.serve.generation import generate

    torch.set_num_threads(threads)
    generate(G, list(range(batch)), 0.7)  # warm-up
    n, t0, k = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < min_time or k < 2:
        generate(G, list(range(k * batch, (k + 1) * batch)), 0.7)
        n += batch
        k += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory URI (default: a random model of --size)")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--root", default=None, help="storage root for the feedback store (default: a temp dir)")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--requests", default="64,256,1024", help="requests per concurrency level")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="num_cpus (and torch threads) per generator replica")
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--replicas", type=int, default=1)
    args = p.parse_args()
    conc = [int(x) for x in args.concurrency.split(",")]
    reqs = [int(x) for x in args.requests.split(",")]
    if len(reqs) != len(conc):
        p.error("--requests needs one count per --concurrency level")

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    import torch
    from ray import serve

    from facegen_ray.config import ModelConfig
    from facegen_ray.models import Generator, save_model_dir
    from facegen_ray.serve.app import APP_NAME, build_app
    from facegen_ray.serve.generation import choose_device, load_model
    from facegen_ray.storage import Storage

    tmp = tempfile.mkdtemp(prefix="facegen-serve-bench-")
    root = args.root or tmp
    storage = Storage()
    model_uri = args.model
    if model_uri is None:
        cfg = ModelConfig(**SIZES[args.size])
        torch.manual_seed(0)
        G = Generator(cfg)
        G.set_stage(G.max_stage, 1.0)
        model_uri = os.path.join(tmp, "model")
        save_model_dir(storage, model_uri, G, cfg, {"version": f"random-{args.size}"})

    device = choose_device(args.num_gpus)
    model = load_model(storage, model_uri, root, device=device)
    threads = max(1, int(args.replica_cpus))
    raw = {}
    for b in sorted(set(conc)):
        raw[b] = round(_raw_throughput(model.G, b, threads), 2)
        if device == "cuda":
            torch.cuda.synchronize()

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 2) * 2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({
        "model": model_uri, "root": root, "num_cpus": args.replica_cpus, "num_gpus": args.num_gpus,
        "min_replicas": args.replicas, "max_replicas": args.replicas, "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_ms / 1000, "max_ongoing_requests": max(args.max_batch_size, 64),
        "target_ongoing_requests": 64,
    }), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    asyncio.run(_load(url, 4, 16, 10_000_000))  # warm-up
    served = []
    seed0 = 0
    for c, n in zip(conc, reqs):
        res = asyncio.run(_load(url, c, n, seed0))
        seed0 += n
        res["raw_images_per_s_at_batch"] = raw[c]
        res["batching_efficiency"] = round(res["images_per_s"] / raw[c], 3) if raw[c] else None
        served.append(res)
    serve.shutdown()
    ray.shutdown()
    print(json.dumps({
        "benchmark": "serve_load", "device": device, "model": model.version, "resolution": model.resolution,
        "model_size": None if args.model else args.size, "replicas": args.replicas, "replica_cpus": args.replica_cpus,
        "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms, "host_cpus": os.cpu_count(),
        "torch_threads": threads, "served": served, "raw_images_per_s": {str(k): v for k, v in raw.items()},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
