"""benchmarks/quality.py's run naming: benchmarks sharing a --root (its prepared dataset and
cached real-image statistics) never resume each other's training (argument checks: they exit
before anything is prepared or trained); benchmarks/quality_pair.py's interleaving of two
recipes (its order rule, its argument checks, and, marked slow, a whole pair on the sample)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location("quality_pair", REPO / "benchmarks" / "quality_pair.py")
pair = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pair)


def _quality(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_fresh_benchmark_refuses_a_run_that_already_exists(tmp_path):
    run = tmp_path / "runs" / "cpu-32-seed1"  # configs/cpu-32.yaml's run_name + the --out folder
    run.mkdir(parents=True)
    (run / "marker").write_text("someone else's checkpoint")
    p = _quality("--root", str(tmp_path), "--out", str(tmp_path / "seed1"))
    assert p.returncode == 2, p.stderr
    assert "already holds a run" in p.stderr and "--run-name" in p.stderr
    assert not (tmp_path / "seed1").exists()  # nothing written
    assert (run / "marker").read_text() == "someone else's checkpoint"


def test_the_run_is_named_with_run_name_not_set(tmp_path):
    p = _quality("--root", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "train.run_name=x")
    assert p.returncode == 2 and "--run-name" in p.stderr


def test_two_pairs_in_one_root_train_separate_runs(tmp_path):
    """A second pair (another seed) beside a first in the same --root: each recipe's run is
    named after its pair's folder, so the second never resumes the first's checkpoints."""
    root = str(tmp_path / "root")

    def run_name(cmd):
        return cmd[cmd.index("--run-name") + 1]

    s1 = pair.segment_command(root, str(tmp_path / "pair-s1"), "shipped", ["train.seed=1"], ["--eval-at", "60"])
    s0 = pair.segment_command(root, str(tmp_path / "pair-s0") + "/", "shipped", ["train.seed=0"], [])
    assert run_name(s1) == "pair-s1-shipped" and run_name(s0) == "pair-s0-shipped"
    assert s1[s1.index("--out") + 1] == str(tmp_path / "pair-s1" / "shipped")
    assert s1[-4:] == ["--set", "train.seed=1", "--eval-at", "60"] and "--max-segments" in s1
    # the first pair's run exists; its own name is refused to a fresh benchmark elsewhere
    (tmp_path / "root" / "runs" / "pair-s1-shipped").mkdir(parents=True)
    clash = [*s0[1:]]
    clash[clash.index("--run-name") + 1] = "pair-s1-shipped"
    p = subprocess.run([sys.executable, *clash], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "already holds a run" in p.stderr


def test_the_pair_trains_the_recipe_behind_and_breaks_ties_in_order():
    nobody_done = {"a": False, "b": False}
    assert pair.next_recipe({"a": 0.0, "b": 0.0}, nobody_done) == "a"
    assert pair.next_recipe({"a": 4.1, "b": 0.0}, nobody_done) == "b"
    assert pair.next_recipe({"a": 4.1, "b": 7.9}, nobody_done) == "a"
    assert pair.next_recipe({"b": 3.0, "a": 3.0}, nobody_done) == "b"  # the first listed
    # a finished recipe is not picked however far behind; both finished: nothing left
    assert pair.next_recipe({"a": 60.2, "b": 59.1}, {"a": False, "b": True}) == "a"
    assert pair.next_recipe({"a": 60.2, "b": 60.1}, {"a": True, "b": True}) is None


def test_trained_minutes_read_from_a_quality_state(tmp_path):
    assert pair.trained_minutes(str(tmp_path)) == 0.0  # no state yet
    segs = [
        {"images": 8000, "segment_images": 8000, "wall_s": 90.0},
        {"images": 20000, "segment_images": 12000, "wall_s": 150.0},
    ]
    (tmp_path / "state.json").write_text(json.dumps({"segments": segs}))
    assert pair.trained_minutes(str(tmp_path)) == pytest.approx(4.0)
    assert pair.rates(str(tmp_path)) == [88.9, 80.0]
    chart = tmp_path / "pair.png"
    pair.plot_pair({"a": str(tmp_path), "b": str(tmp_path)}, {"a": 20.0, "b": 17.0}, str(chart))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_winner_sets_come_from_the_report_and_a_report_without_them_is_refused(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"winner_sets": ["train.g_lr=0.004", 'loss.name="lsgan"']}) + "\n{}\n")
    assert pair.winner_sets(str(good)) == ["train.g_lr=0.004", 'loss.name="lsgan"']
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"trials": 3}) + "\n")
    with pytest.raises(SystemExit, match="no winner_sets"):
        pair.winner_sets(str(bad))


def _pair(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality_pair.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_pair_refuses_per_recipe_flags_and_equal_labels(tmp_path):
    base = ["--root", str(tmp_path), "--out", str(tmp_path / "pair")]
    p = _pair(*base, "--run-name", "x")
    assert p.returncode == 2 and "--run-name is set per recipe" in p.stderr
    p = _pair(*base, "--max-segments=3")
    assert p.returncode == 2 and "--max-segments is set per recipe" in p.stderr
    p = _pair(*base, "--label-a", "x", "--label-b", "x")
    assert p.returncode == 2 and "must differ" in p.stderr
    p = _pair(*base, "--config-a", str(REPO / "configs" / "cpu-32-handset.yaml"), "--config", "x.yaml")
    assert p.returncode == 2 and "--config goes to both" in p.stderr
    p = _pair(*base, "--config-b", str(tmp_path / "missing.yaml"))
    assert p.returncode == 2 and "no config file" in p.stderr
    assert not (tmp_path / "pair").exists()


def test_each_recipe_trains_its_own_config(tmp_path, monkeypatch):
    """--config-a / --config-b: each recipe's quality.py segments get that recipe's file (here the
    first segment, A's, is recorded and made to fail, which ends the pair with its exit code)."""
    calls = []

    def fake_run(cmd, **_):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 3)

    handset = REPO / "configs" / "cpu-32-handset.yaml"
    monkeypatch.setattr(pair.subprocess, "run", fake_run)
    argv = ["quality_pair.py", "--root", str(tmp_path), "--out", str(tmp_path / "p"), "--label-a", "handset"]
    monkeypatch.setattr(sys, "argv", [*argv, "--label-b", "winner", "--config-a", str(handset), "--eval-at", "60"])
    with pytest.raises(SystemExit, match="quality.py for handset failed with exit code 3"):
        pair.main()
    (cmd,) = calls
    assert cmd[cmd.index("--config") + 1] == str(handset) and cmd.count("--config") == 1
    assert cmd[-2:] == ["--eval-at", "60"]
    info = json.loads((tmp_path / "p" / "pair.json").read_text())
    assert info["handset"]["config"] == [str(handset)] and info["winner"]["config"] == []


