"""Serving across hosts while one dies (`facegen cluster`, S3 the only shared storage); appends one
JSON line to docs/cluster/serve-kill.jsonl (also run by tests/test_cluster.py with a shorter --duration).

A tiny model is trained and exported on the cluster; `facegen serve` runs as a Ray job with 2
generator replicas (min = max = 2) and 2 ingress replicas, proxies on every node. The generator
replicas must sit on the two worker hosts. --clients (16) clients in the root namespace (outside
the cluster) send POST /generate and POST /feedback (each feedback with its own Idempotency-Key)
to the head's proxy for --duration seconds; a client retries a request once on a 5xx or a
connection error. Halfway, every process of the host of one generator replica is SIGKILLed and a
replacement host joins. Reported: requests, failed (after the one retry) and first-attempt
failures, p50/p99 latency overall and during failover (from the kill until the replica count is
back), the seconds until 2 generator replicas run again, and feedback lost (every 200/201 answer
checked against the S3 store, benchmarks/serve_load.verify_store).

    timeout 540 python benchmarks/cluster_serve.py [--duration 120]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shlex
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_faults as cf  # noqa: E402 (the sibling benchmark: cluster start-up, training, records)

from facegen_ray.cluster import local  # noqa: E402
from facegen_ray.cluster.jobs import LocalCluster  # noqa: E402
from facegen_ray.cluster.plan import STATE_DIR  # noqa: E402

GENERATOR = "GeneratorDeployment"


def _serve_load():
    spec = importlib.util.spec_from_file_location(
        "serve_load", os.path.join(os.path.dirname(__file__), "serve_load.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def actor_hosts(c: LocalCluster) -> dict[str, list[str]]:
    """{actor class: sorted node IPs} of the ALIVE actors (Ray's state API on the head, from outside)."""
    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id: n.node_ip for n in list_nodes(address=c.dashboard, raise_on_missing_output=False)}
    actors = list_actors(
        address=c.dashboard, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False
    )
    out: dict[str, list[str]] = {}
    for a in actors:
        out.setdefault(a.class_name, []).append(nodes.get(a.node_id, "?"))
    return {k: sorted(v) for k, v in sorted(out.items())}


def generator_hosts(c: LocalCluster) -> list[str]:
    """Node IPs of the ALIVE generator replicas."""
    return [ip for name, ips in actor_hosts(c).items() if name.endswith(GENERATOR) for ip in ips]


