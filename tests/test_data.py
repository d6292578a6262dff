"""`facegen prepare` end to end on Ray Data: folder / zip / s3:// sources, bad files, the
manifest, versioned re-runs and crash safety, balancing, and reading back for training."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facegen_ray.cli import main as cli_main
from facegen_ray.config import FacegenConfig, config_from_dict
from facegen_ray.data import shards
from facegen_ray.data.pipeline import prepare
from facegen_ray.data.shards import read_images_uint8, read_manifest, read_training_dataset
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage


def _face(seed: int, h: int = 48, w: int = 40) -> Image.Image:
    """A random image: smooth colour patches plus fine grey texture, so it is distinct per
    seed, stays distinct when resized, and is sharp enough for the quality filter (sharpness
    ~4000 at its own size; data.min_sharpness defaults to 40)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
    texture = rng.integers(-24, 25, (h, w, 1))
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))


def _save(img: Image.Image, path, fmt: str | None = None) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt or ("JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
    """6 good faces (UTKFace names, one nested, one .JPG) + one malformed name, and the bad
    files the issue lists. Expected: 7 images; rejected unreadable=3, too_small=1,
    unsupported_mode=1, duplicate=1; 1 ignored non-image."""
    d = tmp_path / "raw"
    for i in range(5):
        _save(_face(i), d / f"{20 + i}_{i % 2}_{i % 5}_2017011{i}000000000.jpg.chip.png")
    _save(_face(5), d / "nested" / "deeper" / "61_1_3_20170109150557335.JPG", "JPEG")
    _save(_face(6), d / "39_1_20170116174525125.jpg.chip.png")  # race missing -> null labels
    _save(_face(0), d / "copy-of-first.png")  # same pixels as face 0
    good = (d / "20_0_0_20170110000000000.jpg.chip.png").read_bytes()
    (d / "corrupt.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (d / "empty.png").write_bytes(b"")
    (d / "notes.jpg").write_text("a text file renamed .jpg\n")
    _save(_face(9, 10, 10), d / "tiny.png")  # 10x10
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.float32), "F").save(buf, "TIFF")
    (d / "float.webp").write_bytes(buf.getvalue())  # decodes, no 8-bit RGB form
    (d / "README.txt").write_text("not an image")
    return d


