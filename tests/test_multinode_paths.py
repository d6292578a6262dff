"""No local path crosses a node boundary: on a `ray.cluster_utils.Cluster` (a local dataset is
prepared while it has one node), then with a second node whose temp dir differs, `facegen train` with a relative root and `facegen prepare` with a
local source fail at start naming the fix (s3://), and a file fetched from storage by a task on
the second node (the Inception given as eval.inception_path=s3://...) lands in that node's own
cache, not the driver's. Runs in a subprocess with its own cluster and moto server."""

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
    import contextlib, io, json, os, sys
    sys.path.insert(0, {repo!r})
    import ray
    from ray.cluster_utils import Cluster
    from facegen_ray.cli import main as cli_main

    tmp, sample, endpoint = sys.argv[1], sys.argv[2], sys.argv[3]
    node_a, node_b = os.path.join(tmp, "node-a"), os.path.join(tmp, "node-b")
    for d in (node_a, node_b):
        os.makedirs(d)
    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False,
                      "env_vars": {{"TMPDIR": node_a}}}})
    ray.init(address=cluster.address, runtime_env={{"env_vars": {{"PYTHONPATH": {repo!r}}}}})
    out = {{}}
    def run(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli_main(argv)
        return rc, err.getvalue()
    try:
        os.chdir(tmp)
        # one node: a local root is that node's own disk, fine
        out["one_node_prepare"] = run(["prepare", sample, "rel-root/datasets/faces", "--resolution", "8",
                                       "--limit", "16"])
        cluster.add_node(num_cpus=1, resources={{"node_b": 1}}, env_vars={{"TMPDIR": node_b}})
        cluster.wait_for_nodes()
        out["train"] = run(["train", "--root", "rel-root", "--set", "model.resolution=8"])
        out["prepare"] = run(["prepare", sample, "s3://facegen-test/faces", "--set",
                              f"storage.endpoint_url={{endpoint}}"])
        import boto3
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(
            Bucket="facegen-test", Key="nets/inception.pt", Body=b"torchscript bytes")

        @ray.remote(resources={{"node_b": 1}})
        def fetch(uri):
            from facegen_ray.config import StorageConfig
            from facegen_ray.metrics.inception import fetch_to_cache
            from facegen_ray.storage import Storage
            return str(fetch_to_cache(uri, Storage(StorageConfig(endpoint_url=endpoint))))

        out["fetched"] = ray.get(fetch.remote("s3://facegen-test/nets/inception.pt"))
        out["node_a_files"] = sorted(str(p) for p in __import__("pathlib").Path(node_a).rglob("fetched-*"))
        print("RESULT " + json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow  # a 2-node cluster_utils cluster: ~40 s
def test_local_paths_never_cross_nodes(tmp_path, sample_zip, s3_server):
    script = tmp_path / "paths.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEGEN_CACHE_DIR", "FACEGEN_SHARED_FS")}
    env.update(PYTHONPATH=str(REPO), RAY_TRAIN_ENABLE_STATE_TRACKING="0")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(sample_zip), s3_server],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT ") :])
    assert res["one_node_prepare"][0] == 0, res["one_node_prepare"]
    rc, err = res["train"]
    assert rc == 2 and "storage.root" in err and str(tmp_path / "rel-root") in err and "s3://" in err, err
    rc, err = res["prepare"]
    assert rc == 2 and f"SOURCE {sample_zip}" in err and "2 nodes" in err, err
    assert res["fetched"].startswith(str(tmp_path / "node-b")), res["fetched"]  # the task's own node
    assert Path(res["fetched"]).read_bytes() == b"torchscript bytes"
    assert res["node_a_files"] == []