def wait_ready(c: LocalCluster, url: str, job: str, timeout: float) -> list[str]:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = str(c.client().get_job_status(job).value)
        if status in {"FAILED", "STOPPED", "SUCCEEDED"}:
            raise RuntimeError("serve job ended:\n" + c.client().get_job_logs(job)[-3000:])
        try:
            ok = httpx.post(f"{url}/generate", json={"seed": 1}, timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        hosts = generator_hosts(c) if ok else []
        if ok and len(hosts) >= 2:
            return hosts
        time.sleep(2)
    raise RuntimeError("the app did not come up with 2 generator replicas:\n" + c.client().get_job_logs(job)[-3000:])


async def client_loop(url: str, i: int, end: float, image_ids: list[str], tag: str, log: list, posts: list) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.get("/session")  # feedback needs a rater: each client is one
        r.raise_for_status()
        rater = r.json()["rater"]
        n = 0
        while time.monotonic() < end:
            n += 1
            feedback = n % 2 == 0
            post = None
            if feedback:
                k = len(posts)
                iid = image_ids[k % len(image_ids)]
                body = {"image_id": iid, "approved": k % 3 != 0, "rating": 1 + k % 5, "comment": f"{tag} post {k}"}
                post = {
                    "key": f"{tag}-{i}-{n}",
                    "image_id": iid,
                    "body": body,
                    "ids": [],
                    "final": None,
                    "rater": rater,
                }
                posts.append(post)
            t0 = time.monotonic()
            statuses: list = []
            for _ in range(2):  # one retry on a 5xx / connection error
                try:
                    if feedback:
                        r = await http.post("/feedback", json=post["body"], headers={"Idempotency-Key": post["key"]})
                    else:
                        r = await http.post("/generate", json={"seed": (i * 100_000 + n) % 1_000_000})
                    statuses.append(r.status_code)
                    if r.status_code < 500:
                        if feedback and r.status_code in (200, 201):
                            post["ids"].append(r.json()["feedback_id"])
                        break
                except httpx.TransportError as e:
                    statuses.append(type(e).__name__)
            ok = statuses[-1] in (200, 201)
            if post is not None:
                post["final"] = statuses[-1] if ok else "failed"
            log.append(
                {
                    "t0": t0,
                    "lat": time.monotonic() - t0,
                    "ok": ok,
                    "first_ok": statuses[0] in (200, 201),
                    "feedback": feedback,
                    "statuses": statuses,
                }
            )


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def serve_kill(c: LocalCluster, args: argparse.Namespace) -> dict:
    import httpx

    os.environ.update(local.host_env(c.state))  # this process checks the S3 store afterwards
    root = f"s3://facegen/serve-{uuid.uuid4().hex[:6]}"
    job = cf.start_training(c, root, 256, 256, max_failures=0)
    res = c.wait(job, 300)
    final = [json.loads(ln) for ln in res.logs.splitlines() if ln.startswith('{"run"')]
    if res.status != "SUCCEEDED" or not final or not final[-1].get("model_version"):
        raise RuntimeError("training the model failed:\n" + res.logs[-3000:])
    opts = "min_replicas=2 max_replicas=2 initial_replicas=2 ingress_replicas=2 num_cpus=1 ingress_num_cpus=0.25"
    sets = " ".join(f"--set serve.{o}" for o in opts.split())
    # the load comes from one address: lift the abuse limits far above it (serve_load's settings)
    sets += " " + " ".join(f"--set {shlex.quote(v)}" for v in _serve_load().LOAD_TEST_SETTINGS)
    serve_job = c.submit(f"facegen serve {final[-1]['model_version']} --root {root} --host 0.0.0.0 {sets}")
    url = f"http://{c.state.head.ip}:8000"
    out = cf.record("serve-kill", args)
    out["command"] = "python benchmarks/cluster_serve.py " + " ".join(sys.argv[1:])
    try:
        out["generator_hosts_before"] = wait_ready(c, url, serve_job, 240)
        image_ids = httpx.post(f"{url}/generate", json={"seed": 7, "num_images": 16}, timeout=60).json()["images"]
        image_ids = [im["image_id"] for im in image_ids]
        tag = f"cl-{uuid.uuid4().hex[:8]}"
        log: list[dict] = []
        posts: list[dict] = []
        t_start = time.monotonic()
        end = t_start + args.duration

        async def run() -> dict:
            tasks = [
                asyncio.create_task(client_loop(url, i, end, image_ids, tag, log, posts)) for i in range(args.clients)
            ]
            await asyncio.sleep(args.duration / 2)
            victim = next(h for h in c.reload().hosts if h.alive and h.ip == out["generator_hosts_before"][-1])
            out["actors_before_kill"] = await asyncio.to_thread(actor_hosts, c)
            t_kill = time.monotonic()
            killed = await asyncio.to_thread(local.kill_host, c.reload(), victim.index)
            await asyncio.to_thread(local.add_host, c.reload())
            restored = None
            while restored is None and time.monotonic() - t_kill < args.restore_timeout:
                hosts = await asyncio.to_thread(generator_hosts, c)
                if len(hosts) >= 2 and victim.ip not in hosts:
                    restored = time.monotonic() - t_kill
                    out["generator_hosts_after"] = hosts
                await asyncio.sleep(1)
            await asyncio.gather(*tasks)
            return {"victim": victim.index, "killed": killed, "t_kill": t_kill, "restored_s": restored}

        k = asyncio.run(run())
        window_end = k["t_kill"] + (k["restored_s"] or args.duration)
        during = [r["lat"] for r in log if k["t_kill"] <= r["t0"] <= window_end]
        verify = _serve_load().verify_store(root, posts, tag)
        out.update(
            clients=args.clients,
            duration_s=args.duration,
            killed_host=k["victim"],
            killed_processes=k["killed"],
            requests=len(log),
            generate_requests=sum(not r["feedback"] for r in log),
            feedback_posts=len(posts),
            feedback_acknowledged=sum(p["final"] in (200, 201) for p in posts),
            failed_after_one_retry=sum(not r["ok"] for r in log),
            failed_first_attempt=sum(not r["first_ok"] for r in log),
            failed_pct=round(100 * sum(not r["ok"] for r in log) / max(1, len(log)), 3),
            p50_s=pct([r["lat"] for r in log], 0.5),
            p99_s=pct([r["lat"] for r in log], 0.99),
            p99_during_failover_s=pct(during, 0.99),
            failover_window_requests=len(during),
            replicas_restored_s=None if k["restored_s"] is None else round(k["restored_s"], 1),
            feedback_lost=verify["lost"],
            # what each request that failed after its retry (or on its first attempt) saw, by time from the kill
            failures=[
                {
                    "t_from_kill_s": round(r["t0"] - k["t_kill"], 2),
                    "lat_s": round(r["lat"], 2),
                    "feedback": r["feedback"],
                    "statuses": r["statuses"],
                }
                for r in log
                if not r["first_ok"]
            ][:40],
            store_check=verify,
        )
    finally:
        c.client().stop_job(serve_job)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--restore-timeout", type=float, default=120)
    p.add_argument("--subnet", default="10.213.71.0/24")
    p.add_argument("--out", default=os.path.join(cf.REPO, "docs", "cluster", "serve-kill.jsonl"))
    args = p.parse_args(argv)
    name = "s" + uuid.uuid4().hex[:4]
    with LocalCluster(3, name=name, subnet=args.subnet, state_file=f"{STATE_DIR}/{name}.json") as c:
        out = serve_kill(c, args)
    line = json.dumps(out)
    print(line)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