def test_folder_bad_files_manifest_rerun_and_readback(ray_session, messy_folder, tmp_path, capsys):
    dest = tmp_path / "datasets" / "faces"
    rc = cli_main(["prepare", str(messy_folder), str(dest), "--resolution", "16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "prepared 7 images (6 rejected: unreadable=3, too_small=1, unsupported_mode=1, duplicate=1)" in out
    assert "16x16" in out and str(dest / "manifest.json") in out

    m = read_manifest(Storage(), str(dest))
    assert m["version"] == 1 and m["path"] == str(dest / "v1")
    assert m["num_images"] == 7 and m["num_rejected"] == 6 and m["num_ignored"] == 1
    assert m["rejected"] == {
        "unreadable": 3,
        "too_small": 1,
        "unsupported_mode": 1,
        "duplicate": 1,
        "low_resolution": 0,
        "near_constant": 0,
        "blurry": 0,
    }
    assert m["resolution"] == 16 and m["image_format"] == "png" and m["source"] == [str(messy_folder)]
    assert m["attributes"]["race"]["null"] == 1 and m["attributes"]["label_source"] == {"filename": 6, "null": 1}
    assert m["attributes"]["gender"] == {"0": 3, "1": 3, "null": 1}
    assert sum(f["rows"] for f in m["files"]) == 7 and m["created"] and m["balance"]["mode"] == "none"
    assert json.loads((dest / "v1" / "manifest.json").read_text())["files"] == m["files"]

    table = pq.read_table(os.path.join(m["path"], m["files"][0]["name"]))
    assert table.schema.equals(shards.shard_schema())
    rows = {os.path.basename(r["source"]): r for r in table.to_pylist()}
    assert "copy-of-first.png" not in rows and "corrupt.jpg" not in rows
    malformed = rows["39_1_20170116174525125.jpg.chip.png"]
    assert malformed["age"] is None and malformed["race"] is None and malformed["label_source"] is None
    assert rows["61_1_3_20170109150557335.JPG"]["age"] == 61 and all(r["origin"] == "dataset" for r in rows.values())
    assert len({r["sha256"] for r in rows.values()}) == 7

    # reading back at several resolutions (area-averaged), values in [-1, 1]
    full = None
    for res in (16, 8, 4):
        batch = read_training_dataset(Storage(), str(dest), resolution=res).take_batch(100)
        img = batch["image"]
        assert img.shape == (7, 3, res, res) and img.dtype == np.float32
        assert img.min() >= -1.0 and img.max() <= 1.0 and img.std() > 0.05
        assert batch["weight"].tolist() == [1.0] * 7 and sorted(batch["race"].tolist()).count(-1) == 1
        if res == 16:
            full = img
        else:  # equal to averaging the 16x16 rows (same order: one shard)
            f = 16 // res
            ref = full.reshape(7, 3, res, f, res, f).mean(axis=(3, 5))
            np.testing.assert_allclose(img, ref, atol=1e-5)
    for bad in (32, 12):
        with pytest.raises(UserError):
            read_training_dataset(Storage(), str(dest), resolution=bad)
    u8 = read_images_uint8(Storage(), str(dest), limit=5, seed=1)
    assert u8.shape == (5, 16, 16, 3) and u8.dtype == np.uint8

    # re-run: a new version, v1 untouched, the top manifest -> v2
    v1_files = {p.name: p.read_bytes() for p in (dest / "v1").iterdir()}
    assert cli_main(["prepare", str(messy_folder), str(dest), "--resolution", "16"]) == 0
    capsys.readouterr()
    assert read_manifest(Storage(), str(dest))["version"] == 2
    assert {p.name: p.read_bytes() for p in (dest / "v1").iterdir()} == v1_files
    assert read_manifest(Storage(), str(dest / "v1"))["version"] == 1
    assert read_training_dataset(Storage(), str(dest / "v1"), resolution=4).count() == 7


def test_crash_mid_write_keeps_previous_version(ray_session, messy_folder, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "faces"
    cfg = config_from_dict({"data": {"resolution": 8}})
    first = prepare(cfg, [str(messy_folder)], str(dest))
    assert first.manifest["version"] == 1
    v1_files = {p.name: p.read_bytes() for p in (dest / "v1").iterdir()}

    def boom(*a, **k):
        raise RuntimeError("simulated crash after the shards were written")

    monkeypatch.setattr(shards, "_describe_shards", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(cfg, [str(messy_folder)], str(dest))
    monkeypatch.undo()
    m = read_manifest(Storage(), str(dest))
    assert m["version"] == 1 and read_training_dataset(Storage(), str(dest)).count() == 7
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "v1", "v2"]  # v2: shards, no manifest
    assert not (dest / "v2" / "manifest.json").exists() and list((dest / "v2").glob("*.parquet"))
    with pytest.raises(UserError, match="incomplete"):
        read_manifest(Storage(), str(dest / "v2"))
    third = prepare(cfg, [str(messy_folder)], str(dest))
    assert third.manifest["version"] == 3 and read_manifest(Storage(), str(dest))["version"] == 3
    assert {p.name: p.read_bytes() for p in (dest / "v1").iterdir()} == v1_files


def test_zip_sample_reweight_and_multi_source(ray_session, sample_zip, tmp_path, capsys):
    dest = tmp_path / "faces"
    rc = cli_main(
        ["prepare", str(sample_zip), str(dest), "--resolution", "8", "--limit", "120", "--balance", "reweight"]
    )
    assert rc == 0
    assert "prepared 120 images" in capsys.readouterr().out
    m = read_manifest(Storage(), str(dest))
    assert m["num_candidates"] == 120 and m["num_found"] == 402 and m["balance"]["mode"] == "reweight"
    w = m["balance"]["weights"]
    before = m["balance"]["groups_before"]
    labelled = [k for k in before if k != "null"]
    assert sum(before[k] * w[k] for k in labelled) / sum(before[k] for k in labelled) == pytest.approx(1.0, abs=1e-4)
    batch = read_training_dataset(Storage(), str(dest)).take_batch(200)
    rare = min(labelled, key=lambda k: before[k])
    common = max(labelled, key=lambda k: before[k])
    assert w[rare] > w[common] and batch["weight"].max() == pytest.approx(w[rare], rel=1e-5)

    # two sources into one version (a folder of copies of 3 zip members + the zip): the copies dedupe
    src = tmp_path / "extra"
    with zipfile.ZipFile(sample_zip) as zf:
        names = [n for n in zf.namelist() if n.endswith(".jpg")][:3]
        for n in names:
            (src / os.path.basename(n)).parent.mkdir(parents=True, exist_ok=True)
            (src / os.path.basename(n)).write_bytes(zf.read(n))
    multi = tmp_path / "multi"
    rc = cli_main(["prepare", str(sample_zip), str(src), str(multi), "--resolution", "4"])
    assert rc == 0
    capsys.readouterr()
    m2 = read_manifest(Storage(), str(multi))
    assert m2["num_candidates"] == 405 and m2["rejected"]["duplicate"] == 3 and m2["num_images"] == 402
    assert m2["attributes"]["race"]["null"] == 1 and len(m2["source"]) == 2


def test_resample_equalises_groups(ray_session, sample_zip, tmp_path):
    cfg = config_from_dict({"data": {"resolution": 4, "limit": 90, "balance": "resample", "shard_rows": 40}})
    r = prepare(cfg, [str(sample_zip)], str(tmp_path / "faces"))
    m = r.manifest
    after = {k: v for k, v in m["balance"]["groups_after"].items() if k != "null"}
    assert len(set(after.values())) == 1  # every labelled group now the size of the largest
    assert max(m["balance"]["groups_before"].values()) == next(iter(after.values()))
    assert m["num_images"] == sum(m["balance"]["groups_after"].values()) > m["num_unique_images"]
    assert m["num_shards"] == len(m["files"]) >= 2 and all(f["rows"] <= 40 for f in m["files"])
    assert read_training_dataset(Storage(), str(tmp_path / "faces")).count() == m["num_images"]
    assert len(read_images_uint8(Storage(), str(tmp_path / "faces"))) == m["num_unique_images"]


def test_s3_prefix_and_zip(ray_session, s3_storage, s3_root, messy_folder, sample_zip, monkeypatch):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_storage.cfg.endpoint_url, region_name="us-east-1")
    bucket, prefix = s3_root[len("s3://") :].split("/", 1)
    for p in messy_folder.rglob("*"):
        if p.is_file():
            s3.put_object(
                Bucket=bucket, Key=f"{prefix}/raw/{p.relative_to(messy_folder).as_posix()}", Body=p.read_bytes()
            )
    s3.put_object(Bucket=bucket, Key=f"{prefix}/zips/sample.zip", Body=sample_zip.read_bytes())
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": s3_root, "endpoint_url": s3_storage.cfg.endpoint_url, "region": "us-east-1"},
            "data": {"resolution": 8, "limit": 40},
        }
    )
    dest = f"{s3_root}/datasets/faces"
    r = prepare(cfg, [f"{s3_root}/raw", f"{s3_root}/zips/sample.zip"], dest, storage=s3_storage)
    m = read_manifest(s3_storage, dest)
    assert m["version"] == 1 and m["path"] == f"{dest}/v1" and m["num_images"] == r.manifest["num_images"]
    assert m["num_candidates"] == 40 and m["num_images"] + m["num_rejected"] == 40
    assert s3_storage.exists(f"{dest}/v1/{m['files'][0]['name']}")
    batch = read_training_dataset(s3_storage, dest, resolution=4).take_batch(100)
    assert batch["image"].shape == (m["num_images"], 3, 4, 4)
    # via the CLI, endpoint from the environment (never from a config file), second version
    os.environ["FACEGEN_S3_ENDPOINT_URL"] = s3_storage.cfg.endpoint_url
    try:
        rc = cli_main(["prepare", f"{s3_root}/raw", dest, "--resolution", "8"])
    finally:
        os.environ.pop("FACEGEN_S3_ENDPOINT_URL", None)
    assert rc == 0
    m2 = read_manifest(s3_storage, dest)
    assert m2["version"] == 2 and m2["num_images"] == 7 and m2["rejected"]["unreadable"] == 3
    assert read_manifest(s3_storage, f"{dest}/v1")["num_candidates"] == 40
    # a racing prepare that listed the versions before v1 and v2 were claimed: it must not
    # write into them (their claims win), it takes v3, and v1/v2 stay exactly as they were
    import facegen_ray.data.shards as shards

    before = {v: (read_manifest(s3_storage, f"{dest}/v{v}"), sorted(s3_storage.find(f"{dest}/v{v}"))) for v in (1, 2)}
    monkeypatch.setattr(shards, "next_version", lambda storage, uri: 1)
    r3 = prepare(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"limit": 5})}),
        [f"{s3_root}/zips/sample.zip"],
        dest,
        storage=s3_storage,
    )
    assert r3.manifest["version"] == 3 and read_manifest(s3_storage, dest)["version"] == 3
    assert all(s3_storage.exists(f"{dest}/v{v}/{shards.CLAIM_FILE}") for v in (1, 2, 3))
    for v, (manifest, files) in before.items():
        assert (read_manifest(s3_storage, f"{dest}/v{v}"), sorted(s3_storage.find(f"{dest}/v{v}"))) == (manifest, files)


