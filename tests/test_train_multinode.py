"""Multi-node training: `ray.cluster_utils.Cluster` with 2 nodes, one train worker on each
(STRICT_SPREAD), a few steps at 8x8; both workers must have stepped and hold bit-identical
weights. Runs in a subprocess with its own Ray cluster (not the session's Ray instance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, os.path.join({repo!r}, "tests"))
    import ray
    from ray.cluster_utils import Cluster
    from conftest import tiny_model_dict
    from facegen_ray.cli import main as cli_main
    from facegen_ray.config import FacegenConfig
    from facegen_ray.storage import Layout
    from facegen_ray.train.trainer import train

    root, sample = sys.argv[1], sys.argv[2]
    # 2 nodes x 2 CPUs: one CPU per node for the train worker, one for Ray Data tasks
    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2, "include_dashboard": False}})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, runtime_env={{"env_vars": {{"PYTHONPATH": {repo!r}}}}})
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert cli_main(["prepare", sample, Layout(root).dataset("faces"), "--resolution", "8", "--limit", "64"]) == 0
        cfg = FacegenConfig.model_validate({{
            "storage": {{"root": root}}, "model": tiny_model_dict(8),
            "loss": {{"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 2}},
            "train": {{"run_name": "multinode", "num_workers": 2, "placement_strategy": "STRICT_SPREAD",
                      "resources_per_worker": {{"CPU": 1}}, "start_resolution": 8, "total_images": 64,
                      "batch_size": {{8: 8}}, "checkpoint_every_images": 32, "log_every_images": 16,
                      "shuffle_buffer": 0, "amp": False, "max_failures": 0}},
        }})
        out = train(cfg, export=False)
        print("RESULT " + json.dumps({{"images_seen": out.images_seen, "workers": out.workers}}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow  # a 2-node cluster_utils cluster: ~75 s in CI; run with -m slow
def test_two_nodes_one_worker_each_stay_identical(tmp_path, sample_zip):
    script = tmp_path / "multinode.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    # cluster_utils nodes share this host's disk: say so (a local root on several nodes is refused otherwise)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_ENABLE_STATE_TRACKING": "0", "RAY_ADDRESS": ""}
    env["FACEGEN_SHARED_FS"] = "1"
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "root"), str(sample_zip)],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT ") :])
    assert res["images_seen"] == 64
    workers = res["workers"]
    assert len(workers) == 2
    assert len({w["node_id"] for w in workers}) == 2, "workers did not run on two different nodes"
    assert all(w["d_steps"] == 8 and w["g_steps"] == 8 for w in workers), workers
    # each worker runs torch on the one CPU it reserved (resources_per_worker), not the node's 2
    assert [w["torch_threads"] for w in workers] == [1, 1], workers
    assert workers[0]["g_digest"] == workers[1]["g_digest"]
    assert workers[0]["d_digest"] == workers[1]["d_digest"]
    assert workers[0]["g_ema_digest"] == workers[1]["g_ema_digest"]
