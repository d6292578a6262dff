"""The generator replica's batcher alone (serve/batcher.py), no Ray: a fake forward that sleeps
A + B*(n-1) ms for a batch of n (default 4.5 + 2.35*(n-1): about 420 images/s at batch 64) on
the forward thread, driven by asyncio clients. One JSON line per run.

    python benchmarks/batcher.py closed [--clients 64] [--seconds 10]   # closed loop: each client
        sends its next request when the last one is answered
    python benchmarks/batcher.py open [--rate 336] [--seconds 30]       # open loop: Poisson arrivals
    python benchmarks/batcher.py single [--seconds 5]                   # one client: added latency
    ... [--rule continuous|arrival] [--wait-ms 10] [--max-batch 64] [--fake 4.5+2.35n-1]

--rule arrival runs the arrival-time rule of Ray's @serve.batch (first request plus whatever
arrives within --wait-ms, formed while earlier batches wait for the forward slot; the wait is
skipped for a request that finds the replica idle, like serve.adaptive_batch_wait), so the two
designs can be told apart under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegen_ray.serve.batcher import ArrivalTimeBatcher, ContinuousBatcher  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{os.cpu_count()}-core {cpu}, no GPU"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))] if xs else float("nan")


class FakeForward:
    """Sleeps a + b*(n-1) ms for a batch of n (time.sleep releases the GIL, like a CUDA sync)."""

    def __init__(self, a_ms: float, b_ms: float) -> None:
        self.a, self.b = a_ms / 1000, b_ms / 1000
        self.busy_s = 0.0

    def cost_s(self, n: int) -> float:
        return self.a + self.b * (n - 1)

    def __call__(self, items: list) -> list:
        t0 = time.perf_counter()
        time.sleep(self.cost_s(len(items)))
        self.busy_s += time.perf_counter() - t0
        return items


def make_batcher(rule: str, fwd: FakeForward, max_batch: int, wait_ms: float):
    if rule == "continuous":
        return ContinuousBatcher(fwd, max_batch_size=max_batch)
    return AdaptiveArrival(fwd, max_batch_size=max_batch, wait_s=wait_ms / 1000)


class AdaptiveArrival(ArrivalTimeBatcher):
    """The old replica's rule: the configured wait, none for a request that finds the replica idle."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.base_wait = self.wait_s
        self.in_flight = 0

    async def submit(self, item):
        self.in_flight += 1
        self.wait_s = self.base_wait if self.in_flight > 1 else 0.0
        try:
            return await super().submit(item)
        finally:
            self.in_flight -= 1


async def closed(b, clients: int, seconds: float, turnaround_ms: float = 0.0) -> dict:
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    rng = random.Random(1)

    async def client():
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await b.submit(1)
            lat.append(time.perf_counter() - t0)
            if turnaround_ms:  # the way back to the client and its next request (HTTP, ingress, encode)
                await asyncio.sleep(rng.uniform(0, turnaround_ms) / 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "images_per_s": round(len(lat) / wall, 1), **_lat(lat)}


async def open_loop(b, rate: float, seconds: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    lat: list[float] = []
    backlog: list[tuple[float, int]] = []
    tasks = []
    t_start = time.perf_counter()

    async def one(t_arrive: float):
        await b.submit(1)
        lat.append(time.perf_counter() - t_arrive)

    t_next = t_start
    while t_next - t_start < seconds:
        t_next += rng.expovariate(rate)
        delay = t_next - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t_next)))
        backlog.append((time.perf_counter() - t_start, b.queued()))
    offered_wall = time.perf_counter() - t_start
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t_start
    third = [q for t, q in backlog if t < seconds / 3], [q for t, q in backlog if t >= 2 * seconds / 3]
    return {
        "offered_per_s": rate,
        "arrivals": len(tasks),
        "achieved_arrivals_per_s": round(len(tasks) / offered_wall, 1),
        "images_per_s": round(len(lat) / wall, 1),
        "drain_s": round(wall - offered_wall, 3),
        "backlog_mean_first_third": round(statistics.mean(third[0]), 2) if third[0] else None,
        "backlog_mean_last_third": round(statistics.mean(third[1]), 2) if third[1] else None,
        "backlog_max": max(q for _, q in backlog),
        **_lat(lat),
    }


def _lat(lat: list[float]) -> dict:
    return {
        "p50_ms": round(1000 * pct(lat, 50), 2),
        "p90_ms": round(1000 * pct(lat, 90), 2),
        "p99_ms": round(1000 * pct(lat, 99), 2),
        "mean_ms": round(1000 * statistics.mean(lat), 2) if lat else None,
    }


def parse_fake(spec: str) -> tuple[float, float]:
    a, _, b = spec.partition("+")
    return float(a), float(b.removesuffix("n-1").removesuffix("n"))


async def run(args) -> dict:
    a_ms, b_ms = parse_fake(args.fake)
    fwd = FakeForward(a_ms, b_ms)
    b = make_batcher(args.rule, fwd, args.max_batch, args.wait_ms)
    t_run = time.perf_counter()
    if args.mode == "closed":
        out = await closed(b, args.clients, args.seconds, args.turnaround_ms)
        out["turnaround_ms"] = f"uniform(0,{args.turnaround_ms})"
    elif args.mode == "open":
        out = await open_loop(b, args.rate, args.seconds)
    else:
        out = await closed(b, 1, args.seconds)
        out["forward_ms"] = round(1000 * fwd.cost_s(1), 3)
        out["added_p50_ms"] = round(out["p50_ms"] - out["forward_ms"], 3)
    sizes = list(b.stats.sizes)
    await b.close()
    cap = args.max_batch / fwd.cost_s(args.max_batch)
    return {
        "benchmark": "batcher",
        "mode": args.mode,
        "rule": args.rule,
        "wait_ms": args.wait_ms if args.rule == "arrival" else None,
        "fake_forward_ms": f"{a_ms}+{b_ms}*(n-1)",
        "max_batch": args.max_batch,
        "capacity_images_per_s": round(cap, 1),
        **out,
        "fraction_of_capacity": round(out["images_per_s"] / cap, 3),
        "batches": len(sizes),
        "batch_p50": pct(sizes, 50),
        "batch_mean": round(statistics.mean(sizes), 2) if sizes else None,
        "forward_busy_fraction": round(fwd.busy_s / (time.perf_counter() - t_run), 3),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": machine(),
        "command": "python benchmarks/batcher.py " + " ".join(sys.argv[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["closed", "open", "single"])
    p.add_argument("--rule", choices=["continuous", "arrival"], default="continuous")
    p.add_argument("--wait-ms", type=float, default=10.0, help="arrival rule: the batch wait window")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument(
        "--turnaround-ms",
        type=float,
        default=0.0,
        help="closed loop: a client waits uniform(0, this) ms before its next request (spreads arrivals)",
    )
    p.add_argument("--rate", type=float, default=336.0, help="open loop: offered requests/s (Poisson)")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--fake", default="4.5+2.35n-1", help="A+Bn-1: A ms per batch plus B ms per image after the first")
    p.add_argument("--out", help="append the JSON line to this file too")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = {"closed": 10.0, "open": 30.0, "single": 5.0}[args.mode]
    line = json.dumps(asyncio.run(run(args)))
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
