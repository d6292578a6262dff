"""Load tests of the Serve app over real HTTP; each mode prints one JSON line.

generate (the default): starts a local Ray + Serve, deploys facegen_ray.serve.app with the given
model directory (or a random model of --size), then for 1, 8 and 64 concurrent clients sends a
bounded number of `GET /generate?seed=N` requests (each a new image: generated, PNG-encoded,
recorded in the feedback store) and reports p50/p95/p99 latency and images/s, and the median split
of a request from the app's Server-Timing header (hop, queue, forward, record; "outside" = the
rest: HTTP proxy, ingress routing, the client). It also times the
raw generator (direct G forward + uint8 conversion, same device and thread count as one replica)
at batch sizes 1, 8 and 64, so batching efficiency = served img/s at concurrency c / raw img/s at
batch c.

    python benchmarks/serve_load.py [--model DIR] [--size tiny|small|default] [--requests 64,256,1024]
        [--set serve.fake_forward_ms=45+23.5n] [--open-rate 33 --open-seconds 30]

With `--set serve.fake_forward_ms=A+Bn` the replica sleeps A + B*n ms per batch of n instead of
running the model (Serve's own per-request cost is then what is measured); the capacity is then
c / (A + B*c) ms at batch c, and "fraction_of_capacity" compares the served rate with it. Each
level also reports the images per batch the replica ran (its batch_stats(), the sizes its
facegen_serve_batch_images metric records) and the metric's histogram as Ray exported it.
Closed-loop latency is not a latency target: with c clients, p50 ~ c / throughput (Little's
law). --open-rate adds an open-loop run: Poisson arrivals at that many requests/s, whatever
the answers, so its p50/p99 are the latencies a user sees at that load.

feedback: durability of POST /feedback under load and a crash. --posts feedback posts (default
10,000) from --clients concurrent clients (default 64; asyncio + httpx, loopback only), each with
its own Idempotency-Key, against the app on a --size model (default tiny). When --kill-at of the
posts are answered, the ingress replica (the process that writes the feedback store) is killed
with SIGKILL (its pid from Ray's state API) and Serve starts a new one. A client retries a post
that failed (connection error, 5xx, 408/429) with the same key and body, with exponential backoff
(--max-attempts, --max-backoff-s). Afterwards the store on disk is checked: every acknowledged
post (201, or 200 = already stored) has exactly one readable record with its body, no record is
half-written, every answer for a key carries feedback_id = sha256(image_id|key)[:32], and a
replay of up to --replay acknowledged posts answers 200 with the same id. lost must be 0.

    python benchmarks/serve_load.py feedback [--posts 10000] [--clients 64] [--kill-at 0.3]
        [--root DIR] [--ledger FILE.jsonl] [--out docs/reliability/serve_load.jsonl]

Over 400 lines: the two modes share the app start-up (_start_ray, the random model of --size), the
machine record and the percentile helper, and the feedback mode's store check (verify_store) is
the benchmark's verdict, so it stays next to the load that it judges.
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

# A load test measures the serving path, not the abuse limits: lift the per-address and
# per-rater buckets (serve.rate_limits) far above what the test sends, and let its single
# rater's approvals count (the quarantine only matters to retraining).
LOAD_TEST_SETTINGS = [
    "serve.rate_limits={generate: {per_minute: 1000000, burst: 100000}, feedback: {per_minute: 1000000, burst: 100000},"
    " pairs: {per_minute: 1000000, burst: 100000}, vote: {per_minute: 1000000, burst: 100000},"
    " session: {per_minute: 1000000, burst: 100000}}",
]

SIZES = {
    "tiny": dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, fmap_base=128, fmap_max=32, fmap_min=8),
    "small": dict(resolution=32, z_dim=128, w_dim=128, mapping_layers=4, fmap_base=1024, fmap_max=128, fmap_min=16),
    "default": dict(resolution=64),  # ModelConfig defaults (512-d z/w, 8-layer mapping)
    "f-256": dict(resolution=256, fmap_base=32768),  # StyleGAN2 config-f widths at 256x256 (GPU runs)
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
    parts: dict[str, list[float]] = {}  # Server-Timing component -> ms per request
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
                    server_ms = 0.0
                    for name, ms in parse_server_timing(r.headers.get("server-timing", "")).items():
                        parts.setdefault(name, []).append(ms)
                        server_ms += ms
                    # the rest: HTTP proxy, ingress routing/validation, the client
                    parts.setdefault("outside", []).append(1000 * lat[-1] - server_ms)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "errors": errors,
        "p50_ms": round(1000 * _pct(lat, 50), 2),
        "p95_ms": round(1000 * _pct(lat, 95), 2),
        "p99_ms": round(1000 * _pct(lat, 99), 2),
        "mean_ms": round(1000 * statistics.mean(lat), 2) if lat else None,
        "images_per_s": round(len(lat) / wall, 2),
        "wall_s": round(wall, 2),
        "p50_split_ms": {k: round(_pct(v, 50), 2) for k, v in parts.items()},
    }


async def _open_loop(url: str, rate: float, seconds: float, seed0: int) -> dict:
    """Poisson arrivals at `rate` requests/s for `seconds`, each a GET /generate of a new seed."""
    import random

    import httpx

    rng = random.Random(seed0)
    lat: list[float] = []
    parts: dict[str, list[float]] = {}
    errors = 0
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(i: int, t_arrive: float):
            nonlocal errors
            r = await client.get("/generate", params={"seed": seed0 + i})
            if r.status_code != 200:
                errors += 1
                return
            lat.append(time.perf_counter() - t_arrive)
            for name, ms in parse_server_timing(r.headers.get("server-timing", "")).items():
                parts.setdefault(name, []).append(ms)

        tasks = []
        t0 = time.perf_counter()
        t_next = t0
        while t_next - t0 < seconds:
            t_next += rng.expovariate(rate)
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(len(tasks), t_next)))
        offered_wall = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return {
        "mode": "open",
        "offered_per_s": rate,
        "requests": len(tasks),
        "achieved_arrivals_per_s": round(len(tasks) / offered_wall, 2),
        "errors": errors,
        "p50_ms": round(1000 * _pct(lat, 50), 2) if lat else None,
        "p90_ms": round(1000 * _pct(lat, 90), 2) if lat else None,
        "p99_ms": round(1000 * _pct(lat, 99), 2) if lat else None,
        "images_per_s": round(len(lat) / wall, 2),
        "drain_s": round(wall - offered_wall, 2),
        "p50_split_ms": {k: round(_pct(v, 50), 2) for k, v in parts.items()},
    }


def _batch_delta(before: dict, after: dict) -> dict:
    """Images per batch the replica ran between two batch_stats() answers."""
    n = after["batches"] - before["batches"]
    sizes = after["sizes"][-n:] if n > 0 else []
    # requests per handle call (1: a call of its own; more: an ingress micro-batch, serve/hop.py)
    k = after.get("calls", 0) - before.get("calls", 0)
    calls = after.get("call_sizes", [])[-k:] if k > 0 else []
    return {
        "batches": n,
        "batch_images_p50": _pct(sizes, 50) if sizes else None,
        "batch_images_mean": round(statistics.mean(sizes), 2) if sizes else None,
        "batch_images_max": max(sizes) if sizes else None,
        "calls": len(calls),
        "call_requests_mean": round(statistics.mean(calls), 2) if calls else None,
        "call_requests_max": max(calls) if calls else None,
    }


def _metric_batches(wait_for: int, timeout_s: float = 30.0) -> dict | None:
    """The facegen_serve_batch_images histogram as Ray's metrics export shows it (cumulative
    bucket counts), once its count reaches `wait_for` batches; None when not exported in time."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from facegen_ray.observability.metrics import node_metrics_endpoints

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        buckets: dict[str, float] = {}
        for ep in node_metrics_endpoints():
            try:
                with urllib.request.urlopen(ep, timeout=10) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for fam in text_string_to_metric_families(text):
                for smp in fam.samples:
                    if smp.name == "ray_facegen_serve_batch_images_bucket":
                        buckets[smp.labels["le"]] = buckets.get(smp.labels["le"], 0) + smp.value
        if buckets.get("+Inf", 0) >= wait_for:
            return dict(sorted(buckets.items(), key=lambda kv: float(kv[0])))
        time.sleep(2)
    return None


