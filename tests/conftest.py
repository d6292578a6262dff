"""Shared fixtures: the bundled sample, one local Ray instance, moto's S3 server, tiny configs.

Tests use the real thing: a local Ray cluster, moto's standalone S3 server over HTTP, real
HTTP clients. Ray is started once per test session (starting it costs seconds on 2 cores).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from facegen_ray.config import FacegenConfig, StorageConfig
from facegen_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = REPO / "facegen_ray" / "sample_data" / "utkface-sample.zip"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# derived files (the Inception's ONNX export, made on first use) go to a directory of this test
# session, not the user's ~/.cache; set before any Ray worker starts, so workers share it
_CACHE = tempfile.mkdtemp(prefix="facegen-test-cache-")
os.environ.setdefault("FACEGEN_CACHE_DIR", _CACHE)
atexit.register(shutil.rmtree, _CACHE, True)
# dummy S3 credentials for moto, set before any Ray instance starts: Ray's processes inherit them
# from this one, the way a node's processes find theirs in the node's environment (facegen never
# ships credentials to workers: storage.s3_worker_options)
for _k, _v in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_k, _v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sample_zip() -> Path:
    assert SAMPLE_ZIP.is_file(), f"bundled sample missing: {SAMPLE_ZIP}"
    return SAMPLE_ZIP


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (logical CPUs > cores on purpose:
    the tests run 2 train workers plus Ray Data tasks on a 2-core machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # always a fresh instance, never someone else's cluster
            num_cpus=8,
            object_store_memory=1_000_000_000,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on a free loopback port; yields its endpoint URL.

    Credentials are dummies set in the environment (never in configs); a bucket
    `facegen-test` exists.
    """
    port = free_port()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="facegen-test")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_storage(s3_server) -> Storage:
    return Storage(StorageConfig(endpoint_url=s3_server, region="us-east-1"))


@pytest.fixture
def s3_root(s3_server, request) -> str:
    """A fresh s3:// prefix per test."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"s3://facegen-test/{safe}-{time.time_ns()}"


def tiny_model_dict(resolution: int = 16, conditional: bool = False) -> dict:
    """A StyleGAN small enough for CPU tests: widths 8-32, 2-layer mapping."""
    return {
        "resolution": resolution,
        "z_dim": 32,
        "w_dim": 32,
        "mapping_layers": 2,
        "mapping_lr_mul": 0.01,
        "fmap_base": 128,
        "fmap_max": 32,
        "fmap_min": 8,
        "cond_embed_dim": 8,
        "conditional": conditional,
    }


@pytest.fixture
def tiny_config(tmp_path) -> FacegenConfig:
    return FacegenConfig.model_validate(
        {"storage": {"root": str(tmp_path / "root")}, "model": tiny_model_dict(16), "data": {"resolution": 16}}
    )


def start_session(client) -> str:
    """Give an HTTP test client (httpx or Starlette's) a rater session: feedback, comparison
    pairs and votes need one (serve/identity.py). The client keeps the cookie; returns the rater id."""
    r = client.get("/session")
    assert r.status_code == 200, r.text
    return r.json()["rater"]
