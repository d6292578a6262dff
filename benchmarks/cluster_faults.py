"""Faults on a multi-host cluster on one machine (`facegen cluster`: network namespaces, S3 the only
shared storage); each mode builds its own cluster, injects one fault, always tears the cluster
down, and appends one JSON line to docs/cluster/<mode>.jsonl.

train-kill: a DDP run (configs/cluster-tiny.yaml: STRICT_SPREAD, 2 workers on 2 worker hosts,
  max_failures 1) is started; once Ray Train has committed a checkpoint in S3, every process of
  one worker host is SIGKILLed (`kill-host`) and a replacement host joins (`add-host`). Reports
  the time from the kill to the resumed run's first line and to its first progress beyond the
  kill, the checkpoint it resumed from, the images re-done, how many restarts it took, whether
  the run finished at the configured image count, and whether the exported model generates.
partition: the same run; one worker host's link is taken down for --seconds (30), then up.
  Reports what Ray did (whether and when it declared the host dead, restarts) and whether the
  run finished; a host declared dead is replaced (`add-host`) unless --no-replace, in which case
  the run must fail by itself after train.resource_wait_s (--resource-wait) with a message.
tune-kill: a 4-trial sweep (tune_configs/cluster-tiny.yaml) on S3; a worker host is SIGKILLed
  once a trial has a checkpoint and a replacement joins; every trial must finish and be ranked.
serve-kill: see cluster_serve.py.

    timeout 480 python benchmarks/cluster_faults.py train-kill
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import threading
import time
import uuid

from facegen_ray.cluster import local
from facegen_ray.cluster.jobs import LocalCluster
from facegen_ray.cluster.plan import STATE_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "facegen_ray", "sample_data", "utkface-sample.zip")
MACHINE = "2-core AMD EPYC CPU VM, no GPU (one Linux VM: hosts are network namespaces on one bridge)"
RESUMED = re.compile(r"resumed from checkpoint at (\d+) images")
CKPT_KEY = re.compile(r"^([^/]+)/.*checkpoint-0*(\d+)/state\.pt$")
PROGRESS = re.compile(r"\[facegen\] (\d+\.\d)k img \|")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(logs: str, *needles: str, n: int = 12) -> list[str]:
    return [ANSI.sub("", ln) for ln in logs.splitlines() if any(k in ln for k in needles)][-n:]


def record(mode: str, args: argparse.Namespace) -> dict:
    return {
        "fault": mode,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": MACHINE,
        "command": "python benchmarks/cluster_faults.py " + " ".join(sys.argv[1:]),
    }


def committed_checkpoints(c: LocalCluster, run_prefix: str) -> list[int]:
    """Images of the checkpoints Ray Train's controller has committed (its snapshot names them)."""
    key = f"{run_prefix}/checkpoint_manager_snapshot.json"
    try:
        body = c.s3().get_object(Bucket="facegen", Key=key)["Body"].read().decode()
    except Exception:  # noqa: BLE001 (not written yet)
        return []
    return sorted({int(m) for m in re.findall(r"checkpoint-(\d{12})", body)})


def last_progress(logs: str) -> int:
    found = PROGRESS.findall(logs)
    return int(float(found[-1]) * 1000) if found else 0


def node_states(c: LocalCluster) -> dict[str, str]:
    """node IP -> Ray's state for it (ALIVE / DEAD), from `ray list nodes` on the head."""
    nodes = local.run_on(
        c.reload(), 0, ["ray", "list", "nodes", "--format", "json"], capture_output=True, text=True, timeout=60
    )
    try:
        return {n["node_ip"]: n["state"] for n in json.loads(nodes.stdout)}
    except (ValueError, KeyError):
        return {"error": nodes.stdout[-500:] + nodes.stderr[-500:]}


def start_training(
    c: LocalCluster, root: str, total: int, every: int, max_failures: int, resource_wait_s: float = 600.0
) -> str:
    raw = c.upload(SAMPLE, "raw/utkface-sample.zip")
    prep = c.run_job(f"facegen prepare {raw} {root}/datasets/faces --resolution 8 --limit 128", timeout=300)
    if prep.status != "SUCCEEDED":
        raise RuntimeError("prepare failed:\n" + prep.logs[-3000:])
    return c.submit(
        f"facegen train --config configs/cluster-tiny.yaml --root {root} --set train.total_images={total} "
        f"--set train.checkpoint_every_images={every} --set train.max_failures={max_failures} "
        f"--set train.resource_wait_s={resource_wait_s:g}"
    )


