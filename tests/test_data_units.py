"""Data pipeline pieces that need no Ray: name parsing, per-image validation, balancing,
source planning, manifests, the box-filter downsample."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from facegen_ray.data import attributes as attrs
from facegen_ray.data.ingest import is_image_name, plan_sources
from facegen_ray.data.shards import decode_image, downsample, read_manifest
from facegen_ray.data.transforms import Rejected, pixel_sha256, process_image
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _rand(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("UTKFace/32_0_0_20170116191447918.jpg.chip.jpg", (32, 0, 0)),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", (24, 0, 1)),  # stray space
        ("55_0_0_20170116232725357jpg.chip.jpg", (55, 0, 0)),  # missing dot
        ("s3://b/x/100_1_4_20170112213001988.jpg.chip.jpg", (100, 1, 4)),
        ("39_1_20170116174525125.jpg.chip.jpg", None),  # race missing
        ("32_2_0_20170116191447918.jpg", None),  # gender out of range
        ("32_0_7_20170116191447918.jpg", None),  # race out of range
        ("portrait.jpg", None),
    ],
)
def test_parse_utkface_name(name, expected):
    got = attrs.parse_utkface_name(name)
    assert (tuple(got) if got else None) == expected


def test_process_image_accepts_crops_and_resizes():
    arr = _rand(40, 60)
    p = process_image(_png(arr), resolution=16, min_size=32)
    out = decode_image(p.image)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert p.sha256 == pixel_sha256(out) and not p.upscaled
    up = process_image(_png(_rand(40, 40)), resolution=64, min_size=32)
    assert up.upscaled and decode_image(up.image).shape == (64, 64, 3)
    # centre crop: a 40x60 image whose middle 40x40 is white and sides black -> all white
    wide = np.zeros((40, 60, 3), np.uint8)
    wide[:, 10:50] = 255
    assert decode_image(process_image(_png(wide), resolution=8, min_size=8).image).min() == 255


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "unreadable"),
        (b"this is a text file, not a jpeg\n" * 3, "unreadable"),
        (_png(_rand(64, 64))[:200], "unreadable"),  # truncated PNG
        (_png(_rand(10, 10)), "too_small"),
    ],
)
def test_process_image_rejects(data, reason):
    with pytest.raises(Rejected) as e:
        process_image(data, resolution=16, min_size=32)
    assert e.value.reason == reason


def test_unsupported_mode_and_alpha():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((40, 40), dtype=np.float32), "F").save(buf, "TIFF")
    with pytest.raises(Rejected) as e:
        process_image(buf.getvalue(), resolution=16, min_size=32)
    assert e.value.reason == "unsupported_mode"
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent -> composited onto white
    out = decode_image(process_image(_png(rgba, "RGBA"), resolution=8, min_size=8).image)
    assert out.min() == 255
    grey16 = Image.fromarray(np.full((40, 40), 65535, np.uint16))  # 16-bit grey -> scaled, not clipped garbage
    b = io.BytesIO()
    grey16.save(b, "PNG")
    assert decode_image(process_image(b.getvalue(), resolution=8, min_size=8).image).min() == 255


def test_jpeg_output_hash_matches_stored_pixels():
    p = process_image(_png(_rand(48, 48)), resolution=16, min_size=8, image_format="jpeg")
    assert p.image[:2] == b"\xff\xd8" and p.sha256 == pixel_sha256(decode_image(p.image))


def test_reweight_and_resample():
    counts = {"race=0,gender=0": 30, "race=1,gender=1": 10, attrs.NULL: 5}
    w = attrs.reweight(counts)
    labelled = [k for k in counts if k != attrs.NULL]
    assert w[attrs.NULL] == 1.0
    assert sum(counts[k] * w[k] for k in labelled) / sum(counts[k] for k in labelled) == pytest.approx(1.0)
    assert w["race=1,gender=1"] == pytest.approx(3 * w["race=0,gender=0"])
    keys = ["a"] * 7 + ["b"] * 3 + [attrs.NULL] * 2
    rep = attrs.resample_repeats(keys, seed=1)
    tot = {k: int(sum(r for kk, r in zip(keys, rep) if kk == k)) for k in set(keys)}
    assert tot == {"a": 7, "b": 7, attrs.NULL: 2}
    assert (rep >= 1).all() and (attrs.resample_repeats(keys, seed=1) == rep).all()


def test_attribute_counts():
    rows = {
        "age": [5, 25, None],
        "gender": [0, 1, None],
        "race": [2, 2, None],
        "label_source": ["filename", "filename", None],
    }
    c = attrs.attribute_counts(rows, [0, 13, 20])
    assert c["age"] == {"0-12": 1, "20+": 1, "null": 1}
    assert c["race"] == {"2": 2, "null": 1} and c["label_source"] == {"filename": 2, "null": 1}


def test_downsample_is_area_average():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    y = downsample(x, 2)
    assert y.shape == (2, 2, 2, 3)
    assert y[0, 0, 0, 0] == pytest.approx(x[0, :2, :2, 0].mean())


def test_is_image_name():
    assert is_image_name("a/B.JPG") and is_image_name("x.webp") and is_image_name("y.Jpeg")
    assert not is_image_name("notes.txt") and not is_image_name("__MACOSX/a/._x.jpg")


def test_plan_sources(tmp_path):
    st = Storage()
    with pytest.raises(UserError, match="does not exist"):
        plan_sources(st, [str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        plan_sources(st, [str(tmp_path / "empty")])
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    for i in range(5):
        (d / "sub" / f"{i}.png").write_bytes(b"x")
    (d / "README.txt").write_text("hi")
    z = tmp_path / "more.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a/1.jpg", b"x")
        zf.writestr("a/notes.md", b"x")
    plan = plan_sources(st, [str(d), str(z), str(d)], seed=0)  # same folder twice -> read once
    assert plan.num_candidates == 6 and plan.num_ignored == 3
    sub = plan_sources(st, [str(d), str(z)], limit=3, seed=7)
    assert sub.num_candidates == 3 and sub.items == plan_sources(st, [str(d), str(z)], limit=3, seed=7).items
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a valid zip"):
        plan_sources(st, [str(tmp_path / "bad.zip")])


def test_read_manifest_missing(tmp_path):
    with pytest.raises(UserError, match="facegen prepare"):
        read_manifest(Storage(), str(tmp_path / "nothing"))
    (tmp_path / "ds" / "v1").mkdir(parents=True)
    with pytest.raises(UserError, match="incomplete"):
        read_manifest(Storage(), str(tmp_path / "ds" / "v1"))
