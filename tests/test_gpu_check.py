"""benchmarks/gpu_check.py, the GPU benchmark: its arguments, the commands it plans, and a
CPU smoke run of two steps (the figures it exists for need a CUDA machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_check", None)


def test_defaults_stay_inside_the_repository(gc):
    args = gc.parse_args([])
    assert args.device == "cuda" and args.steps == ["train", "generate", "serve", "quality", "compile"]
    assert Path(args.out) == REPO / "facegen-data" / "gpu-check" and Path(args.root) == REPO / "facegen-data" / "gpu"
    assert args.serve_ingress == [1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "train,bogus"], "--steps: unknown ['bogus']"),
        (["--steps", ","], "--steps: unknown empty list"),
        (["--device", "cpu"], "--device cpu runs only with --smoke"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--serve-ingress", "1,x"], "--serve-ingress: a comma list of integers"),
        (["--serve-ingress", "0"], "each count must be >= 1"),
        (["--budget-s", "10"], "--budget-s must be at least 60"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(gc, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_plan_gpu_and_smoke(gc, tmp_path):
    args = gc.parse_args(["--steps", "train,arch,profile,generate,serve", "--serve-ingress", "1,4"])
    steps = gc.plan(args, tmp_path)
    assert [s.name for s in steps] == [
        "train_step",
        "train_step_orig",
        "train_step_skip",
        "train_profile",
        "generate",
        "serve_load_ingress1",
        "serve_load_ingress4",
    ]
    train = steps[0].argv
    assert train[train.index("--resolutions") + 1] == "64,256" and "16384" in train and "--device" in train
    assert steps[1].tag == {"architecture_run": "orig"} and steps[5].capture
    assert all(str(tmp_path) in str(s.partial) for s in steps if s.partial)
    smoke = gc.plan(gc.parse_args(["--device", "cpu", "--smoke", "--steps", "train,serve"]), tmp_path)
    assert smoke[0].argv[smoke[0].argv.index("--resolutions") + 1] == "8,16"
    assert "tiny" in smoke[1].argv


def test_quality_step_reads_the_fastest_variant(gc, tmp_path):
    args = gc.parse_args(["--root", str(tmp_path / "root"), "--out", str(tmp_path / "out")])
    out = Path(args.out)
    out.mkdir()
    assert gc.quality_step(args, out, 1000) is None  # no prepared dataset
    (tmp_path / "root" / "datasets" / "faces").mkdir(parents=True)
    (tmp_path / "root" / "datasets" / "faces" / "manifest.json").write_text("{}")
    rows = [
        {"variant": "fp32", "resolution": 64, "img_per_s": 10.0},
        {"variant": "amp", "resolution": 64, "img_per_s": 30.0},
        {"variant": "amp+channels_last", "resolution": 256, "img_per_s": 99.0},  # another resolution
    ]
    (out / "train_partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    step = gc.quality_step(args, out, 1050)
    assert "train.amp=true" in step.argv and "train.channels_last=false" in step.argv
    assert step.argv[step.argv.index("--minutes") + 1] == "15.0"  # (1050 - 150 reserved) / 60
    assert gc.fastest_variant(out / "missing.jsonl") == (False, False)


def test_cpu_smoke_run_records_each_step(gc, tmp_path):
    out = tmp_path / "out"
    assert gc.main(["--device", "cpu", "--smoke", "--steps", "train,generate", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == "machine"
    status = {r["step"]: r["rc"] for r in rows if "rc" in r}
    assert status == {"train_step": 0, "generate": 0}
    assert any(r.get("variant") == "fp32" and r.get("img_per_s") for r in rows)
    assert any(r.get("benchmark") == "generate_latency" for r in rows)
