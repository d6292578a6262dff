"""The data quality filter of `facegen prepare` (blurry / near-constant / too small after the
crop), its report and demographic-mix arithmetic."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageFilter

from facegen_ray.cli import main as cli_main
from facegen_ray.config import ConfigError, config_from_dict, load_config
from facegen_ray.data import quality as q
from facegen_ray.data.attributes import parse_utkface_name
from facegen_ray.data.pipeline import report_png_uri
from facegen_ray.data.report import Tile, contact_sheet, pick_ranks
from facegen_ray.data.shards import read_manifest
from facegen_ray.data.transforms import REJECT_REASONS, process_image
from facegen_ray.storage import Storage


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _sample_faces(sample_zip, n: int) -> list[tuple[str, Image.Image]]:
    with zipfile.ZipFile(sample_zip) as zf:
        names = sorted(x for x in zf.namelist() if x.endswith(".jpg"))
        out = []
        for name in names:
            if parse_utkface_name(name) is not None:
                out.append((name.rsplit("/", 1)[-1], Image.open(io.BytesIO(zf.read(name))).convert("RGB")))
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------- measures and rules


def test_laplacian_variance_by_hand():
    assert q.laplacian_variance(np.full((9, 9), 77.0)) == 0.0  # constant: exactly 0
    g = np.zeros((3, 4))
    g[1, 1] = 4.0  # interior pixels (1,1) and (1,2): Laplacians -16 and 4 -> variance 100
    assert q.laplacian_variance(g) == pytest.approx(100.0)
    assert q.laplacian_variance(np.zeros((2, 5))) == 0.0  # no interior
    ramp = np.tile(np.arange(10.0), (10, 1)) * 7  # a linear ramp has zero second derivative
    assert q.laplacian_variance(ramp) == pytest.approx(0.0)


def test_measure_and_judge_on_real_faces(sample_zip):
    """A bundled face is sharp; the same face blurred is not; a flat frame is near-constant;
    crops larger than quality_size are measured at quality_size, smaller ones at their own size."""
    ((_, face),) = _sample_faces(sample_zip, 1)
    rules = q.QualityRules(resolution=16)
    sharp = q.measure(face, rules.quality_size)
    blurred = q.measure(face.filter(ImageFilter.GaussianBlur(2)), rules.quality_size)
    flat = q.measure(Image.new("RGB", (64, 64), (120, 90, 60)), rules.quality_size)
    assert sharp.crop == 64 and sharp.sharpness > 2 * rules.min_sharpness
    assert blurred.sharpness < rules.min_sharpness < sharp.sharpness
    assert flat.contrast == 0.0 and flat.sharpness == 0.0
    assert (q.judge(sharp, rules), q.judge(blurred, rules), q.judge(flat, rules)) == (None, "blurry", "near_constant")
    # measured at quality_size: a 128 px copy measures like its 64 px Lanczos reduction
    big = face.resize((128, 128), Image.Resampling.LANCZOS)
    reduced = big.resize((64, 64), Image.Resampling.LANCZOS)
    assert q.measure(big, 64) == dataclasses.replace(q.measure(reduced, 64), crop=128)
    small = face.resize((40, 40), Image.Resampling.LANCZOS)
    assert q.measure(small, 64).crop == 40  # never enlarged for the measure
    assert q.measure(small, 64).sharpness == pytest.approx(q.laplacian_variance(q.grey(small)))


def test_rules_order_thresholds_and_off():
    rules = q.QualityRules(resolution=128, max_upscale=2.0, min_contrast=8, min_sharpness=40)
    assert rules.min_crop == 64
    m = q.Measures(crop=63, contrast=1.0, sharpness=1.0)
    assert q.judge(m, rules) == "low_resolution"  # first rule wins
    assert q.judge(dataclasses.replace(m, crop=64), rules) == "near_constant"
    assert q.judge(q.Measures(64, 8.0, 39.9), rules) == "blurry"
    assert q.judge(q.Measures(64, 8.0, 40.0), rules) is None  # thresholds are strict "below"
    off = q.QualityRules(resolution=128, max_upscale=0, min_contrast=0, min_sharpness=0)
    assert off.min_crop == 0 and q.judge(q.Measures(1, 0.0, 0.0), off) is None
    assert q.QualityRules(resolution=64, max_upscale=3).min_crop == 22  # ceil(64/3)


def test_process_image_quality_verdicts(sample_zip):
    ((_, face),) = _sample_faces(sample_zip, 1)
    rules = q.QualityRules(resolution=16)
    ok = process_image(_png(face), resolution=16, min_size=32, quality=rules)
    assert ok.quality_reject is None and ok.measures.crop == 64 and ok.image
    blurred = process_image(_png(face.filter(ImageFilter.GaussianBlur(2))), resolution=16, min_size=32, quality=rules)
    assert blurred.quality_reject == "blurry" and blurred.image  # the image stays, for the report
    flat = process_image(_png(Image.new("RGB", (50, 70), "black")), resolution=16, min_size=32, quality=rules)
    assert flat.quality_reject == "near_constant" and flat.measures.crop == 50
    low = process_image(
        _png(face.resize((40, 40))), resolution=128, min_size=32, quality=q.QualityRules(resolution=128)
    )
    assert low.quality_reject == "low_resolution" and low.upscaled
    # without rules (feedback images, older callers): nothing measured, nothing rejected
    plain = process_image(_png(Image.new("RGB", (40, 40), "black")), resolution=16, min_size=32)
    assert plain.measures is None and plain.quality_reject is None
    assert REJECT_REASONS[:3] == ("unreadable", "too_small", "unsupported_mode") and REJECT_REASONS[-1] == "duplicate"
    assert set(q.QUALITY_REASONS) < set(REJECT_REASONS)


def test_thresholds_are_config_fields():
    d = config_from_dict({}).data
    assert (d.max_upscale, d.min_contrast, d.min_sharpness, d.quality_size) == (2.0, 8.0, 40.0, 64)
    cfg = load_config(None, ["data.min_sharpness=150", "data.max_upscale=0", "data.disparity_ratio=3"])
    rules = q.QualityRules.from_config(cfg.data)
    assert (rules.min_sharpness, rules.min_crop) == (150.0, 0) and cfg.data.disparity_ratio == 3.0
    for bad in ("data.min_sharpness=-1", "data.min_contrast=-0.5", "data.quality_size=2", "data.disparity_ratio=0.5"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])


# ---------------------------------------------------------------- demographic mix


def test_demographic_mix_arithmetic_and_flags():
    # 20 images: race "0" 10 (1 blurry), race "1" 6 (4 blurry, 1 near_constant), race "2" 4 (0)
    race = ["0"] * 10 + ["1"] * 6 + ["2"] * 4
    gender = ["0", "1"] * 10
    rej = [None] * 9 + ["blurry"] + ["blurry"] * 4 + ["near_constant", None] + [None] * 4
    mix = q.demographic_mix(
        {"race": race, "gender": gender}, rej, ratio=2.0, min_rejected=3, names={"race": {"0": "white", "1": "black"}}
    )
    ov = mix["overall"]
    assert (ov["before"], ov["after"], ov["rejected"]) == (20, 14, 6)
    assert ov["reject_rate"] == pytest.approx(0.3) and ov["by_reason"] == {
        "low_resolution": 0,
        "near_constant": 1,
        "blurry": 5,
    }
    rows = {r["group"]: r for r in mix["attributes"]["race"]}
    assert [r["group"] for r in mix["attributes"]["race"]] == ["0", "1", "2"]
    r1 = rows["1"]
    assert (r1["name"], r1["before"], r1["after"], r1["rejected"]) == ("black", 6, 1, 5)
    assert r1["share_before"] == pytest.approx(6 / 20) and r1["share_after"] == pytest.approx(1 / 14)
    assert r1["reject_rate"] == pytest.approx(5 / 6) and r1["by_reason"]["blurry"] == 4
    # 5/6 > 2 x 0.3 with >= 3 rejects: flagged overall; blurry 4/6 > 2 x 5/20: flagged too;
    # near_constant 1/6 > 2 x 1/20 but only 1 image (< min_rejected 3): not flagged
    assert r1["flagged"] == ["any", "blurry"]
    assert rows["0"]["flagged"] == [] and rows["0"]["reject_rate"] == pytest.approx(0.1)
    assert rows["2"]["name"] == "2" and rows["2"]["after"] == 4 and rows["2"]["share_after"] == pytest.approx(4 / 14)
    assert sum(r["share_after"] for r in rows.values()) == pytest.approx(1.0)
    flags = {(f["attribute"], f["group"], f["reason"]): f for f in mix["flags"]}
    assert set(flags) == {("race", "1", "any"), ("race", "1", "blurry")}
    assert flags[("race", "1", "any")]["times"] == pytest.approx((5 / 6) / 0.3)
    g = {r["group"]: r for r in mix["attributes"]["gender"]}  # 3 of each gender rejected: no flag
    assert g["0"]["rejected"] + g["1"]["rejected"] == 6 and not g["0"]["flagged"] and not g["1"]["flagged"]
    # the floor: with min_rejected 6 the same data raises no flag
    assert q.demographic_mix({"race": race}, rej, min_rejected=6)["flags"] == []
    r3 = q.demographic_mix({"race": race}, rej, ratio=3.0, min_rejected=3)["attributes"]["race"][1]["flagged"]
    assert r3 == []  # 5/6 < 3 x 0.3 and 4/6 < 3 x 0.25
    # nothing rejected: rates 0, no flags, shares unchanged
    none = q.demographic_mix({"race": race}, [None] * 20)
    assert none["flags"] == [] and all(r["share_before"] == r["share_after"] for r in none["attributes"]["race"])
    with pytest.raises(ValueError):
        q.demographic_mix({"race": race[:-1]}, rej)


def test_group_order_puts_ages_numerically_and_null_last():
    mix = q.demographic_mix({"age": ["70+", "null", "0-12", "13-19", "20-29"]}, [None] * 5)
    assert [r["group"] for r in mix["attributes"]["age"]] == ["0-12", "13-19", "20-29", "70+", "null"]


# ---------------------------------------------------------------- report pieces


def test_pick_ranks_and_contact_sheet():
    assert pick_ranks(5, 10) == [0, 1, 2, 3, 4]
    ranks = pick_ranks(100, 5)
    assert ranks[0] == 0 and ranks[-1] == 99 and len(ranks) == 5 and ranks == sorted(ranks)
    face = _png(Image.new("RGB", (16, 16), (200, 10, 10)))
    sheet = contact_sheet("blurry", [Tile("a", face, 3.2, False), Tile("b", face, 55, True)], cols=4)
    arr = np.asarray(sheet)
    assert sheet.size[0] == 4 * 64 + 3 * 2
    # the 16 px face is enlarged to 64 px without smoothing: a solid block of its colour
    assert (arr[14 + 11 : 14 + 11 + 64, 0:64] == [200, 10, 10]).all()


def test_report_png_uri():
    assert report_png_uri("/x/y/report.html") == "/x/y/report.png"
    assert report_png_uri("s3://b/p/r.htm") == "s3://b/p/r.png"
    assert report_png_uri("/x/report") == "/x/report.png"
    assert report_png_uri("/x/report.png") == "/x/report.sheets.png"


# ---------------------------------------------------------------- end to end


@pytest.fixture
def quality_folder(tmp_path, sample_zip):
    """12 sharp bundled faces (3 each of races 0, 2, 3, 4), 3 race-1 faces blurred, a flat
    frame (race 2), a 40 px face (race 0) and a corrupt file."""
    d = tmp_path / "raw"
    d.mkdir()
    by_race: dict[int, list] = {}
    for name, img in _sample_faces(sample_zip, 402):
        by_race.setdefault(parse_utkface_name(name).race, []).append((name, img))
    for race in (0, 2, 3, 4):
        for name, img in by_race[race][:3]:
            img.save(d / name.replace(".jpg.chip.jpg", ".png"))
    for i, (_name, img) in enumerate(by_race[1][:3]):  # ages 25, 45, 65: one per age bucket
        img.filter(ImageFilter.GaussianBlur(2)).save(d / f"{25 + 20 * i}_{i % 2}_1_2017010100000000{i}.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(d / "8_1_2_20170101000000099.png")
    by_race[0][5][1].resize((40, 40), Image.Resampling.LANCZOS).save(d / "55_1_0_20170101000000098.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return d


def test_prepare_rejects_counts_report_and_flag(ray_session, quality_folder, tmp_path, capsys):
    dest, report = tmp_path / "faces", tmp_path / "out" / "report.html"
    rc = cli_main(
        [
            "prepare",
            str(quality_folder),
            str(dest),
            "--resolution",
            "16",
            "--report",
            str(report),
            "--set",
            "data.max_upscale=0.25",
            "--set",
            "data.disparity_min_rejected=2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "prepared 12 images (6 rejected: unreadable=1, low_resolution=1, near_constant=1, blurry=3)" in out
    assert "quality filter: 5 of 17 rejected (low_resolution=1, near_constant=1, blurry=3)" in out
    assert "DISPROPORTIONATE: race=black any 3.4x the overall rate, race=black blurry 5.7x" in out
    assert f"report: {report}" in out
    m = read_manifest(Storage(), str(dest))
    assert m["rejected"] == {
        "unreadable": 1,
        "too_small": 0,
        "unsupported_mode": 0,
        "low_resolution": 1,
        "near_constant": 1,
        "blurry": 3,
        "duplicate": 0,
    }
    assert m["num_images"] == 12 and m["num_rejected"] == 6
    qm = m["quality"]
    assert qm["min_crop"] == 64 and qm["min_sharpness"] == 40.0 and qm["num_measured"] == 17
    assert qm["rejected"] == {"low_resolution": 1, "near_constant": 1, "blurry": 3}
    race = {r["group"]: r for r in qm["mix"]["attributes"]["race"]}
    assert (race["1"]["before"], race["1"]["after"], race["1"]["flagged"]) == (3, 0, ["any", "blurry"])
    assert (race["2"]["before"], race["2"]["rejected"], race["2"]["flagged"]) == (4, 1, [])
    assert race["0"]["by_reason"]["low_resolution"] == 1 and race["0"]["flagged"] == []
    assert {(f["attribute"], f["group"], f["reason"]) for f in qm["mix"]["flags"]} == {
        ("race", "1", "any"),
        ("race", "1", "blurry"),
    }
    # nothing rejected reached the shards
    sources = [f for f in (dest / "v1").glob("*.parquet")]
    import pyarrow.parquet as pq

    stored = [
        r.rsplit("/", 1)[-1] for p in sources for r in pq.read_table(p, columns=["source"]).column("source").to_pylist()
    ]
    assert len(stored) == 12 and not any("2017010100000000" in s for s in stored)

    page = report.read_text()
    for section in ("id='rules'", "id='rejects'", "id='scores'", "id='sheets'", "id='mix'"):
        assert section in page
    assert "Removed disproportionately: race=black (any: 3/3 = 100.00%" in page
    assert re.search(r"<tr class=\"flag\"><td>black \(1\)</td><td>3</td>", page)
    sheets = re.findall(r"<h3>(\w+)</h3><img alt='\w+ contact sheet' src='data:image/png;base64,([^']+)'", page)
    assert [s[0] for s in sheets] == ["low_resolution", "near_constant", "blurry"]
    blurry = Image.open(io.BytesIO(base64.b64decode(sheets[2][1])))
    assert blurry.size[0] == 12 * 64 + 11 * 2 and blurry.size[1] > 2 * 64  # rejected row + kept row
    png = Image.open(report.with_suffix(".png"))
    assert png.size[0] == blurry.size[0] and png.size[1] > blurry.size[1]
    assert json.loads(json.dumps(qm)) == qm  # the manifest section is plain JSON


def test_report_written_when_every_image_is_rejected(ray_session, quality_folder, tmp_path, capsys):
    dest, report = tmp_path / "faces", tmp_path / "r.html"
    rc = cli_main(
        [
            "prepare",
            str(quality_folder),
            str(dest),
            "--resolution",
            "16",
            "--report",
            str(report),
            "--set",
            "data.min_sharpness=1e9",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no usable images" in err and "blurry=" in err and "data.min_sharpness" in err
    assert not (dest / "manifest.json").exists()  # nothing stored
    page = report.read_text()
    assert "nothing (no usable image)" in page and "<h3>blurry</h3><img" in page
