"""What the serving design choices of issue 31 can save, measured on Ray Serve itself.

The ingress calls the generator replica once per HTTP request (`handle.render.remote`). Two
alternatives were named: (a) one remote call per ingress micro-batch, (b) the encoder in the
generator deployment, so no pixels travel back. This benchmark prices the hop they would
remove, with nothing else in the way: a `Caller` deployment (where the ingress would be) drives a
`Hop` deployment (where the generator would be) whose methods do no work beyond slicing a
preallocated image batch.

For each reply size (16x16 = the tiny model, 256x256 = the production model, or a 32-byte
token = pixels encoded next to the generator) and each concurrency c, the caller runs for
--seconds with c concurrent tasks, each awaiting its next item as soon as the last came back:

    per_request   each item is one `handle.one.remote(seed)` call (today's path)
    micro_batch   items wait in a queue at the caller; one loop sends everything waiting as one
                  `handle.many.remote(seeds)` call and hands the rows back (design (a))

and reports items/s and the median round trip. Replica work is ~0 here, so the figures are
Serve's own per-call cost on this machine: the ceiling of what (a) or (b) could gain.

    python benchmarks/serve_hops.py [--clients 1,64] [--seconds 8] [--sizes 16,256,token]

One JSON line per (size, mode, clients); the machine and date on each.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batcher import machine  # noqa: E402  (benchmarks/batcher.py: CPU model, cores, no GPU)


def reply_shape(size: str) -> tuple[int, ...]:
    """The reply one item carries: an RGB uint8 image, or a 32-byte token (already encoded)."""
    if size == "token":
        return (32,)
    side = int(size)
    if side < 1 or side > 1024:
        raise argparse.ArgumentTypeError(f"size {size}: expected 1..1024 or 'token'")
    return (side, side, 3)


def build_app(shape: tuple[int, ...]):
    from ray import serve

    @serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    class Hop:
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.batch = np.zeros((256, *shape), dtype=np.uint8)

        async def one(self, seed: int) -> np.ndarray:
            return self.batch[seed % 256].copy()

        async def many(self, seeds: list[int]) -> list[np.ndarray]:
            return [self.batch[s % 256].copy() for s in seeds]

    @serve.deployment(max_ongoing_requests=4, ray_actor_options={"num_cpus": 0})
    class Caller:
        def __init__(self, hop) -> None:
            self.hop = hop

        async def run(self, mode: str, clients: int, seconds: float) -> dict:
            rtts: list[float] = []
            sizes: list[int] = []
            queue: asyncio.Queue = asyncio.Queue()

            async def batch_loop() -> None:
                while True:
                    first = await queue.get()
                    items = [first]
                    while not queue.empty():
                        items.append(queue.get_nowait())
                    sizes.append(len(items))
                    rows = await self.hop.many.remote([s for s, _ in items])
                    for (_, fut), row in zip(items, rows):
                        fut.set_result(row)

            async def client(k: int) -> None:
                seed = k
                while True:  # at least one item per client
                    t0 = time.perf_counter()
                    if mode == "per_request":
                        await self.hop.one.remote(seed)
                    else:
                        fut = asyncio.get_running_loop().create_future()
                        queue.put_nowait((seed, fut))
                        await fut
                    rtts.append(time.perf_counter() - t0)
                    seed += clients
                    if time.perf_counter() >= stop:
                        break

            loop_task = asyncio.create_task(batch_loop()) if mode == "micro_batch" else None
            for _ in range(20):  # warm-up: first calls set up the handle's routing
                await self.hop.one.remote(0)
            t0 = time.perf_counter()
            stop = t0 + seconds
            await asyncio.gather(*(client(k) for k in range(clients)))
            wall = time.perf_counter() - t0
            if loop_task is not None:
                loop_task.cancel()
            return {
                "items": len(rtts),
                "items_per_s": round(len(rtts) / wall, 1),
                "rtt_p50_ms": round(statistics.median(rtts) * 1000, 2),
                "calls_per_s": round((len(sizes) if sizes else len(rtts)) / wall, 1),
                "median_items_per_call": statistics.median(sizes) if sizes else 1,
            }

    return Caller.bind(Hop.bind(shape))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", default="1,64")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--sizes", default="16,256,token")
    args = ap.parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.split(",")]
        if any(c < 1 for c in clients):
            raise ValueError("clients must be >= 1")
        sizes = [(s, reply_shape(s)) for s in args.sizes.split(",")]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"serve_hops: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        for name, shape in sizes:
            caller = serve.run(build_app(shape), name=f"hops-{name}", route_prefix=None)
            for c in clients:
                for mode in ("per_request", "micro_batch"):
                    res = caller.run.remote(mode, c, args.seconds).result(timeout_s=600)
                    rec = {
                        "benchmark": "serve_hops",
                        "reply": name,
                        "reply_bytes": int(np.prod(shape)),
                        "mode": mode,
                        "clients": c,
                        "seconds": args.seconds,
                        **res,
                        "ray": ray.__version__,
                        "machine": machine(),
                        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    }
                    print(json.dumps(rec), flush=True)
            serve.delete(f"hops-{name}")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
