"""Serve pieces without a running app: generation, feedback store (local + moto S3), request
schemas, deployment YAMLs, admin auth and the generate/promote CLIs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_model_dict
from PIL import Image
from pydantic import ValidationError

from facegen_ray.cli import main as cli_main
from facegen_ray.config import ModelConfig
from facegen_ray.data.feedback import (
    FeedbackStore,
    UnknownImage,
    approved_images,
    check_id,
    iter_feedback,
    iter_images,
)
from facegen_ray.errors import UserError
from facegen_ray.models import Generator, save_model_dir
from facegen_ray.registry import Registry
from facegen_ray.serve import generation as gen
from facegen_ray.serve.schemas import FeedbackRequest, GenerateRequest
from facegen_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_dir(tmp_path) -> str:
    cfg = ModelConfig(**tiny_model_dict(16))
    torch.manual_seed(0)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    uri = str(tmp_path / "model")
    save_model_dir(Storage(), uri, G, cfg, {"version": "t1"})
    return uri


# ----------------------------------------------------------------------------- generation
def test_parse_seeds():
    assert gen.parse_seeds("0-3") == [0, 1, 2, 3]
    assert gen.parse_seeds("1,5,9") == [1, 5, 9]
    assert gen.parse_seeds("0-2, 7, 1") == [0, 1, 2, 7]
    for bad in ["", "a", "3-1", "-1", "1,,2", f"{gen.MAX_SEED + 1}"]:
        with pytest.raises(UserError):
            gen.parse_seeds(bad)


def test_generate_is_deterministic_per_seed(model_dir):
    m = gen.load_model(Storage(), model_dir, root=str(Path(model_dir).parent))
    assert m.version == "t1" and len(m.digest) == 64
    a = gen.generate(m.G, [3, 4, 5], 0.7)
    b = gen.generate(m.G, [5, 3], 0.7)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    assert np.abs(a[2].astype(int) - b[0].astype(int)).max() <= 1  # same seed in another batch
    assert np.abs(a[0].astype(int) - b[1].astype(int)).max() <= 1
    assert not np.array_equal(a[0], a[1])
    mixed = gen.generate(m.G, [3, 3], [0.7, 0.2])  # per-row psi
    assert np.abs(mixed[0].astype(int) - a[0].astype(int)).max() <= 1 and not np.array_equal(mixed[0], mixed[1])
    chunked = gen.generate(m.G, [3, 4, 5], 0.7, batch_size=1)
    assert np.abs(chunked.astype(int) - a.astype(int)).max() <= 1


def test_bucketed_synthesis_pads_and_slices_like_plain_generation(model_dir):
    """GraphedSynthesis (what GPU replicas replay from CUDA graphs): a batch runs in the smallest
    bucket that holds it, padded with copies of its first row; the caller gets exactly its own
    rows, in order, as plain generation renders them. On CPU the padded batches run eagerly
    (capture=False), which checks the padding and slicing; capturing needs CUDA."""
    from facegen_ray.models.sampling import GraphedSynthesis

    m = gen.load_model(Storage(), model_dir, root=str(Path(model_dir).parent))
    synth = GraphedSynthesis(m.G.synthesis, "cpu", buckets=(1, 4), capture=False)
    seeds = [3, 4, 5, 6, 7, 8]
    plain = gen.generate(m.G, seeds, [0.7, 0.7, 0.7, 1.0, 1.0, 1.0], batch_size=3)
    bucketed = gen.generate(m.G, seeds, [0.7, 0.7, 0.7, 1.0, 1.0, 1.0], batch_size=3, synthesis=synth)
    assert bucketed.shape == plain.shape and np.abs(bucketed.astype(int) - plain.astype(int)).max() <= 1
    assert sorted(synth._graphs) == [4]  # 3 rows -> the 4-bucket, built once, used for both psi groups
    one = gen.generate(m.G, [9], 0.7, synthesis=synth)
    assert np.abs(one.astype(int) - gen.generate(m.G, [9], 0.7).astype(int)).max() <= 1
    assert sorted(synth._graphs) == [1, 4]
    big = gen.generate(m.G, list(range(10, 16)), 0.7, synthesis=synth)  # 6 rows > the largest bucket: eager
    assert np.abs(big.astype(int) - gen.generate(m.G, list(range(10, 16)), 0.7).astype(int)).max() <= 1
    assert sorted(synth._graphs) == [1, 4] and synth.failed is None
    with pytest.raises(ValueError, match="CUDA"):
        GraphedSynthesis(m.G.synthesis, "cpu", capture=True)


def test_image_id_and_encoding():
    i1 = gen.image_id("v1", "ab", 3, 0.7, None)
    assert check_id(i1) == i1
    assert i1 == gen.image_id("v1", "ab", 3, 0.70000001, None)
    assert (
        len(
            {
                i1,
                gen.image_id("v2", "ab", 3, 0.7, None),
                gen.image_id("v1", "cd", 3, 0.7, None),
                gen.image_id("v1", "ab", 4, 0.7, None),
                gen.image_id("v1", "ab", 3, 0.5, None),
                gen.image_id("v1", "ab", 3, 0.7, [1, 0, 2]),
            }
        )
        == 6
    )
    arr = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    png = gen.encode_image(arr, "png")
    assert png == gen.encode_image(arr, "png") and np.array_equal(gen.decode_png(png), arr)
    assert gen.encode_image(arr, "jpeg")[:2] == b"\xff\xd8"
    grid = gen.make_grid(np.stack([arr] * 5), cols=3, pad=2)
    assert grid.shape == (2 * 18 - 2, 3 * 18 - 2, 3)


# ----------------------------------------------------------------------------- feedback store
def _exercise_store(storage: Storage, root: str) -> None:
    store = FeedbackStore(storage, root)
    iid = gen.image_id("v1", "d", 1, 0.7, None)
    png = gen.encode_image(np.zeros((4, 4, 3), np.uint8))
    assert store.record_image(iid, png, {"seed": 1, "model_version": "v1", "attributes": None}) == png
    png2 = gen.encode_image(np.ones((4, 4, 3), np.uint8))
    assert store.record_image(iid, png2, {"seed": 1}) == png  # first rendering wins
    assert store.get_image_record(iid)["seed"] == 1
    r1 = store.add_feedback(iid, True, 4, "ok", client_key="k1")
    r2 = store.add_feedback(iid, True, 4, "ok", client_key="k1")
    r3 = store.add_feedback(iid, False, client_key="k2")
    assert r1.created and not r2.created and r1.feedback_id == r2.feedback_id and r3.created
    with pytest.raises(UnknownImage):
        store.add_feedback("f" * 32, True)
    for bad in ["../" + "a" * 29, "A" * 32, "a" * 31, "a" * 32 + "/", "..", ""]:
        with pytest.raises(ValueError):
            store.add_feedback(bad, True)
    with pytest.raises(ValueError):
        store.add_feedback(iid, True, client_key="has space")
    recs = list(iter_feedback(storage, root))
    assert sorted(r["feedback_id"] for r in recs) == sorted([r1.feedback_id, r3.feedback_id])
    assert [i["image_id"] for i in iter_images(storage, root)] == [iid]
    assert approved_images(storage, root) == []  # 1 approval, 1 rejection
    store.add_feedback(iid, True, client_key="k3")
    (ok,) = approved_images(storage, root)
    assert ok["image_id"] == iid and ok["approvals"] == 2 and ok["mean_rating"] == 4.0
    assert storage.read_bytes(ok["image_uri"]) == png


def test_feedback_store_local(tmp_path):
    root = str(tmp_path / "root")
    _exercise_store(Storage(), root)
    # a torn temp file of an interrupted write is never listed as a record
    store = FeedbackStore(Storage(), root)
    some = next(iter(iter_feedback(Storage(), root)))["feedback_id"]
    Path(store.feedback_uri(some) + ".tmp-123").write_bytes(b"{")
    assert len(list(iter_feedback(Storage(), root))) == 3


def test_feedback_store_s3(s3_storage, s3_root):
    _exercise_store(s3_storage, s3_root)


# ----------------------------------------------------------------------------- schemas
def test_server_timing_header_splits_a_request():
    from facegen_ray.serve.ingress import server_timing

    h = server_timing(0.015, 0.003, {"replica_s": 0.012, "forward_s": 0.002})
    assert h == "hop;dur=3.00, queue;dur=10.00, forward;dur=2.00, record;dur=3.00"
    assert server_timing(0.015, 0.003, None) == "generator;dur=15.00, record;dur=3.00"
    # clock skew between the parts never gives a negative duration
    assert "hop;dur=0.00" in server_timing(0.010, 0.001, {"replica_s": 0.011, "forward_s": 0.002})
    # the rate-limit check (the guard's round trip) and the wait for a call slot lead, when there were any
    assert server_timing(0.015, 0.003, None, slot_s=0.001, limit_s=0.004).startswith("limit;dur=4.00, slot;dur=1.00, ")
    spec = importlib.util.spec_from_file_location("serve_load_bench", REPO / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_server_timing(h) == {"hop": 3.0, "queue": 10.0, "forward": 2.0, "record": 3.0}
    assert bench.parse_server_timing("") == {} and bench.parse_server_timing("x;desc=a") == {}


def test_request_schemas():
    assert GenerateRequest.model_validate_json(b"{}").num_images == 1
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate({"seed": gen.MAX_SEED, "num_images": 2})
    FeedbackRequest.model_validate({"image_id": "a" * 32, "approved": False, "rating": 1})
    for bad in [
        {"image_id": "a" * 32, "approved": 1},
        {"image_id": "a" * 32, "approved": True, "rating": "3"},
        {"image_id": "g" * 32, "approved": True},
    ]:
        with pytest.raises(ValidationError):
            FeedbackRequest.model_validate_json(json.dumps(bad))


# ----------------------------------------------------------------------------- deployment files
def test_deployment_yamls_are_valid_and_in_sync(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from facegen_ray.serve.app import app_config, build_app, serve_config_dict

    serve_doc = yaml.safe_load((REPO / "deployments" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(serve_doc)
    rs = yaml.safe_load((REPO / "deployments" / "rayservice.yaml").read_text())
    assert rs["kind"] == "RayService"
    assert yaml.safe_load(rs["spec"]["serveConfigV2"]) == serve_doc
    app = serve_doc["applications"][0]
    assert app["import_path"] == "facegen_ray.serve.app:build_app"
    # the file is what the generator writes for its own args
    assert serve_config_dict(app["args"]) == serve_doc
    cfg, model = app_config(app["args"])
    assert model == "serving" and cfg.serve.num_gpus == 1
    built = build_app({**app["args"], "root": str(tmp_path / "unused")})
    assert built is not None
    # production defaults that fit the GPUs: one replica per GPU at most, a backlog to batch
    gen_dep = next(d for d in app["deployments"] if d["name"] == "GeneratorDeployment")
    sc = cfg.serve
    assert gen_dep["max_ongoing_requests"] >= 2 * sc.max_batch_size
    assert gen_dep["autoscaling_config"]["target_ongoing_requests"] >= sc.max_batch_size
    (gpu_group,) = [g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    (container,) = gpu_group["template"]["spec"]["containers"]
    gpus = gpu_group["maxReplicas"] * int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gen_dep["autoscaling_config"]["max_replicas"] * gen_dep["ray_actor_options"]["num_gpus"] <= gpus
    with pytest.raises(UserError):
        app_config({"modle": "x"})


def test_admin_auth(monkeypatch):
    from fastapi import HTTPException

    from facegen_ray.serve.http_input import _token_digest, admin_digest, check_admin

    monkeypatch.delenv("FACEGEN_ADMIN_TOKEN", raising=False)
    assert admin_digest(None) is None
    with pytest.raises(HTTPException) as e:
        check_admin("Bearer anything", admin_digest(None))
    assert e.value.status_code == 403 and "disabled" in e.value.detail
    monkeypatch.setenv("FACEGEN_ADMIN_TOKEN", "tok")
    digest = admin_digest(None)
    assert digest == _token_digest("tok") and admin_digest("abc") == "abc"
    check_admin("Bearer tok", digest)
    for header, code in [(None, 401), ("Bearer ", 401), ("Basic tok", 401), ("Bearer tok2", 403)]:
        with pytest.raises(HTTPException) as e:
            check_admin(header, digest)
        assert e.value.status_code == code, header


# ----------------------------------------------------------------------------- CLI
def test_generate_cli(model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert (
        cli_main(["generate", model_dir, "--seeds", "0-5", "--truncation", "0.5", "--out", str(out), "--cols", "3"])
        == 0
    )
    im = Image.open(out)
    assert im.size == (3 * 18 - 2, 2 * 18 - 2)
    first = out.read_bytes()
    assert (
        cli_main(["generate", model_dir, "--seeds", "0-5", "--truncation", "0.5", "--out", str(out), "--cols", "3"])
        == 0
    )
    assert out.read_bytes() == first
    assert "6 faces" in capsys.readouterr().out
    assert cli_main(["generate", model_dir, "--seeds", "9-1", "--out", str(out)]) == 2
    assert cli_main(["generate", model_dir, "--out", str(tmp_path / "x.gif")]) == 2
    assert cli_main(["generate", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "neither a registered" in capsys.readouterr().err


def test_promote_cli(model_dir, tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "root")
    reg = Registry(Storage(), root)
    reg.register(model_dir, "v1")
    assert cli_main(["promote", "v1", "--root", root]) == 0
    assert reg.serving() == "v1"
    assert cli_main(["promote", "v7", "--root", root]) == 2
    monkeypatch.delenv("FACEGEN_ADMIN_TOKEN", raising=False)
    assert cli_main(["promote", "v1", "--root", root, "--serve-url", "http://127.0.0.1:9"]) == 2
    assert "FACEGEN_ADMIN_TOKEN" in capsys.readouterr().err


@pytest.mark.slow
def test_facegen_serve_cli_runs_until_terminated(model_dir, tmp_path):
    """`facegen serve MODEL --port P` in a subprocess (its own local Ray): prints the URL,
    answers /healthz, and shuts down cleanly on SIGTERM (what Ctrl-C does too)."""
    import signal
    import subprocess
    import sys
    import time

    import httpx
    from conftest import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facegen_ray.cli",
            "serve",
            model_dir,
            "--port",
            str(port),
            "--root",
            str(tmp_path / "root"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 240
        line = ""
        while time.time() < deadline:
            line = proc.stdout.readline()
            if "[facegen] serving" in line or not line:
                break
        assert f"http://127.0.0.1:{port}/" in line, line
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "t1"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert "[facegen] stopping" in out
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