def _median_bucket(cum: dict[str, float], cum_before: dict[str, float] | None) -> str | None:
    """The upper bound (le) of the histogram bucket holding the median batch of a level."""
    delta = {k: v - (cum_before or {}).get(k, 0) for k, v in cum.items()}
    total = delta.get("+Inf", 0)
    for le, v in delta.items():
        if total and v >= total / 2:
            return le
    return None


def parse_server_timing(header: str) -> dict[str, float]:
    """'hop;dur=1.2, queue;dur=9.8' -> {"hop": 1.2, "queue": 9.8} (ms)."""
    out: dict[str, float] = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for p in params.split(";"):
            key, _, val = p.strip().partition("=")
            if name and key == "dur":
                out[name] = float(val)
    return out


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


# ----------------------------------------------------------------------------- feedback under load and a crash
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # worth retrying with the same key
ACKNOWLEDGED = (200, 201)  # 201 stored now, 200 stored by an earlier attempt with this key


def _machine() -> dict:
    import platform

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "niceness": os.nice(0),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _start_ray(attempts: int = 5, **kwargs):
    """ray.init(address="local", ...), tried again when the node fails to start: on a saturated
    machine Ray 2.60's raylet can abort while waiting (15 s, fixed) for its agents' port files."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            return ray.init(address="local", **kwargs)
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a node that did not start
            ray.shutdown()
            if attempt == attempts:
                raise
            print(f"[serve_load] Ray did not start ({e}); attempt {attempt + 1} of {attempts}", file=sys.stderr)


def ingress_pids(state_api: str) -> list[int]:
    """pids of the live ingress replicas (the processes that write the feedback store), from
    Ray's state API at `state_api` (this Ray instance's dashboard URL: other Ray instances may
    run on the machine): Serve runs each replica in an actor named ServeReplica:<app>:<deployment>."""
    from ray.util.state import list_actors

    from facegen_ray.serve.app import INGRESS_NAME

    actors = list_actors(
        address=state_api, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False
    )
    return sorted(int(a.pid) for a in actors if a.class_name.split(":")[-1] == INGRESS_NAME and a.pid)


def make_posts(n: int, image_ids: list[str], tag: str) -> list[dict]:
    """n distinct feedback posts: own Idempotency-Key, an image, a body whose comment names the post."""
    return [
        {
            "i": i,
            "key": f"{tag}-{i:06d}",
            "image_id": image_ids[i % len(image_ids)],
            "body": {
                "image_id": image_ids[i % len(image_ids)],
                "approved": i % 3 != 0,
                "rating": 1 + i % 5,
                "comment": f"{tag} post {i}",
            },
            "statuses": [],
            "ids": [],
            "final": None,
            "latency_s": None,
        }
        for i in range(n)
    ]


async def _post_with_retries(
    client,
    post: dict,
    rng,
    max_attempts: int,
    max_backoff_s: float,
    attempt_lat: list[float],
    first_ok_after: list[float],
    kill: dict,
) -> None:
    """POST one feedback until it is acknowledged, refused (a 4xx other than 408/429) or
    max_attempts are spent; every attempt sends the same key and body."""
    import httpx

    t0 = time.perf_counter()
    for attempt in range(max_attempts):
        ta = time.perf_counter()
        try:
            r = await client.post("/feedback", json=post["body"], headers={"Idempotency-Key": post["key"]})
        except httpx.TransportError as e:  # connection refused/reset, timeouts
            post["statuses"].append(type(e).__name__)
        else:
            post["statuses"].append(r.status_code)
            if r.status_code in ACKNOWLEDGED:
                try:
                    post["ids"].append(r.json()["feedback_id"])
                except (ValueError, KeyError):
                    post["statuses"][-1] = f"{r.status_code}-unreadable"
                else:
                    now = time.perf_counter()
                    attempt_lat.append(now - ta)
                    if kill.get("t") is not None and ta > kill["t"]:
                        first_ok_after.append(now - kill["t"])
                    post["final"], post["latency_s"] = r.status_code, now - t0
                    return
            elif r.status_code not in RETRY_STATUS:
                post["final"], post["detail"] = r.status_code, r.text[:300]
                return
        await asyncio.sleep(min(max_backoff_s, 0.05 * 2**attempt) * (0.5 + rng.random()))
    post["final"] = "gave_up"


async def _feedback_load(
    url: str,
    posts: list[dict],
    clients: int,
    kill_after: int | None,
    max_attempts: int,
    max_backoff_s: float,
    timeout_s: float,
    state_api: str,
    seed: int = 0,
) -> dict:
    """Send every post from `clients` concurrent clients; SIGKILL the ingress replica once
    `kill_after` posts are answered (None: no kill) and wait for Serve's replacement."""
    import random
    import signal

    import httpx

    kill: dict = {"t": None}
    answered = 0
    reached = asyncio.Event()
    looked_up = asyncio.Event()  # the replica's pid is known (or the lookup failed)
    attempt_lat: list[float] = []
    first_ok_after: list[float] = []
    queue = iter(posts)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t_start = time.perf_counter()

    async def kill_and_wait() -> None:
        pids = await asyncio.to_thread(ingress_pids, state_api)  # before the load: see below
        if len(pids) != 1:
            raise RuntimeError(f"expected one live ingress replica, found pids {pids}")
        looked_up.set()
        await reached.wait()
        kill.update(pid_before=pids[0], after_answers=answered)
        os.kill(pids[0], signal.SIGKILL)
        kill["t"] = time.perf_counter()
        kill["at_s"] = round(kill["t"] - t_start, 3)
        while time.perf_counter() - kill["t"] < 600:
            await asyncio.sleep(0.25)
            new = [p for p in await asyncio.to_thread(ingress_pids, state_api) if p != pids[0]]
            if new:
                kill.update(pid_after=new[0], replica_back_s=round(time.perf_counter() - kill["t"], 3))
                return

    async def killer() -> None:
        try:
            await kill_and_wait()
        except Exception as e:  # noqa: BLE001 - reported in the JSON (and fails the run), posts go on
            kill["error"] = repr(e)
        finally:
            looked_up.set()

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        rater = await _session(client)
        cookies = dict(client.cookies)

        async def worker(w: int) -> None:
            nonlocal answered
            rng = random.Random(seed * 100_003 + w)
            for post in queue:
                await _post_with_retries(
                    client, post, rng, max_attempts, max_backoff_s, attempt_lat, first_ok_after, kill
                )
                answered += 1
                if kill_after is not None and answered >= kill_after:
                    reached.set()

        killing = asyncio.create_task(killer()) if kill_after is not None else None
        if killing is not None:
            # the pid lookup (Ray's state API) can take seconds on a busy machine: done before the
            # load, so that the kill lands when kill_after posts are answered, not after the load
            await looked_up.wait()
        tasks = [asyncio.create_task(worker(w)) for w in range(clients)]
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t_start
        if killing is not None:
            reached.set()  # fewer posts than kill_after: kill at the end
            await killing
    kill.pop("t", None)
    if first_ok_after:
        kill["first_success_after_kill_s"] = round(min(first_ok_after), 3)
    return {
        "wall_s": wall,
        "attempt_latencies": attempt_lat,
        "kill": kill if kill_after is not None else None,
        "rater": rater,
        "cookies": cookies,
    }