def test_cli_errors(ray_session, tmp_path, capsys):
    def err(*argv):
        rc = cli_main(["prepare", *argv])
        return rc, capsys.readouterr().err

    rc, e = err(str(tmp_path / "missing"), str(tmp_path / "out"))
    assert rc == 2 and "does not exist" in e
    (tmp_path / "empty").mkdir()
    rc, e = err(str(tmp_path / "empty"), str(tmp_path / "out"))
    assert rc == 2 and "no image files" in e
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"garbage")
    (junk / "b.png").write_bytes(b"")
    rc, e = err(str(junk), str(tmp_path / "out"))
    assert rc == 2 and "no usable images" in e and "unreadable=2" in e
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "afile").write_text("x")
    rc, e = err(str(junk), str(tmp_path / "afile" / "ds"))
    assert rc == 2 and "not writable" in e
    rc, e = err(str(junk), str(tmp_path / "o"), "--resolution", "48")
    assert rc == 2 and "power of two" in e
    with pytest.raises(SystemExit) as ex:  # argparse: DEST missing
        cli_main(["prepare", str(tmp_path / "o")])
    assert ex.value.code == 2 and "DEST" in capsys.readouterr().err


def test_attribute_model_tags_unlabelled_rows(ray_session, messy_folder, tmp_path):
    """--attribute-model: a real (tiny, 1-epoch) attribute classifier trained on the labelled
    rows tags the row whose file name has no labels; file-name labels are kept as they are."""
    from facegen_ray.data.attributes import read_labelled
    from facegen_ray.models.attributes import save_classifier, train_attribute_classifier

    cfg = config_from_dict({"data": {"resolution": 8}})
    first = prepare(cfg, [str(messy_folder)], str(tmp_path / "labelled"))
    assert first.manifest["attributes"]["label_source"] == {"filename": 6, "null": 1}
    data = read_labelled(Storage(), str(tmp_path / "labelled"), cfg.model.age_buckets)
    model, meta = train_attribute_classifier(data, cfg.model.age_buckets, resolution=8, epochs=1, width=8, holdout=0.34)
    save_classifier(Storage(), str(tmp_path / "tagger"), model, meta)

    r = prepare(cfg, [str(messy_folder)], str(tmp_path / "faces"), attribute_model=str(tmp_path / "tagger"))
    m = r.manifest
    assert m["attributes"]["label_source"] == {"classifier": 1, "filename": 6}
    assert "null" not in m["attributes"]["race"] and "null" not in m["attributes"]["gender"]
    rows = pq.read_table(os.path.join(m["path"], m["files"][0]["name"])).to_pylist()
    tagged = [r for r in rows if r["label_source"] == "classifier"]
    assert len(tagged) == 1 and "39_1_2017" in tagged[0]["source"]
    assert tagged[0]["gender"] in (0, 1) and 0 <= tagged[0]["race"] <= 4 and tagged[0]["age"] >= 0
    by_source = {os.path.basename(r["source"]): r for r in rows}
    assert by_source["61_1_3_20170109150557335.JPG"]["age"] == 61  # file-name labels untouched

    with pytest.raises(UserError, match="attributes train"):
        prepare(cfg, [str(messy_folder)], str(tmp_path / "faces2"), attribute_model=str(tmp_path / "nothing"))
    assert not (tmp_path / "faces2" / "manifest.json").exists()


