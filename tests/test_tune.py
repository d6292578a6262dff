"""`facegen tune`: sweep-file validation (before Ray starts), the Ray Tune search space, trial
ranking, one real 2-trial sweep (Ray Tune over Ray Train runs, FID from the real Inception)
on the session's local Ray instance, and a 1-trial sweep with storage on S3 (moto). Tiny models (8x8, widths 8-32), 96 images per trial,
FID on 16 generated vs 16 real images.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from facegen_ray.cli import main as cli_main
from facegen_ray.config import load_config
from facegen_ray.errors import UserError
from facegen_ray.storage import Layout, Storage, join
from facegen_ray.tune.spec import (
    Distribution,
    SweepSpec,
    expected_trials,
    load_sweep,
    param_space,
    to_tune_domain,
)
from tests.conftest import tiny_model_dict

TRAIN = {
    "start_resolution": 4,
    "stabilize_images": 32,
    "fade_images": 16,
    "total_images": 96,
    "batch_size": {4: 16, 8: 16},
    "checkpoint_every_images": 48,
    "log_every_images": 48,
    "keep_checkpoints": 2,
    "shuffle_buffer": 16,
    "ema_half_life_images": 100,
    "max_failures": 0,
    "seed": 3,
    "amp": False,
    "num_workers": 1,
}


def write_base(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "model": tiny_model_dict(8),
                "loss": {"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 4},
                "train": TRAIN,
            }
        )
    )
    return path


def write_sweep(path: Path, **fields) -> Path:
    base = write_base(path.parent / "base.yaml")
    sweep = {
        "name": "t",
        "base_config": base.name,
        "metric": "fid",
        "num_samples": 1,
        "search_space": {"train.g_lr": {"grid": [0.0005, 0.004]}},
        "max_concurrent_trials": 2,
        "eval": {"num_gen": 16, "num_real": 16, "every_images": 48, "batch_size": 16},
    }
    sweep.update(fields)
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


# ------------------------------------------------------------------ validation (no Ray)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command gets as far as starting Ray / the sweep."""
    import facegen_ray.runtime
    import facegen_ray.tune.runner

    def boom(*a, **k):
        raise AssertionError("validation should have failed before Ray starts")

    monkeypatch.setattr(facegen_ray.runtime, "ensure_ray", boom)
    monkeypatch.setattr(facegen_ray.tune.runner, "run_sweep", boom)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"eval": {"num_gen": 16, "every": 5}}, "eval.every: unknown key"),
        (
            {"search_space": {"train.g_lr": {"lognormal": [0.1, 1]}}},
            "search_space['train.g_lr']: unknown distribution 'lognormal'",
        ),
        ({"search_space": {"train.g_lr": {"loguniform": [0, 0.01]}}}, "search_space['train.g_lr']: loguniform needs"),
        ({"search_space": {"train.g_lr": {"uniform": [0.1, 0.01]}}}, "uniform needs [low, high] with low < high"),
        ({"search_space": {"train.g_lr": 0.001}}, "search_space['train.g_lr']: a distribution must be a mapping"),
        (
            {"search_space": {"train.glr": {"choice": [0.1]}}},
            "search_space['train.glr']: unknown config field 'train.glr' (did you mean train.g_lr?)",
        ),
        ({"search_space": {"trian.g_lr": {"choice": [0.1]}}}, "unknown config section 'trian'"),
        ({"overrides": {"loss.clip": 0.1}}, "overrides['loss.clip']: unknown config field"),
        (
            {"search_space": {"loss.clip_value": {"uniform": [-0.01, 0.02]}}},
            "search_space['loss.clip_value'] (uniform): value -0.01 gives an invalid config: loss.clip_value: Input should be greater than 0",
        ),
        (
            {"search_space": {"loss.name": {"choice": ["wgan", "hinge"]}}},
            "search_space['loss.name'] (choice): value 'hinge'",
        ),
        ({"search_space": {"train.start_resolution": {"grid": [4, 16]}}}, "exceeds model.resolution"),
        (
            {"scheduler": {"type": "asha"}, "eval": {"num_gen": 16}},
            "scheduler: asha stops trials on intermediate results",
        ),
        ({"metric": "is"}, "metric: Input should be 'fid' or 'kid'"),
        ({"num_samples": 0}, "num_samples: Input should be greater than or equal to 1"),
    ],
)
def test_bad_sweep_files_exit_2_naming_the_field(tmp_path, capsys, no_ray, fields, expected):
    path = write_sweep(tmp_path / "sweep.yaml", **fields)
    rc = cli_main(["tune", str(path), "--root", str(tmp_path / "root")])
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err, err
    assert not (tmp_path / "root" / "tune").exists()