async def _session(client) -> str:
    """A rater session for the client (feedback needs one; the cookie stays in the client);
    returns the rater id, which the server folds into each feedback id."""
    r = await client.get("/session")
    r.raise_for_status()
    return r.json()["rater"]


async def _replay(url: str, posts: list[dict], clients: int, timeout_s: float, cookies: dict) -> list[dict]:
    """Send each post once more with its key and the load's session: what a client whose answer
    was lost would do."""
    import httpx

    out: list[dict] = []
    queue = iter(posts)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, cookies=cookies) as client:

        async def worker() -> None:
            for p in queue:
                r = await client.post("/feedback", json=p["body"], headers={"Idempotency-Key": p["key"]})
                fid = r.json().get("feedback_id") if r.status_code in ACKNOWLEDGED else None
                out.append({"key": p["key"], "status": r.status_code, "feedback_id": fid})

        await asyncio.gather(*(worker() for _ in range(clients)))
    return out


def verify_store(root: str, posts: list[dict], tag: str, rater: str | None = None) -> dict:
    """What is on disk after the run, checked against what the clients were told."""
    import collections
    import re

    from facegen_ray.data.feedback import FeedbackStore, feedback_id, feedback_record_problem
    from facegen_ray.storage import Storage

    storage = Storage()
    store = FeedbackStore(storage, root)
    records: dict[str, dict] = {}
    half_written = temp_files = 0
    for uri in storage.find(store.records_dir):
        m = re.match(r"^([0-9a-f]{32})\.json$", uri.rsplit("/", 1)[-1])
        if not m:  # an in-flight write's temp file (never read as a record)
            temp_files += 1
            continue
        try:
            rec = json.loads(storage.read_bytes(uri).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            half_written += 1
            continue
        if feedback_record_problem(rec) is not None or rec.get("feedback_id") != m.group(1):
            half_written += 1
            continue
        records[m.group(1)] = rec
    ours = {fid: r for fid, r in records.items() if str(r.get("comment") or "").startswith(f"{tag} post ")}
    copies = collections.Counter(r["comment"] for r in ours.values())
    lost = id_mismatches = 0
    acknowledged = set()
    for p in posts:
        who = p.get("rater") or rater  # the rater the server folded into the id (one per client)
        expected = feedback_id(p["image_id"], f"{who}|{p['key']}" if who else p["key"])
        id_mismatches += any(i != expected for i in p["ids"])
        if p["final"] in ACKNOWLEDGED:
            acknowledged.add(expected)
            rec = ours.get(expected)
            body = p["body"]
            if rec is None or any(rec.get(k) != body[k] for k in body):  # missing, unreadable or another body
                lost += 1
    return {
        "records_on_disk": len(ours),
        "lost": lost,
        "duplicates": sum(c - 1 for c in copies.values()),  # one post stored under two ids
        "half_written": half_written,
        "temp_files_left": temp_files,
        "unacknowledged_records": sum(1 for fid in ours if fid not in acknowledged),
        "id_mismatches": id_mismatches,
    }


def feedback_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="serve_load.py feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--posts", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument(
        "--kill-at",
        type=float,
        default=0.3,
        help="SIGKILL the ingress replica when this fraction of posts is answered (<0: no kill)",
    )
    p.add_argument("--images", type=int, default=64, help="images generated first (the posts cycle through them)")
    p.add_argument("--model", default=None, help="model directory URI (default: a random model of --size)")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--root", default=None, help="storage root of the feedback store (default: a temp dir)")
    p.add_argument("--max-attempts", type=int, default=40)
    p.add_argument("--max-backoff-s", type=float, default=2.0)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per attempt")
    p.add_argument("--replay", type=int, default=500, help="acknowledged posts sent once more afterwards")
    p.add_argument("--ray-cpus", type=int, default=4)
    p.add_argument("--ledger", default=None, help="write every post (key, body, statuses, ids) here as JSON lines")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = p.parse_args(argv)
    if args.posts < 1 or args.clients < 1 or args.images < 1:
        p.error("--posts, --clients and --images must be >= 1")

    import datetime as _dt
    import uuid

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import httpx
    import ray
    import torch
    from ray import serve

    from facegen_ray.config import ModelConfig
    from facegen_ray.models import Generator, save_model_dir
    from facegen_ray.serve.app import APP_NAME, build_app
    from facegen_ray.storage import Storage

    machine = _machine()
    date = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    tmp = tempfile.mkdtemp(prefix="facegen-feedback-load-")
    root = args.root or os.path.join(tmp, "root")
    model_uri = args.model
    if model_uri is None:
        torch.manual_seed(0)
        cfg = ModelConfig(**SIZES[args.size])
        G = Generator(cfg)
        G.set_stage(G.max_stage, 1.0)
        model_uri = os.path.join(tmp, "model")
        save_model_dir(Storage(), model_uri, G, cfg, {"version": f"random-{args.size}"})

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(x for x in (repo, os.environ.get("PYTHONPATH")) if x)
    # the dashboard process serves Ray's state API (how the replica's pid is found)
    ctx = _start_ray(
        num_cpus=args.ray_cpus,
        include_dashboard=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    state_api = f"http://{ctx.dashboard_url}"
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            build_app(
                {
                    "model": model_uri,
                    "root": root,
                    "num_cpus": 0.5,
                    "num_gpus": 0,
                    "min_replicas": 1,
                    "max_replicas": 1,
                    "ingress_replicas": 1,
                    "ingress_num_cpus": 0.5,
                    "ingress_max_ongoing_requests": max(256, 2 * args.clients),
                    "set": LOAD_TEST_SETTINGS,
                }
            ),
            name=APP_NAME,
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}"
        image_ids: list[str] = []
        with httpx.Client(base_url=url, timeout=120) as c:
            seed = 0
            while len(image_ids) < args.images:
                k = min(16, args.images - len(image_ids))
                r = c.post("/generate", json={"seed": seed, "num_images": k})
                r.raise_for_status()
                image_ids += [im["image_id"] for im in r.json()["images"]]
                seed += k
        tag = f"load-{uuid.uuid4().hex[:12]}"
        posts = make_posts(args.posts, image_ids, tag)
        kill_after = None if args.kill_at < 0 else max(1, min(args.posts, int(round(args.kill_at * args.posts))))
        run = asyncio.run(
            _feedback_load(
                url, posts, args.clients, kill_after, args.max_attempts, args.max_backoff_s, args.timeout_s, state_api
            )
        )
        acked = [q for q in posts if q["final"] in ACKNOWLEDGED]
        step = max(1, len(acked) // max(1, args.replay)) if args.replay > 0 else 0
        sample = acked[::step][: args.replay] if step else []
        replay = (
            asyncio.run(_replay(url, sample, min(args.clients, 16), args.timeout_s, run["cookies"])) if sample else []
        )
        model_version = httpx.get(f"{url}/healthz", timeout=60).json().get("model_version")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    from facegen_ray.data.feedback import feedback_id

    rater = run["rater"]
    expected = {q["key"]: feedback_id(q["image_id"], f"{rater}|{q['key']}") for q in posts}
    disk = verify_store(root, posts, tag, rater)
    lat = [q["latency_s"] for q in acked]
    failed = {}
    for q in posts:
        for s_ in q["statuses"][:-1] if q["final"] in ACKNOWLEDGED else q["statuses"]:
            failed[str(s_)] = failed.get(str(s_), 0) + 1
    ms = lambda xs, q: round(1000 * _pct(xs, q), 2) if xs else None  # noqa: E731
    out = {
        "benchmark": "serve_feedback_load_kill",
        "requests": len(posts),
        "clients": args.clients,
        "accepted": len(acked),
        "created": sum(q["final"] == 201 for q in posts),
        "already_stored": sum(q["final"] == 200 for q in posts),  # an earlier attempt had stored it
        "rejected": sum(q["final"] not in ACKNOWLEDGED for q in posts),
        "gave_up": sum(q["final"] == "gave_up" for q in posts),
        "retried": sum(len(q["statuses"]) > 1 for q in posts),
        "attempts": sum(len(q["statuses"]) for q in posts),
        "failed_attempts": dict(sorted(failed.items())),
        **disk,
        "replayed": len(replay),
        "replay_mismatches": sum(r["status"] != 200 or r["feedback_id"] != expected[r["key"]] for r in replay),
        "p50_ms": ms(lat, 50),
        "p99_ms": ms(lat, 99),
        "max_ms": ms(lat, 100),
        "attempt_p50_ms": ms(run["attempt_latencies"], 50),
        "attempt_p99_ms": ms(run["attempt_latencies"], 99),
        "wall_s": round(run["wall_s"], 2),
        "posts_per_s": round(len(posts) / run["wall_s"], 1),
        "kill": run["kill"],
        "rater": rater,
        "images": len(image_ids),
        "model": model_version,
        "max_attempts": args.max_attempts,
        "ray": ray.__version__,
        "machine": machine,
        "date": date,
        "command": "python benchmarks/serve_load.py feedback " + " ".join(argv),
    }
    if args.ledger:
        with open(args.ledger, "w") as f:
            for q in posts:
                f.write(json.dumps({**q, "tag": tag}) + "\n")
    line = json.dumps(out)
    print(line, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(line + "\n")
    killed = run["kill"] is None or ("pid_after" in run["kill"] and "error" not in run["kill"])
    ok = (
        killed
        and out["lost"] == 0
        and out["duplicates"] == 0
        and out["half_written"] == 0
        and out["id_mismatches"] == 0
        and out["replay_mismatches"] == 0
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "feedback":
        return feedback_main(argv[1:])
    if argv and argv[0] == "generate":
        argv = argv[1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory URI (default: a random model of --size)")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--root", default=None, help="storage root for the feedback store (default: a temp dir)")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--requests", default="64,256,1024", help="requests per concurrency level")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="num_cpus (and torch threads) per generator replica")
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the app, e.g. serve.fake_forward_ms=45+23.5n",
    )
    p.add_argument("--open-rate", type=float, default=None, help="also run open loop: Poisson requests/s")
    p.add_argument("--open-seconds", type=float, default=30.0)
    p.add_argument("--skip-raw", action="store_true", help="do not time the raw generator")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument(
        "--ingress-replicas",
        type=int,
        default=1,
        help="serve.ingress_replicas: the processes that PNG-encode, watermark and record each image",
    )
    p.add_argument("--ingress-cpus", type=float, default=0.5, help="serve.ingress_num_cpus")
    args = p.parse_args(argv)
    conc = [int(x) for x in args.concurrency.split(",")]
    reqs = [int(x) for x in args.requests.split(",")]
    if len(reqs) != len(conc):
        p.error("--requests needs one count per --concurrency level")

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import datetime as _dt

    import ray
    import torch
    from ray import serve

    from facegen_ray.config import ModelConfig
    from facegen_ray.models import Generator, save_model_dir
    from facegen_ray.serve.app import APP_NAME, GENERATOR_NAME, build_app
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

    from facegen_ray.config import load_config
    from facegen_ray.config.serve import fake_forward_costs

    fake = load_config(None, list(args.set)).serve.fake_forward_ms  # validated like the app does
    costs = fake_forward_costs(fake) if fake else None
    device = choose_device(args.num_gpus)
    model = load_model(storage, model_uri, root, device=device)
    threads = max(1, int(args.replica_cpus))
    raw = {}
    for b in sorted(set(conc)):
        if costs is not None:  # the fake's capacity at batch b
            raw[b] = round(1000 * b / (costs[0] + costs[1] * b), 2)
        elif not args.skip_raw:
            raw[b] = round(_raw_throughput(model.G, b, threads), 2)
        if device == "cuda":
            torch.cuda.synchronize()

    _start_ray(num_cpus=max(4, os.cpu_count() or 2) * 2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(
            {
                "model": model_uri,
                "root": root,
                "num_cpus": args.replica_cpus,
                "num_gpus": args.num_gpus,
                "min_replicas": args.replicas,
                "max_replicas": args.replicas,
                "max_batch_size": args.max_batch_size,
                "ingress_replicas": args.ingress_replicas,
                "ingress_num_cpus": args.ingress_cpus,
                "ingress_max_ongoing_requests": max(256, 2 * max(conc)),
                "set": LOAD_TEST_SETTINGS + list(args.set),
            }
        ),
        name=APP_NAME,
        route_prefix="/",
    )
    url = f"http://127.0.0.1:{port}"
    generator = serve.get_deployment_handle(GENERATOR_NAME, app_name=APP_NAME)
    asyncio.run(_load(url, 4, 16, 10_000_000))  # warm-up
    served = []
    seed0 = 0
    metric_before = None
    levels = [("closed", c, n) for c, n in zip(conc, reqs)]
    if args.open_rate:
        levels.append(("open", None, None))
    for mode, c, n in levels:
        before = generator.batch_stats.remote().result()
        if mode == "closed":
            res = asyncio.run(_load(url, c, n, seed0))
            seed0 += n
            res["raw_images_per_s_at_batch"] = raw.get(c)
            res["batching_efficiency"] = round(res["images_per_s"] / raw[c], 3) if raw.get(c) else None
        else:
            res = asyncio.run(_open_loop(url, args.open_rate, args.open_seconds, seed0))
            seed0 += res["requests"]
        after = generator.batch_stats.remote().result()
        res.update(_batch_delta(before, after))
        metric = _metric_batches(after["batches"])
        res["metric_batch_images_median_le"] = _median_bucket(metric, metric_before) if metric else None
        metric_before = metric or metric_before
        split = res.get("p50_split_ms", {})
        if split.get("forward"):
            res["queue_over_forward_p50"] = round(split.get("queue", 0.0) / split["forward"], 2)
        served.append(res)
    serve.shutdown()
    ray.shutdown()
    print(
        json.dumps(
            {
                "benchmark": "serve_load",
                "device": device,
                "model": model.version,
                "resolution": model.resolution,
                "model_size": None if args.model else args.size,
                "replicas": args.replicas,
                "replica_cpus": args.replica_cpus,
                "ingress_replicas": args.ingress_replicas,
                "ingress_cpus": args.ingress_cpus,
                "max_batch_size": args.max_batch_size,
                "fake_forward_ms": fake,
                "host_cpus": os.cpu_count(),
                "torch_threads": threads,
                "served": served,
                ("fake_capacity_images_per_s" if fake else "raw_images_per_s"): {str(k): v for k, v in raw.items()},
                "machine": _machine(),
                "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "command": "python benchmarks/serve_load.py " + " ".join(argv),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