@pytest.mark.slow
def test_a_pair_on_the_sample_interleaves_and_reports_both(tmp_path, sample_zip):
    """Two recipes (the quickstart config, and it with G's learning rate halved) for 1.5
    training minutes each: their segments alternate, each run has its own checkpoint, and the
    JSON line carries both FIDs and B's change against A."""
    config = REPO / "facegen_ray" / "configs" / "quickstart.yaml"
    args = ["--root", str(tmp_path / "root"), "--out", str(tmp_path / "pair"), "--label-a", "base"]
    args += ["--label-b", "slow-g", "--set-b", "train.g_lr=0.001", "--set", "train.seed=3"]
    args += ["--config", str(config), "--data", str(sample_zip), "--minutes", "1.5", "--eval-at", "1.5"]
    args += ["--first-segment", "480", "--max-segment-minutes", "0.25", "--num-gen", "64", "--final-metrics", "fid"]
    p = _pair(*args, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["benchmark"] == "quality_pair" and doc["labels"] == ["base", "slow-g"]
    fids = doc["fid"]
    assert all(isinstance(v, float) and v > 0 for v in fids.values())
    assert doc["b_vs_a_fid_change"] == pytest.approx(round((fids["slow-g"] - fids["base"]) / fids["base"], 4))
    assert doc["results"]["slow-g"]["sets"] == ["train.seed=3", "train.g_lr=0.001"]
    assert doc["results"]["base"]["sets"] == ["train.seed=3"]
    assert doc["chart"] == str(tmp_path / "pair" / "pair.png") and (tmp_path / "pair" / "pair.png").stat().st_size
    runs = sorted(d.name for d in (tmp_path / "root" / "runs").iterdir())
    assert runs == ["pair-base", "pair-slow-g"]  # <out>'s folder + the label
    # the order: each segment went to the recipe behind, unless the other had finished
    lines = [line.split("] ", 1)[1] for line in p.stderr.splitlines() if line.startswith("[pair ")]
    order = [line.split(":", 1)[0] for line in lines]
    assert len(order) >= 4 and order[:2] == ["base", "slow-g"]
    for i, line in enumerate(lines):
        minutes = ast.literal_eval(line.split("(trained minutes: ", 1)[1].rstrip(")"))
        behind = min(minutes, key=minutes.get)
        assert order[i] == behind or behind not in order[i + 1 :], lines
    for label in ("base", "slow-g"):
        r = doc["results"][label]
        assert r["trained_minutes"] >= 1.5 - 0.5 and r["segments"] >= 2
        assert len(r["segment_images_per_s"]) == r["segments"]