def test_bad_set_and_missing_files_exit_2(tmp_path, capsys, no_ray):
    path = write_sweep(tmp_path / "sweep.yaml")
    assert cli_main(["tune", str(path), "--set", "train.g_lr=0.1"]) == 2
    assert "that field is in the search space" in capsys.readouterr().err
    assert cli_main(["tune", str(path), "--set", "train.total_imgs=5"]) == 2
    assert "unknown config field 'train.total_imgs'" in capsys.readouterr().err
    assert cli_main(["tune", str(path), "--set", "train.total_images=-5"]) == 2
    assert "train.total_images" in capsys.readouterr().err
    assert cli_main(["tune", str(tmp_path / "nope.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    bad = write_sweep(tmp_path / "sweep2.yaml", base_config="missing.yaml")
    assert cli_main(["tune", str(bad)]) == 2
    assert "base_config: file not found" in capsys.readouterr().err


def test_shipped_sweeps_validate():
    root = Path(__file__).resolve().parents[1] / "tune_configs"
    files = sorted(root.glob("*.yaml"))
    names = {f.stem for f in files}
    assert {
        "quickstart-cpu",
        "utkface-64-ttur-lr",
        "utkface-64-wgan-clip",
        "utkface-64-wgan-gp-lambda",
        "utkface-64-lsgan-lambda",
    } <= names
    losses = {}
    for f in files:
        s = load_sweep(f)
        assert s.name == f.stem
        losses[f.stem] = s.base_cfg.loss.name
        for key in s.spec.search_space:  # each sampled config validates (bounds checked at load)
            assert s.trial_config({key: s.spec.search_space[key].probe_values()[0]})
        # every trial measures its final FID (and KID) even when the file sets no every_images
        assert s.base_cfg.train.eval_at_end is True and s.base_cfg.eval.metrics == ["fid", "kid"]
    assert set(load_sweep(root / "cpu-32-losses.yaml").spec.search_space["loss.name"].probe_values()) == {
        "minimax",
        "nonsaturating",
        "wgan",
        "wgan-gp",
        "lsgan",
    }
    assert losses["utkface-64-wgan-clip"] == "wgan" and losses["utkface-64-wgan-gp-lambda"] == "wgan-gp"
    assert losses["utkface-64-lsgan-lambda"] == "lsgan" and losses["utkface-64-ttur-lr"] == "nonsaturating"


# ------------------------------------------------------------------ search space


def test_distributions_map_to_tune_domains():
    from ray.tune.search import sample
    from ray.tune.search.variant_generator import generate_variants

    def d(**kw):
        return Distribution.model_validate(kw)

    lu = to_tune_domain(d(loguniform=[1e-4, 1e-2]))
    assert isinstance(lu, sample.Float) and isinstance(lu.get_sampler(), sample.Float._LogUniform)
    assert (lu.lower, lu.upper) == (1e-4, 1e-2)
    un = to_tune_domain(d(uniform=[0.1, 0.5]))
    assert isinstance(un, sample.Float) and isinstance(un.get_sampler(), sample.Float._Uniform)
    ri = to_tune_domain(d(randint=[1, 6]))
    assert isinstance(ri, sample.Integer) and (ri.lower, ri.upper) == (1, 6)
    ch = to_tune_domain(d(choice=["wgan", "wgan-gp"]))
    assert isinstance(ch, sample.Categorical) and ch.categories == ["wgan", "wgan-gp"]
    assert to_tune_domain(d(grid=[0.005, 0.01])) == {"grid_search": [0.005, 0.01]}
    rng = np.random.default_rng(0)
    assert all(1e-4 <= v <= 1e-2 for v in lu.sample(size=200, random_state=rng))
    assert set(ri.sample(size=200, random_state=rng)) == {1, 2, 3, 4, 5}  # high exclusive

    spec = SweepSpec.model_validate(
        {
            "name": "x",
            "num_samples": 4,
            "search_space": {
                "loss.clip_value": {"grid": [0.005, 0.01, 0.02]},
                "loss.name": {"grid": ["wgan", "wgan-gp"]},
                "train.g_lr": {"loguniform": [1e-4, 1e-2]},
            },
        }
    )
    assert expected_trials(spec) == 4 * 3 * 2
    space = param_space(spec)
    variants = list(generate_variants(space, random_state=np.random.default_rng(1)))
    assert len(variants) * spec.num_samples == expected_trials(spec)  # Tune expands grids the same way
    seen = {(v["params"]["loss.clip_value"], v["params"]["loss.name"]) for _, v in variants}
    assert len(seen) == 6 and all(1e-4 <= v["params"]["train.g_lr"] <= 1e-2 for _, v in variants)


def test_rank_trials_and_concurrency():
    from facegen_ray.tune.results import rank_trials
    from facegen_ray.tune.runner import concurrency, trial_resources

    rows = [
        {"trial_id": "a", "fid": 30.0},
        {"trial_id": "b", "fid": None},
        {"trial_id": "c", "fid": 12.5},
        {"trial_id": "d", "fid": 12.5},
    ]
    ranked = rank_trials(rows, "fid")
    assert [(r["trial_id"], r["rank"]) for r in ranked] == [("c", 1), ("d", 2), ("a", 3), ("b", None)]

    spec_path = Path(__file__).resolve().parents[1] / "tune_configs" / "quickstart-cpu.yaml"
    s = load_sweep(spec_path)
    assert trial_resources(s) == {"CPU": 1.0, "GPU": 0.0}
    s.spec.max_concurrent_trials = None
    assert concurrency(s, {"CPU": 2.0}) == 1  # one CPU stays free for Ray Data
    assert concurrency(s, {"CPU": 9.0}) == 8
    gpu = load_sweep(Path(__file__).resolve().parents[1] / "tune_configs" / "utkface-64-ttur-lr.yaml")
    assert trial_resources(gpu) == {"CPU": 16.0, "GPU": 4.0}
    with pytest.raises(UserError, match="needs 4 GPU"):
        concurrency(gpu, {"CPU": 64.0})
    assert concurrency(gpu, {"CPU": 64.0, "GPU": 16.0}) == 4  # the sweep's max_concurrent_trials
    # custom resources keep their (case-sensitive) names: what the workers request is what waits
    s.base_cfg.train.resources_per_worker = {"CPU": 2, "accelerator_type:A100": 0.001}
    assert trial_resources(s) == {"CPU": 2.0, "GPU": 0.0, "accelerator_type:A100": 0.001}


# ------------------------------------------------------------------ a real sweep


@pytest.fixture(scope="module")
def faces_root(ray_session, sample_zip, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tune-root"))
    rc = cli_main(["prepare", str(sample_zip), Layout(root).dataset("faces"), "--resolution", "16", "--limit", "48"])
    assert rc == 0
    return root


def _fid_of_checkpoint(root: str, ckpt: str, eval_cfg) -> float:
    """Recompute FID of a trial's final checkpoint outside Ray Tune: G_ema at the checkpoint's
    stage, seeds 0..num_gen-1, the cached reference statistics."""
    import torch

    from facegen_ray.config import ModelConfig
    from facegen_ray.metrics.evaluate import generate_uint8, reference_features
    from facegen_ray.metrics.fid import feature_stats, fid_to_stats
    from facegen_ray.metrics.inception import InceptionExtractor
    from facegen_ray.models import Generator
    from facegen_ray.train.checkpoint import load_checkpoint

    state, _ = load_checkpoint(ckpt, 0, map_location="cpu")
    G = Generator(ModelConfig.model_validate(state["config"]["model"]))
    G.load_state_dict(state["G_ema"])
    G.eval()
    real, info = reference_features(Storage(), Layout(root).dataset("faces"), eval_cfg)
    assert info["cached"]  # computed once by the sweep's driver
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the 1-CPU Ray worker: same summation order, same features
    try:
        imgs = generate_uint8(G, list(range(eval_cfg.num_gen)), 1.0, batch_size=16)
        feats = InceptionExtractor(None, "cpu", 16)(imgs)
    finally:
        torch.set_num_threads(threads)
    return fid_to_stats(feats, *feature_stats(real))


def test_relative_root_is_anchored_before_trials_change_directory(tmp_path, monkeypatch):
    """Trials run in Tune's per-trial working directory: a relative --root (the shipped sweeps'
    `--root ./facegen-data/quality`) must reach them absolute, or the end-of-trial evaluation
    looks for the dataset under the trial folder (the cpu-32-losses run failed so)."""
    monkeypatch.chdir(tmp_path)
    sweep_file = Path(__file__).resolve().parents[1] / "tune_configs" / "cpu-32-losses.yaml"
    s = load_sweep(sweep_file, root="./facegen-data/quality")
    want = str(tmp_path / "facegen-data" / "quality")
    assert s.base_cfg.storage.root == want and s.base["storage"]["root"] == want
    assert s.trial_config({"loss.name": "lsgan"}).storage.root == want
    assert load_sweep(sweep_file, root="s3://bucket/prefix").base_cfg.storage.root == "s3://bucket/prefix"


@pytest.mark.slow  # ~2.5 min in CI (two Ray Train trials + FID); the default run keeps the sweep file,
# search space, scheduler, ranking and root checks, and -m slow runs three real sweeps
def test_two_trial_sweep_ranks_by_real_fid(faces_root, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml", name="lr2")
    rc = cli_main(["tune", str(sweep), "--root", faces_root])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sweep"] == "lr2" and summary["metric"] == "fid" and summary["mode"] == "min"
    assert summary["num_trials"] == 2 and summary["num_finished"] == 2 and summary["num_errors"] == 0
    assert summary["num_gen"] == 16 and summary["num_real"] == 16
    trials = summary["trials"]
    assert sorted(t["params"]["train.g_lr"] for t in trials) == [0.0005, 0.004]
    for t in trials:
        assert t["status"] == "finished" and t["images_seen"] == 96
        assert math.isfinite(t["fid"]) and t["fid"] > 0
        # FID reported at every eval point (48 images) and at the end; the last one is the trial's value
        assert [e["images_seen"] for e in t["evals"]] == [48, 96]
        assert t["evals"][-1]["fid"] == t["fid"] and t["best_fid"] == min(e["fid"] for e in t["evals"])
        assert t["checkpoint"] and t["checkpoint"].endswith("checkpoint-000000000096")
    best = summary["best"]
    assert best["fid"] == min(t["fid"] for t in trials) and trials[0]["trial_id"] == best["trial_id"]
    assert [t["rank"] for t in trials] == [1, 2] and trials[0]["fid"] <= trials[1]["fid"]
    assert best["config"]["train"]["g_lr"] == best["params"]["train.g_lr"]
    # the table
    assert "rank  trial" in out and "train.g_lr" in out and f"best: trial {best['trial_id']}" in out

    # the reported FID is the real thing: recomputed from the best trial's final checkpoint
    eval_cfg = load_config(None, ["eval.num_gen=16", "eval.num_real=16", "eval.batch_size=16"]).eval
    assert _fid_of_checkpoint(faces_root, best["checkpoint"], eval_cfg) == pytest.approx(best["fid"], rel=1e-3)
    assert trials[0]["evals"] != trials[1]["evals"]  # two different trainings, two different curves

    # results under <root>/tune/lr2/
    st, exp = Storage(), Layout(faces_root).tune("lr2")
    assert summary["experiment"] == exp
    saved = st.read_json(join(exp, "results.json"))
    assert saved["best"]["trial_id"] == best["trial_id"] and len(saved["trials"]) == 2
    rows = list(csv.DictReader(io.StringIO(st.read_text(join(exp, "results.csv")))))
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in trials]
    assert float(rows[0]["fid"]) == pytest.approx(best["fid"])
    for r, t in zip(rows, trials):  # KID of the same last evaluation, and the trial's wall time, beside FID
        assert math.isfinite(float(r["kid"])) and float(r["kid"]) == pytest.approx(t["kid"])
        assert float(r["time_total_s"]) > 0
    best_cfg = load_config(join(exp, "best_config.yaml"))
    assert best_cfg.train.g_lr == best["params"]["train.g_lr"] and best_cfg.train.run_name == "lr2-best"
    for t in trials:  # each trial's training run lives below the experiment
        assert st.exists(join(exp, "runs", t["trial_id"], "history.json"))

    # same name again: refused without --resume (nothing touched); --resume re-reads the finished sweep
    assert cli_main(["tune", str(sweep), "--root", faces_root]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["tune", str(sweep), "--root", faces_root, "--resume"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["best"]["trial_id"] == best["trial_id"] and again["best"]["fid"] == best["fid"]


def test_asha_scheduler_uses_images_seen():
    from ray.tune.schedulers import ASHAScheduler

    from facegen_ray.tune.runner import _scheduler

    s = load_sweep(Path(__file__).resolve().parents[1] / "tune_configs" / "utkface-64-ttur-lr.yaml")
    sched = _scheduler(s)
    assert isinstance(sched, ASHAScheduler)
    assert sched._time_attr == "images_seen" and sched._max_t == 3_000_000
    assert sched._reduction_factor == 2 and sorted(m for m, _ in sched._brackets[0]._rungs) == [
        400_000,
        800_000,
        1_600_000,
    ]
    assert _scheduler(load_sweep(Path(__file__).resolve().parents[1] / "tune_configs" / "quickstart-cpu.yaml")) is None


@pytest.mark.slow
def test_asha_stops_the_worse_trial_at_a_rung(faces_root, tmp_path, capsys):
    """Two trials one after the other, FID every 48 images up to 144, ASHA with grace 48 and
    reduction factor 2: rungs at 48 and 96. The first trial always continues (one value per
    rung is fewer than the reduction factor); the second is stopped at the first rung where its
    FID is worse than the first trial's there (the median of two), else it finishes. The
    outcome is predicted from the trials' own reported FIDs and must match what happened."""
    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        name="asha2",
        max_concurrent_trials=1,
        overrides={"train.total_images": 144},
        scheduler={"type": "asha", "grace_period_images": 48, "reduction_factor": 2},
    )
    rc = cli_main(["tune", str(sweep), "--root", faces_root])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    by_lr = {t["params"]["train.g_lr"]: t for t in summary["trials"]}
    first, second = by_lr[0.0005], by_lr[0.004]  # grid order = submission order, one at a time
    assert first["status"] == "finished" and [e["images_seen"] for e in first["evals"]] == [48, 96, 144]
    fid1 = {e["images_seen"]: e["fid"] for e in first["evals"]}
    fid2 = {e["images_seen"]: e["fid"] for e in second["evals"]}
    expected_stop = next((rung for rung in (48, 96) if fid2[rung] > fid1[rung]), None)
    if expected_stop is None:
        assert second["status"] == "finished" and second["images_seen"] == 144
    else:
        assert second["status"] == "stopped" and second["images_seen"] == expected_stop
        assert max(fid2) == expected_stop  # no evaluation after the stop
    assert summary["num_stopped"] == (expected_stop is not None)
    print(f"asha: first {fid1}, second {fid2}, stopped at {expected_stop}")
    # every placement group the sweep made is gone: the first trial ran to max_t (Ray's ASHA used to
    # stop it on that report, and its run's worker group stayed reserved), a stopped second trial's
    # group is removed by the driver (tune/placement.py)
    from ray.util.placement_group import placement_group_table

    left = {k: v["bundles"] for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
    assert not left, f"placement groups still reserved after the sweep: {left}"
    if expected_stop is not None:
        assert "removed the placement group its ended run left" in out


@pytest.mark.slow  # ~2 min in CI; S3 storage is covered in the default run by test_train/test_retrain/test_data
def test_sweep_on_s3(s3_server, s3_root, s3_storage, sample_zip, tmp_path, capsys):
    """storage.root = s3:// (moto): the data is read from the bucket, the trial's Ray Train run,
    its checkpoints and the sweep's results are written there, and --resume reads them back."""
    data = Layout(s3_root).dataset("faces")
    s3_set = ["--set", f"storage.endpoint_url={s3_server}", "--set", "storage.region=us-east-1"]
    assert cli_main(["prepare", str(sample_zip), data, "--resolution", "8", "--limit", "48", *s3_set]) == 0
    capsys.readouterr()
    sweep = write_sweep(tmp_path / "sweep.yaml", name="s3sweep", search_space={"train.g_lr": {"grid": [0.002]}})
    rc = cli_main(["tune", str(sweep), "--root", s3_root, *s3_set])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    exp = Layout(s3_root).tune("s3sweep")
    assert summary["experiment"] == exp and summary["num_finished"] == 1 and summary["num_errors"] == 0
    (trial,) = summary["trials"]
    assert math.isfinite(trial["fid"]) and [e["images_seen"] for e in trial["evals"]] == [48, 96]
    assert trial["checkpoint"].startswith(exp + "/runs/") and s3_storage.exists(join(trial["checkpoint"], "meta.json"))
    saved = s3_storage.read_json(join(exp, "results.json"))
    assert saved["best"]["trial_id"] == trial["trial_id"] and saved["best"]["fid"] == trial["fid"]
    assert s3_storage.exists(join(exp, "results.csv")) and s3_storage.exists(join(exp, "best_config.yaml"))
    assert cli_main(["tune", str(sweep), "--root", s3_root, *s3_set, "--resume"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["best"]["trial_id"] == trial["trial_id"] and again["best"]["fid"] == trial["fid"]


@pytest.mark.slow  # ~2 min: a sweep killed with its driver, then --resume
def test_sweep_resumes_after_its_driver_is_killed(faces_root, tmp_path):
    """The machine running a sweep stops: `facegen tune` (driver, Tune, its own Ray) is killed
    with SIGKILL once the first trial has checkpoints and Tune has saved the experiment. Then
    `facegen tune --resume` finishes it: every trial ends at its total, and the interrupted trial
    continues from a checkpoint rather than from zero: its evaluation points never repeat (a
    restart would report the early points again)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        name="killed",
        max_concurrent_trials=1,
        overrides={"train.total_images": 480, "train.checkpoint_every_images": 48},
        eval={"num_gen": 16, "num_real": 16, "every_images": 96, "batch_size": 16},
    )
    exp = Path(Layout(faces_root).tune("killed"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, like a separate machine
    proc = subprocess.Popen(
        [sys.executable, "-m", "facegen_ray.cli", "tune", str(sweep), "--root", faces_root],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "first.log", "w"),  # noqa: SIM115 - closed with the process
    )
    before: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            before = sorted(p.name for p in exp.glob("runs/*/checkpoint-*"))
            if len(before) >= 2 and list(exp.glob("experiment_state*.json")):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (
            f"the sweep ended before it could be killed: {(tmp_path / 'first.log').read_text()[-2000:]}"
        )
        assert len(before) >= 2, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (exp / "results.json").exists()  # it did not finish

    assert cli_main(["tune", str(sweep), "--root", faces_root, "--resume"]) == 0
    summary = Storage().read_json(join(str(exp), "results.json"))
    assert summary["num_trials"] == 2 and summary["num_finished"] == 2 and summary["num_errors"] == 0
    for t in summary["trials"]:
        seen = [e["images_seen"] for e in t["evals"]]
        assert t["images_seen"] == 480 and seen[-1] == 480
        assert seen == sorted(set(seen)), f"trial {t['trial_id']} repeated evaluation points: {seen}"
    print(
        f"killed with checkpoints {before}; resumed trials: {[[e['images_seen'] for e in t['evals']] for t in summary['trials']]}"
    )