@pytest.mark.slow  # ~30-50 s on 2 cores; test_train.py covers the same path by default
def test_training_dataset_feeds_ray_train_workers(ray_session, sample_zip, tmp_path):
    """The read-back dataset is a plain Ray Dataset: TorchTrainer splits it across workers
    and each reads its part with ray.train.get_dataset_shard."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = config_from_dict({"data": {"resolution": 8, "limit": 48}})
    prepare(cfg, [str(sample_zip)], str(tmp_path / "faces"))
    ds = read_training_dataset(Storage(), str(tmp_path / "faces"), resolution=4)

    def loop(config):
        rows, shapes, lo, hi = 0, set(), 1.0, -1.0
        for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8):
            x = batch["image"]  # [n,3,4,4]
            rows += len(x)
            shapes.add(tuple(x.shape[1:]))
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        return {"rows": rows, "shapes": sorted(shapes), "lo": lo, "hi": hi}

    trainer = TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="shard-check", storage_path=str(tmp_path / "runs")),
        datasets={"train": ds},
    )
    result = trainer.fit()
    m = result.return_value  # rank 0's
    assert m["shapes"] == [(3, 4, 4)] and -1.0 <= m["lo"] < m["hi"] <= 1.0
    assert 0 < m["rows"] < 48  # rank 0's share of the 48 rows
