"""Provenance: the invisible watermark (provenance/watermark.py), the metadata every encoded
image carries, and `facegen detect`. In-process, numpy/Pillow only."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from test_metrics_inception import _sample_faces

from facegen_ray import provenance as prov
from facegen_ray.provenance import watermark as wm
from facegen_ray.serve.generation import encode_image

IID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return _sample_faces(3, 64)[0]


def _jpeg(a: np.ndarray, q: int) -> np.ndarray:
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="JPEG", quality=q)
    return np.asarray(Image.open(b).convert("RGB"))


def test_watermark_round_trip_jpeg_and_crop(faces):
    for a in faces:
        m, ok = wm.embed(a, "v7", IID)
        assert ok and np.abs(m.astype(int) - a).max() > 0
        for attacked in (m, _jpeg(m, 75), m[3:61, 5:63]):
            d = wm.detect(attacked)
            assert d.found and d.model_tag == wm.model_tag("v7") and d.image_id_prefix == IID[:4]


def test_unmarked_or_wrong_key_is_not_detected(faces):
    a = faces[0]
    assert not wm.detect(a).found
    m, _ = wm.embed(a, "v7", IID, key="another key")
    assert not wm.detect(m).found and wm.detect(m, key="another key").found


def test_only_the_central_window_changes_and_the_input_is_left_alone(faces):
    a = np.ascontiguousarray(np.pad(faces[0], ((20, 36), (8, 40), (0, 0)), mode="edge"))  # 120 x 112, off-centre
    before = a.copy()
    m, ok = wm.embed(a, "v7", IID)
    assert ok and np.array_equal(a, before), "embed must not write into its input"
    u, v = wm._window(*a.shape[:2])
    outside = np.ones(a.shape[:2], bool)
    outside[u : u + wm.TILE, v : v + wm.TILE] = False
    assert np.array_equal(m[outside], a[outside]) and not np.array_equal(m, a)
    assert wm.detect(m).image_id_prefix == IID[:4]


def test_small_images_are_not_marked():
    a = np.full((16, 16, 3), 128, np.uint8)
    m, ok = wm.embed(a, "v1", IID)
    assert not ok and m is a


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_encoded_images_carry_provenance_deterministically(faces, fmt):
    rec = prov.provenance_record("v7", IID, 42, 0.7, {"edit": {"smile": 1.5}})
    data = encode_image(faces[0], fmt, 95, provenance=rec)
    assert data == encode_image(faces[0], fmt, 95, provenance=rec)
    meta = prov.read_metadata(data)
    assert meta["synthetic"] is True and meta["model_version"] == "v7" and meta["seed"] == 42
    assert meta["psi"] == 0.7 and meta["edit"] == {"edit": {"smile": 1.5}} and meta["image_id"] == IID
    rep = prov.inspect(data)
    assert rep["synthetic"] and rep["watermark"]["found"] and rep["consistent"]
    assert prov.read_metadata(encode_image(faces[0], fmt)) is None  # plain encoding has none


def test_detect_cli_text_and_json(faces, tmp_path, capsys):
    from facegen_ray.cli import main

    marked = tmp_path / "ours.png"
    marked.write_bytes(encode_image(faces[1], "png", provenance=prov.provenance_record("v2", IID, 1, 0.5)))
    stripped = tmp_path / "stripped.jpg"  # metadata gone (re-saved), watermark kept
    Image.open(marked).convert("RGB").save(stripped, format="JPEG", quality=90)
    real = tmp_path / "real.png"
    Image.fromarray(faces[2]).save(real)
    assert main(["detect", str(marked), str(stripped), str(real)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{marked}: SYNTHETIC") and "agree" in lines[0]
    assert lines[1].startswith(f"{stripped}: SYNTHETIC") and "metadata: none" in lines[1]
    assert lines[2].startswith(f"{real}: no provenance found")
    assert main(["detect", "--json", str(marked), str(real)]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert objs[0]["synthetic"] and objs[0]["metadata"]["model_version"] == "v2"
    assert not objs[1]["synthetic"] and objs[1]["metadata"] is None


def test_image_provenance_of_a_served_item():
    from facegen_ray.serve.generation import image_provenance, response_provenance

    item = {"seeds": [5], "truncation": 0.7, "attributes": {"gender": 1}, "control": {"edit": {"age": 2.0}}}
    rec = image_provenance({"model_version": "v3"}, item, 5, IID)
    assert rec["synthetic"] and rec["seed"] == 5 and rec["edit"] == {"attributes": {"gender": 1}, "edit": {"age": 2.0}}
    assert response_provenance({"model_version": "v3"}, 0.7)["synthetic"] is True
