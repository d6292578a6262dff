"""Memorisation report (metrics/memorisation.py) and the held-out split it compares against.

A model that memorises is played by `training_images_stand_in`: a stand-in generator that
returns training images exactly (training a G on 8 faces until it copies them is too slow for
a default test). The model that cannot memorise is an untrained tiny generator. Inception
runs on CPU, so the sets are tiny (24 training, 8 held-out, 8 generated faces)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import tiny_model_dict
from test_metrics_inception import RES, _sample_faces

from facegen_ray.config import EvalConfig, GateConfig, ModelConfig
from facegen_ray.errors import UserError
from facegen_ray.lifecycle.gate import decide
from facegen_ray.metrics import evaluate as ev
from facegen_ray.metrics import generated
from facegen_ray.metrics.memorisation import memorisation_report, nearest
from facegen_ray.storage import Layout, Storage, join

N_TRAIN, N_HOLD = 24, 8


def _write(storage: Storage, uri: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facegen_ray.data.shards import shard_schema

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema()), buf)
    storage.write_bytes(uri, buf.getvalue())


def _rows(imgs: np.ndarray) -> list[dict]:
    import hashlib

    from PIL import Image

    out = []
    for img in imgs:
        b = io.BytesIO()
        Image.fromarray(img).save(b, format="PNG")
        out.append(
            {
                "image": b.getvalue(),
                "sha256": hashlib.sha256(img.tobytes()).hexdigest(),
                "source": "t",
                "age": None,
                "gender": None,
                "race": None,
                "origin": "dataset",
                "weight": 1.0,
                "label_source": None,
            }
        )
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from facegen_ray.models import Generator
    from facegen_ray.models.export import save_model_dir

    root = str(tmp_path_factory.mktemp("memroot"))
    storage, lay = Storage(), Layout(root)
    data_uri = lay.dataset("faces")
    imgs = _sample_faces(N_TRAIN + N_HOLD)[0]
    version = Layout.dataset_version(data_uri, 1)
    _write(storage, join(version, "part-0.parquet"), _rows(imgs[:N_TRAIN]))
    _write(storage, join(version, "holdout", "part-0.parquet"), _rows(imgs[N_TRAIN:]))
    manifest = {
        "version": 1,
        "resolution": RES,
        "num_images": N_TRAIN,
        "files": [{"name": "part-0.parquet", "rows": N_TRAIN}],
        "holdout": {"num_images": N_HOLD, "files": [{"name": "holdout/part-0.parquet", "rows": N_HOLD}]},
        "num_rejected": 0,
        "rejected": {},
        "attributes": {},
    }
    storage.write_json(Layout.manifest(version), manifest)
    storage.write_json(Layout.manifest(data_uri), {**manifest, "path": version})
    cfg = ModelConfig.model_validate(tiny_model_dict(RES))
    torch.manual_seed(0)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    model_uri = lay.model("v1")
    save_model_dir(storage, model_uri, G, cfg, {"version": "v1", "resolution": RES})
    return storage, data_uri, model_uri, root, imgs[:N_TRAIN]


def _cfg() -> EvalConfig:
    return EvalConfig(num_gen=8, batch_size=16, device="cpu", metrics=["memorisation"], memorisation_sheet=4)


def test_nearest_is_exact():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    d, i = nearest(q, r, chunk=3)
    full = np.linalg.norm(q[:, None] - r[None], axis=2)
    assert np.array_equal(i, full.argmin(1)) and np.allclose(d, full.min(1))


def test_report_flags_copies_not_novel_samples():
    rng = np.random.default_rng(1)
    train, hold = rng.normal(size=(200, 16)), rng.normal(size=(50, 16))
    copies = memorisation_report(train[:20] + 1e-3 * rng.normal(size=(20, 16)), train, hold)
    novel = memorisation_report(rng.normal(size=(20, 16)), train, hold)
    assert copies["copy_rate"] == 1.0 and copies["num_suspected"] == 20
    assert novel["copy_rate"] <= 0.1
    assert copies["threshold"] == novel["threshold"] == pytest.approx(np.percentile(nearest(hold, train)[0], 1))


def test_holdout_split_is_read_separately(env):
    storage, data_uri, *_ = env
    train = ev.select_reals(storage, data_uri, None, 0)
    hold = ev.select_reals(storage, data_uri, None, 0, split="holdout")
    assert len(train.rows) == N_TRAIN and len(hold.rows) == N_HOLD
    assert not set(train.hashes) & set(hold.hashes)
    assert ev.reference_key(train.manifest, 8, 0, "holdout").endswith("-holdout")


def training_images_stand_in(train_imgs: np.ndarray):
    """A stand-in for a generator that memorised its data: seed s -> training image s mod N, exactly."""

    def sample(G, seeds, truncation, c=None, device="cpu", batch_size=64):
        return np.stack([train_imgs[int(s) % len(train_imgs)] for s in seeds])

    return sample


def test_memorising_model_is_flagged_and_untrained_is_not(env, monkeypatch, tmp_path):
    storage, data_uri, model_uri, _, train_imgs = env
    sheet = str(tmp_path / "sheet.png")
    clean = ev.evaluate_model(storage, model_uri, data_uri, _cfg(), sheet_uri=sheet)["memorisation"]
    assert clean["copy_rate"] == 0.0 and clean["num_holdout"] == N_HOLD and clean["num_train"] == N_TRAIN
    monkeypatch.setattr(generated, "sample_images", training_images_stand_in(train_imgs))
    copy = ev.evaluate_model(storage, model_uri, data_uri, _cfg(), sheet_uri=sheet)["memorisation"]
    assert copy["copy_rate"] == 1.0 and copy["threshold"] == pytest.approx(clean["threshold"])
    assert copy["closest"][0]["distance"] == pytest.approx(0.0, abs=1e-3) and copy["closest"][0]["suspected"]
    from PIL import Image

    with Image.open(sheet) as im:  # 4 rows of (generated | training), 2x scale
        assert im.size[0] > 4 * RES and im.size[1] > 4 * 2 * RES
    # the gate refuses the copier and passes the untrained model on that check
    g = GateConfig(fid_tolerance=1.0, max_copy_rate=0.05)
    ok = {"fid": 1.0, "copy_rate": clean["copy_rate"]}
    bad = {"fid": 1.0, "copy_rate": copy["copy_rate"]}
    assert decide(ok, {"fid": 1.0}, g)[0] == "promoted"
    decision, reasons, _ = decide(bad, {"fid": 1.0}, g)
    assert decision == "rejected" and any(r.startswith("copy_rate") and "FAILS" in r for r in reasons)
    assert decide({"fid": 1.0}, {"fid": 1.0}, g)[0] == "rejected"  # not measured -> fails


def test_no_holdout_says_how_to_make_one(tmp_path):
    from test_metrics_inception import write_tiny_dataset

    storage = Storage()
    uri = Layout(str(tmp_path)).dataset("faces")
    write_tiny_dataset(storage, uri, 4)
    with pytest.raises(UserError, match="--holdout-fraction"):
        ev.select_reals(storage, uri, None, 0, split="holdout")


def test_in_holdout_is_stable_and_proportional():
    import hashlib

    from facegen_ray.data.shards import in_holdout

    hs = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    frac = np.mean([in_holdout(h, 0.1) for h in hs])
    assert 0.08 < frac < 0.12 and not any(in_holdout(h, 0.0) for h in hs)
    assert [in_holdout(h, 0.1) for h in hs[:50]] == [in_holdout(h, 0.1) for h in hs[:50]]