def wait_for_checkpoint(c: LocalCluster, job: str, run_prefix: str, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = committed_checkpoints(c, run_prefix)
        if done:
            return done
        if str(c.client().get_job_status(job).value) in {"FAILED", "STOPPED", "SUCCEEDED"}:
            raise RuntimeError("training ended before a checkpoint:\n" + c.client().get_job_logs(job)[-3000:])
        time.sleep(0.5)
    raise RuntimeError("no committed checkpoint in time")


def finish(c: LocalCluster, job: str, out: dict, total: int, root: str, timeout: float) -> dict:
    res = c.wait(job, timeout)
    lines = [ln for ln in res.logs.splitlines() if ln.startswith('{"run"')]
    final = json.loads(lines[-1]) if lines else {}
    out.update(
        job_status=res.status,
        images_seen=final.get("images_seen"),
        finished_at_configured_images=final.get("images_seen") == total,
        restarts=len(RESUMED.findall(res.logs)),
        workers=[{k: w.get(k) for k in ("rank", "node_ip")} for w in final.get("workers", [])],
        weights_identical=len({w.get("g_digest") for w in final.get("workers", [])}) == 1,
    )
    if final.get("model_uri"):
        gen = c.run_job(f"facegen generate {final['model_uri']} --seeds 0-3 --out {root}/check.png", timeout=180)
        out["final_model_generates"] = gen.status == "SUCCEEDED" and bool(c.keys(root.split("/", 3)[3] + "/check.png"))
    return res.logs


def train_kill(c: LocalCluster, args: argparse.Namespace) -> dict:
    root = f"s3://facegen/kill-{uuid.uuid4().hex[:6]}"
    prefix = root.split("/", 3)[3] + "/runs/cluster-tiny"
    job = start_training(c, root, args.total_images, args.checkpoint_every, max_failures=1)
    committed = wait_for_checkpoint(c, job, prefix, 300)
    seen_at_kill = last_progress(c.client().get_job_logs(job))
    victim = c.state.hosts[-1].index
    t_kill = time.monotonic()
    killed = local.kill_host(c.reload(), victim)
    host = local.add_host(c.reload())
    t_added = time.monotonic()
    out = record("train-kill", args)
    out.update(
        config="configs/cluster-tiny.yaml (8x8, 2 DDP workers STRICT_SPREAD, max_failures 1)",
        total_images=args.total_images,
        checkpoint_every_images=args.checkpoint_every,
        killed_host=victim,
        killed_processes=killed,
        replacement_host=host.index,
        replacement_join_s=round(t_added - t_kill, 1),
        last_committed_checkpoint_at_kill=committed[-1],
        images_seen_at_kill_approx=seen_at_kill,
    )
    resumed_at, first_progress_s = None, None
    while time.monotonic() - t_kill < args.timeout:
        logs = c.client().get_job_logs(job)
        m = RESUMED.findall(logs)
        if m and resumed_at is None:
            resumed_at = int(m[0])
            out["recovery_to_resume_s"] = round(time.monotonic() - t_kill, 1)
        if resumed_at is not None and last_progress(logs.split("resumed from checkpoint")[-1]) > seen_at_kill:
            first_progress_s = round(time.monotonic() - t_kill, 1)
            break
        if str(c.client().get_job_status(job).value) in {"FAILED", "STOPPED", "SUCCEEDED"}:
            break
        time.sleep(1)
    out.update(
        resumed_from_images=resumed_at,
        recovery_past_kill_point_s=first_progress_s,
        images_redone_approx=(seen_at_kill - resumed_at) if resumed_at is not None else None,
    )
    logs = finish(c, job, out, args.total_images, root, args.timeout)
    out["log_tail"] = tail(logs, "[facegen]", "Error")
    return out


def partition(c: LocalCluster, args: argparse.Namespace) -> dict:
    root = f"s3://facegen/part-{uuid.uuid4().hex[:6]}"
    prefix = root.split("/", 3)[3] + "/runs/cluster-tiny"
    job = start_training(
        c, root, args.total_images, args.checkpoint_every, max_failures=2, resource_wait_s=args.resource_wait
    )
    wait_for_checkpoint(c, job, prefix, 300)
    victim = c.state.hosts[-1]
    out = record("partition", args)
    out.update(
        partitioned_host=victim.index,
        seconds=args.seconds,
        images_seen_at_cut_approx=last_progress(c.client().get_job_logs(job)),
    )
    t0 = time.monotonic()
    cut = threading.Thread(target=local.partition, args=(c.reload(), victim.index, args.seconds))
    cut.start()
    cut.join()
    out["link_restored_s"] = round(time.monotonic() - t0, 1)
    # Ray's verdict on the cut host comes from its health checks, some seconds after the link is
    # back: watch the node table for --verdict-s. A node declared dead does not come back by
    # itself (its raylet exits when it learns that); unless --no-replace, a replacement joins,
    # as an autoscaler would add one. With --no-replace the run must give up by itself after
    # train.resource_wait_s (train/failures.py) instead of waiting forever.
    states, declared_dead_s = {}, None
    while time.monotonic() - t0 < args.seconds + args.verdict_s:
        states = node_states(c)
        if states.get(victim.ip) == "DEAD":
            declared_dead_s = round(time.monotonic() - t0, 1)
            break
        time.sleep(2)
    out["ray_node_states_after"] = states
    out["declared_dead_after_cut_s"] = declared_dead_s
    out["resource_wait_s"] = args.resource_wait
    if declared_dead_s is not None and not args.no_replace:
        local.add_host(c.reload())
        out["replacement_added_s"] = round(time.monotonic() - t0, 1)
    logs = finish(c, job, out, args.total_images, root, args.timeout)
    out["total_s"] = round(time.monotonic() - t0, 1)
    out["gave_up_with_message"] = "could not be (re)started within train.resource_wait_s" in logs
    out["log_tail"] = tail(logs, "[facegen]", "Error", "dead", "died", "resource_wait_s")
    return out


def tune_kill(c: LocalCluster, args: argparse.Namespace) -> dict:
    """tune_configs/cluster-tiny.yaml (4 trials, 2 at a time, one worker each) on S3; once two
    trials have committed a checkpoint, SIGKILL every process of one worker host and add a replacement.
    The trial drivers sit on the head (tune/runner.py), so a trial that lost its worker resumes
    from its checkpoint through Ray Train, and the sweep must rank all 4 trials."""
    root = f"s3://facegen/tune-{uuid.uuid4().hex[:6]}"
    raw = c.upload(SAMPLE, "raw/utkface-sample.zip")
    prep = c.run_job(f"facegen prepare {raw} {root}/datasets/faces --resolution 8 --limit 128", timeout=300)
    if prep.status != "SUCCEEDED":
        raise RuntimeError("prepare failed:\n" + prep.logs[-3000:])
    job = c.submit(f"facegen tune tune_configs/cluster-tiny.yaml --root {root}")
    prefix = root.split("/", 3)[3] + "/tune/cluster-tiny/runs/"
    end = time.monotonic() + 420

    def checkpointed() -> dict[str, int]:  # trial id -> images of its newest committed checkpoint
        out: dict[str, int] = {}
        for k in c.keys(prefix):
            m = CKPT_KEY.search(k[len(prefix) :])
            if m:
                out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)))
        return out

    # both running trials (one worker each, one per worker host under PACK) have a checkpoint of
    # their own: whichever worker host dies, the trial on it has something to resume from
    while len(ckpts := checkpointed()) < 2:
        if time.monotonic() > end or str(c.client().get_job_status(job).value) in {"FAILED", "STOPPED", "SUCCEEDED"}:
            raise RuntimeError("no two trial checkpoints before the kill:\n" + c.client().get_job_logs(job)[-3000:])
        time.sleep(1)
    victim = c.state.hosts[-1].index
    t_kill = time.monotonic()
    killed = local.kill_host(c.reload(), victim)
    host = local.add_host(c.reload())
    out = record("tune-kill", args)
    out.update(
        sweep="tune_configs/cluster-tiny.yaml (4 trials, 2 at a time, 1 worker each, 768 images, FID 32 vs 32)",
        killed_host=victim,
        killed_processes=killed,
        replacement_host=host.index,
        replacement_join_s=round(time.monotonic() - t_kill, 1),
        checkpointed_before_kill=ckpts,
    )
    res = c.wait(job, args.timeout)
    lines = [ln for ln in res.logs.splitlines() if ln.startswith('{"sweep"')]
    summary = json.loads(lines[-1]) if lines else {}
    trials = summary.get("trials", [])
    out.update(
        job_status=res.status,
        sweep_s_after_kill=round(time.monotonic() - t_kill, 1),
        num_trials=summary.get("num_trials"),
        num_finished=summary.get("num_finished"),
        num_errors=summary.get("num_errors"),
        ranked=[t.get("rank") for t in trials],
        trials=[{k: t.get(k) for k in ("trial_id", "status", "images_seen", "fid")} for t in trials],
        restarts=len(RESUMED.findall(res.logs)),
        resumed_from=[int(x) for x in RESUMED.findall(res.logs)],
    )
    out["log_tail"] = tail(res.logs, "resumed", "Error", "best:")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("train-kill", "partition", "tune-kill"))
    p.add_argument("--total-images", type=int, default=2048)
    p.add_argument("--checkpoint-every", type=int, default=256)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--verdict-s", type=float, default=60, help="partition: how long to watch for the node's death")
    p.add_argument("--no-replace", action="store_true", help="partition: add no host when the cut one is declared dead")
    p.add_argument("--resource-wait", type=float, default=600, help="train.resource_wait_s of the run")
    p.add_argument("--timeout", type=float, default=360)
    p.add_argument("--subnet", default="10.213.70.0/24")
    p.add_argument("--out", default=None, help="JSONL to append to (default docs/cluster/<mode>.jsonl)")
    args = p.parse_args(argv)
    name = "b" + uuid.uuid4().hex[:4]
    fn = {"train-kill": train_kill, "partition": partition, "tune-kill": tune_kill}[args.mode]
    with LocalCluster(3, name=name, subnet=args.subnet, state_file=f"{STATE_DIR}/{name}.json") as c:
        out = fn(c, args)
    line = json.dumps(out)
    print(line)
    path = args.out or os.path.join(REPO, "docs", "cluster", f"{args.mode}.jsonl")
    with open(path, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
