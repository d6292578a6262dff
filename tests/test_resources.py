"""Train/tune wait for the cluster to grow instead of failing on what it has now.

The slow test runs `facegen train` on a `ray.cluster_utils.Cluster` whose only node lacks the
resource each train worker needs (a custom resource `accel`: the same code path as
train.use_gpu's GPU, which a CPU-only machine cannot fake for torch). A simulated autoscaler,
a thread reading the request that `ray.autoscaler.sdk.request_resources` leaves in the GCS (the
internal-KV key the v1 autoscaler reads, or a cluster resource constraint where autoscaler v2 is
on), adds a node with that resource once the job is waiting;
the run then starts and finishes, and the request is withdrawn. A run needing a resource that
never appears fails after train.resource_wait_s with a clear message. A run with a local storage
root starts on a one-node cluster (the root passes the shared-storage check there) and is refused
once the wait has brought a second node, before any worker starts. `facegen tune` waits the
same way for one trial's resources, by the names the workers use. What is not simulated:
a cloud provider launching an instance (minutes), Ray's autoscaler process itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facegen_ray.resources import shortfall

REPO = Path(__file__).resolve().parents[1]


def test_embedded_ray_fails_at_once_naming_what_is_missing(ray_session):
    """wait_s 0 (facegen's own Ray on this machine cannot grow): no request, no waiting."""
    from facegen_ray.errors import UserError
    from facegen_ray.resources import wait_for_resources

    with pytest.raises(UserError, match=r"needs 2 GPU \(cluster has 0\) and this Ray instance cannot grow"):
        wait_for_resources([{"CPU": 1, "GPU": 1}] * 2, 0.0, "training run 'x'")
    assert wait_for_resources([{"CPU": 1}], 0.0, "training run 'x'") is False  # fits: no request


def test_shortfall_names_what_is_missing():
    bundles = [{"CPU": 1, "GPU": 1}] * 4 + [{"CPU": 1}]
    assert shortfall(bundles, {"CPU": 8, "GPU": 1}) == {"GPU": (4.0, 1.0)}
    assert shortfall(bundles, {"CPU": 4}) == {"CPU": (5.0, 4.0), "GPU": (4.0, 0.0)}
    assert shortfall(bundles, {"CPU": 5, "GPU": 4}) == {}


SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, threading, time
    sys.path.insert(0, {repo!r})
    import ray
    from ray.cluster_utils import Cluster
    from ray.experimental.internal_kv import _internal_kv_get
    from ray._raylet import GcsClient
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from facegen_ray.cli import main as cli_main

    root, sample = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 3, "include_dashboard": False}})
    ray.init(address=cluster.address, runtime_env={{"env_vars": {{"PYTHONPATH": {repo!r}}}}})
    os.environ["RAY_ADDRESS"] = cluster.address  # a cluster facegen joined (it may grow), not an embedded Ray
    out = {{"requests": []}}

    def request():  # what request_resources last asked for, read where this Ray version puts it
        if is_autoscaler_v2():  # a cluster resource constraint in the GCS (autoscaler v2)
            state = get_cluster_resource_state(GcsClient(cluster.address))
            req = [dict(r.request.resources_bundle) for c in state.cluster_resource_constraints
                   for r in c.resource_requests for _ in range(r.count)]
            return req  # [] once withdrawn (or before any request)
        raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)  # v1: a JSON list in the KV store
        return json.loads(raw) if raw else None

    def autoscaler(until, resource):  # adds one node per requested `resource` bundle the cluster lacks
        added = 0  # (in the main thread: a cluster_utils node installs signal handlers)
        while until.is_alive():
            req = request() or []
            want = sum(1 for b in req if b.get(resource))
            if want > added:
                out["requests"].append(req)
                time.sleep(3)  # a node takes a while to come up
                for _ in range(want - added):
                    cluster.add_node(num_cpus=1, resources={{resource: 1}})
                added = want
            time.sleep(0.2)

    def grow(name, argv, resource):
        job = threading.Thread(target=lambda: out.__setitem__(name, run(argv)))
        job.start()
        autoscaler(job, resource)
        job.join()

    def run(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli_main(argv)
        return rc, err.getvalue()

    try:
        assert cli_main(["prepare", sample, root + "/datasets/faces", "--resolution", "8", "--limit", "32"]) == 0
        common = ["train", "--root", root, "--no-export", "--set", "model.resolution=8", "--set", "model.z_dim=32",
                  "--set", "model.w_dim=32", "--set", "model.fmap_base=128", "--set", "model.fmap_max=32",
                  "--set", "train.start_resolution=8", "--set", "train.total_images=16",
                  "--set", "train.batch_size={{8: 8}}", "--set", "train.checkpoint_every_images=16",
                  "--set", "train.num_workers=1", "--set", "train.max_failures=0"]
        out["never"] = run(common + ["--run-name", "never", "--set", 'train.resources_per_worker={{"CPU": 1, "never": 1}}',
                                     "--set", "train.resource_wait_s=3"])
        out["request_after_never"] = request()
        # disks that are not shared: one node when the run starts (the local root passes), but the
        # node the wait brings has a disk of its own: refused before any worker starts
        os.environ["FACEGEN_SHARED_FS"] = "0"
        grow("local", common + ["--run-name", "local", "--set", 'train.resources_per_worker={{"CPU": 1, "accel2": 1}}',
                                "--set", "train.resource_wait_s=180"], "accel2")
        out["request_after_local"] = request()
        out["local_run_written"] = os.path.exists(root + "/runs/local")
        os.environ["FACEGEN_SHARED_FS"] = "1"  # cluster_utils nodes do share this host's disk
        grows = common + ["--run-name", "grows", "--set", 'train.resources_per_worker={{"CPU": 1, "accel": 1}}',
                          "--set", "train.resource_wait_s=180"]
        grow("grows", grows, "accel")
        out["request_after_run"] = request()
        # a sweep waits the same way: one trial's worker needs accel3, which only a new node has
        base, sweep = os.path.join(root, "base.yaml"), os.path.join(root, "sweep.yaml")
        with open(base, "w") as f:
            json.dump({{"model": {{"resolution": 8, "z_dim": 32, "w_dim": 32, "fmap_base": 128, "fmap_max": 32}},
                       "train": {{"start_resolution": 8, "total_images": 16, "batch_size": {{8: 8}},
                                 "checkpoint_every_images": 16, "num_workers": 1, "max_failures": 0,
                                 "resources_per_worker": {{"CPU": 1, "accel3": 1}}, "resource_wait_s": 180}}}}, f)
        with open(sweep, "w") as f:
            json.dump({{"name": "grows", "base_config": "base.yaml", "num_samples": 1, "max_concurrent_trials": 1,
                       "search_space": {{"train.g_lr": {{"choice": [0.002]}}}},
                       "eval": {{"num_gen": 8, "num_real": 8, "batch_size": 8}}}}, f)
        grow("sweep", ["tune", sweep, "--root", root], "accel3")
        out["request_after_sweep"] = request()
        out["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        print("RESULT " + json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow  # a cluster_utils cluster, nodes added mid-run, short training runs and a sweep: ~2 min
def test_train_waits_for_the_autoscaler_and_fails_when_nothing_fits(tmp_path, sample_zip):
    script = tmp_path / "grow.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # cluster_utils nodes share this host's disk: the local root is fine once the node joins
    env.update(PYTHONPATH=str(REPO), RAY_TRAIN_ENABLE_STATE_TRACKING="0", FACEGEN_SHARED_FS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "root"), str(sample_zip)],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT ") :])
    rc, err = res["never"]
    assert rc == 2 and "1 never (cluster has 0)" in err and "within 3 s" in err and "resource_wait_s" in err, err
    assert res["request_after_never"] == []  # withdrawn on failure
    rc, err = res["grows"]
    assert rc == 0, err[-3000:]
    assert "waiting for 1 accel (cluster has 0); asked the autoscaler" in err, err[-3000:]
    assert any({"CPU": 1.0, "accel": 1.0} in r for r in res["requests"]), res["requests"]
    assert res["request_after_run"] == []
    rc, err = res["local"]
    assert rc == 2 and "waiting for 1 accel2 (cluster has 0)" in err, err[-3000:]
    assert "storage.root = " in err and "a local path, but this Ray cluster has 2 nodes" in err, err[-3000:]
    assert res["request_after_local"] == [] and not res["local_run_written"]
    rc, err = res["sweep"]
    assert rc == 0, err[-3000:]
    assert "waiting for 1 accel3 (cluster has 0); asked the autoscaler" in err, err[-3000:]
    assert any({"CPU": 1.0, "accel3": 1.0} in r for r in res["requests"]), res["requests"]
    assert res["request_after_sweep"] == [] and res["nodes"] == 4
