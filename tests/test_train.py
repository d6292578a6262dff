"""`facegen train` on the session's local Ray instance: DDP with 2 workers, exact resume,
a killed worker, bad input. Tiny models (8x8, widths 8-32), ~100-200 images per run.

The dataset is made by the real `facegen prepare` from the bundled UTKFace sample.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from facegen_ray.cli import main as cli_main
from facegen_ray.config import FacegenConfig
from facegen_ray.data.shards import read_manifest
from facegen_ray.storage import Layout, Storage, join
from tests.conftest import tiny_model_dict

RUN_PARAMS = {
    "start_resolution": 4,
    "stabilize_images": 48,
    "fade_images": 32,
    "total_images": 160,
    "batch_size": {4: 16, 8: 16},
    "checkpoint_every_images": 64,
    "log_every_images": 32,
    "keep_checkpoints": 2,
    "shuffle_buffer": 16,
    "ema_half_life_images": 200,
    "max_failures": 0,
    "seed": 7,
    "amp": False,
}


def make_cfg(root: str, run_name: str, **train) -> FacegenConfig:
    t = {**RUN_PARAMS, "run_name": run_name, **train}
    return FacegenConfig.model_validate(
        {
            "storage": {"root": root},
            "model": tiny_model_dict(8),
            "loss": {"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 4},
            "train": t,
        }
    )


@pytest.fixture(scope="module")
def faces_root(ray_session, sample_zip, tmp_path_factory) -> str:
    """<root>/datasets/faces prepared at 16x16 from 96 sample faces (the model trains at 8x8,
    so the worker downsamples on device), reweighted by race x gender: the D losses of every
    run here (DDP, exact resume, worker replacement) take the weighted path."""
    root = str(tmp_path_factory.mktemp("train-root"))
    rc = cli_main(
        [
            "prepare",
            str(sample_zip),
            Layout(root).dataset("faces"),
            "--resolution",
            "16",
            "--limit",
            "96",
            "--balance",
            "reweight",
        ]
    )
    assert rc == 0
    weights = read_manifest(Storage(), Layout(root).dataset("faces"))["balance"]["weights"]
    assert len(set(weights.values())) > 1  # uneven groups: weights other than 1 reach training
    return root


@pytest.fixture(scope="module")
def reference_run(faces_root):
    """An uninterrupted 2-worker run: the reference the resume and fault tests compare to."""
    from facegen_ray.train.trainer import train

    cfg = make_cfg(faces_root, "ref-2w", num_workers=2)
    return cfg, train(cfg, export=True)


def _run_ckpts(root: str, run: str) -> list[str]:
    return sorted(p for p in Storage().ls(Layout(root).run(run)) if os.path.basename(p).startswith("checkpoint-"))


def test_ddp_two_workers_trains_checkpoints_and_exports(reference_run, faces_root):
    from facegen_ray.models import load_model_dir
    from facegen_ray.registry import Registry

    cfg, out = reference_run
    assert out.images_seen == 160
    # both workers stepped the same number of times and hold bit-identical weights
    assert len(out.workers) == 2 and {w["rank"] for w in out.workers} == {0, 1}
    assert all(w["d_steps"] == out.workers[0]["d_steps"] > 0 for w in out.workers)
    assert len({w["g_digest"] for w in out.workers}) == 1
    assert len({w["d_digest"] for w in out.workers}) == 1
    assert len({w["g_ema_digest"] for w in out.workers}) == 1
    # each worker read its own half (<= 48 rows) of the <= 96 images: 80 rows each means >= 1 epoch rolled over
    assert all(w["data_position"]["epoch"] >= 1 for w in out.workers)
    # progression reached the 8x8 stage, and the loss was finite throughout
    assert out.history[-1]["resolution"] == 8
    assert all(torch.isfinite(torch.tensor([h["d_loss"], h["g_loss"]])).all() for h in out.history)
    # checkpoints: only the last `keep_checkpoints` are kept; each is complete
    ckpts = _run_ckpts(faces_root, "ref-2w")
    assert len(ckpts) == 2 and ckpts[-1].endswith("checkpoint-000000000160")
    for c in ckpts:
        names = set(os.listdir(c))
        assert {"state.pt", "meta.json", "rng-rank0.pt", "rng-rank1.pt"} <= names
    run = Layout(faces_root).run("ref-2w")
    assert any(p.endswith(".png") for p in Storage().ls(join(run, "samples")))
    assert Storage().exists(join(run, "loss_curves.png")) and Storage().exists(join(run, "history.json"))
    # exported and registered; loads as a model directory at 8x8
    assert out.version and Registry(Storage(), faces_root).get(out.version)["source"] == "ref-2w"
    G, mcfg, meta = load_model_dir(Storage(), out.model_uri)
    assert meta["images_seen"] == 160 and meta["run"] == "ref-2w"
    with torch.no_grad():
        img = G(torch.randn(2, mcfg.z_dim))
    assert img.shape == (2, 3, 8, 8)


def test_resume_matches_uninterrupted_run(reference_run, faces_root):
    """Run to 64 images, then re-run the same name to 160: same losses and weights as the
    uninterrupted reference (CPU, fixed seeds, order-preserving data split)."""
    from facegen_ray.train.trainer import train

    ref_cfg, ref = reference_run
    first = train(make_cfg(faces_root, "resume-2w", num_workers=2, total_images=64), export=False)
    assert first.images_seen == 64
    second = train(make_cfg(faces_root, "resume-2w", num_workers=2), export=False)
    assert second.images_seen == 160
    assert [w["g_digest"] for w in second.workers] == [w["g_digest"] for w in ref.workers]
    assert second.workers[0]["g_ema_digest"] == ref.workers[0]["g_ema_digest"]
    assert second.workers[0]["d_digest"] == ref.workers[0]["d_digest"]
    losses = lambda h: [(e["images_seen"], e["d_loss"], e["g_loss"]) for e in h]  # noqa: E731
    assert losses(second.history) == losses(ref.history)
    # the second run really resumed from the checkpoint at 64 (not from 0)
    assert all(w["started_at"] == 64 for w in second.workers)
    assert second.workers[0]["d_steps"] == ref.workers[0]["d_steps"]
    # the run's clock (counters.train_s, Tune's CPU-minutes of a resumed trial) went on from the
    # first process's, which the 64-image checkpoint holds
    before = first.workers[0]["train_s"]
    assert before > 0 and second.workers[0]["train_s"] > before
    resumed = [h for h in second.history if h["images_seen"] > 64]
    assert resumed and all(h["resumed_train_s"] == pytest.approx(before, abs=1e-3) for h in resumed)
    assert all(h["resumed_train_s"] == 0.0 for h in second.history if h["images_seen"] <= 64)


@pytest.mark.slow  # ~1.5 min in CI; restarts from checkpoints stay in the default run via the resume test
def test_killed_worker_is_replaced_and_run_finishes(reference_run, faces_root, tmp_path, monkeypatch):
    """Rank 1 os._exit()s once after the 64-image checkpoint; FailureConfig restarts the
    group from that checkpoint and the run ends where the uninterrupted one does."""
    from facegen_ray.train.faults import FAULT_ENV
    from facegen_ray.train.trainer import train

    _, ref = reference_run
    marker = tmp_path / "fault-fired"
    monkeypatch.setenv(FAULT_ENV, f"1:96:{marker}")
    out = train(make_cfg(faces_root, "fault-2w", num_workers=2, max_failures=2), export=False)
    assert marker.exists(), "the fault injection did not fire"
    assert out.images_seen == 160
    assert all(w["started_at"] == 64 for w in out.workers), "the replacement group did not resume from 64"
    assert [w["g_digest"] for w in out.workers] == [w["g_digest"] for w in ref.workers]


def test_max_minutes_stops_every_rank_at_one_log_point_and_exports(faces_root):
    """train.max_minutes: past the budget both ranks stop at the same log point (32 images),
    write the final checkpoint there and export. (Resuming from it is the ordinary resume that
    test_resume_matches_uninterrupted_run checks.)"""
    from facegen_ray.train.trainer import train

    out = train(make_cfg(faces_root, "budget-2w", num_workers=2, max_minutes=1e-6), export=True)
    assert out.images_seen == 32  # the first log point (log_every_images=32), far below total 160
    assert all(w["stopped_by_budget"] for w in out.workers) and len(out.workers) == 2
    assert [w["images_seen"] for w in out.workers] == [32, 32]
    assert out.model_uri and Storage().exists(join(out.model_uri, "generator.pt"))
    assert _run_ckpts(faces_root, "budget-2w")[-1].endswith("checkpoint-000000000032")


@pytest.mark.slow  # the CLI train path stays in the default run through the bad-input tests below
def test_cli_train_quickstart_config(faces_root, capsys):
    """The CLI path (`facegen train --config facegen_ray/configs/quickstart.yaml`) with a shorter schedule."""
    cfg_path = os.path.join(os.path.dirname(__file__), "..", "facegen_ray", "configs", "quickstart.yaml")
    rc = cli_main(
        [
            "train",
            "--config",
            cfg_path,
            "--root",
            faces_root,
            "--run-name",
            "cli-qs",
            "--set",
            "train.total_images=96",
            "--set",
            "train.checkpoint_every_images=64",
            "--set",
            "model.resolution=8",
            "--set",
            "train.stabilize_images=48",
            "--set",
            "train.fade_images=16",
            "--set",
            "model.conditional=true",  # conditional G/D on the UTKFace labels
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["images_seen"] == 96 and last["model_version"]
    assert "exported model" in out


# ------------------------------------------------------------------------- bad input
def _train_cli(root: str, *sets: str, config: str | None = None) -> list[str]:
    argv = [
        "train",
        "--root",
        root,
        "--set",
        "model.resolution=8",
        "--set",
        "model.z_dim=32",
        "--set",
        "model.w_dim=32",
        "--set",
        "model.fmap_base=128",
        "--set",
        "model.fmap_max=32",
    ]
    if config:
        argv += ["--config", config]
    for s in sets:
        argv += ["--set", s]
    return argv


def _assert_no_run(root: str, run: str = "facegen") -> None:
    run_uri = Layout(root).run(run)
    assert not _run_ckpts(root, run), f"a checkpoint was written under {run_uri}"


def test_missing_dataset_exits_2(tmp_path, capsys):
    root = str(tmp_path / "empty-root")
    assert cli_main(_train_cli(root)) == 2
    err = capsys.readouterr().err
    assert "facegen train: error:" in err and "faces" in err
    _assert_no_run(root)


def test_empty_dataset_exits_2(ray_session, tmp_path, capsys):
    root = str(tmp_path / "root")
    src = tmp_path / "junk"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"not an image")
    rc = cli_main(["prepare", str(src), Layout(root).dataset("faces"), "--resolution", "16"])
    capsys.readouterr()
    if rc == 0:  # prepare counted the bad file and wrote an empty dataset
        assert cli_main(_train_cli(root)) == 2
        err = capsys.readouterr().err
        assert "empty" in err or "no images" in err
    else:  # prepare itself refused; train must then report the dataset as missing
        assert cli_main(_train_cli(root)) == 2
        assert "facegen train: error:" in capsys.readouterr().err
    _assert_no_run(root)


def test_resolution_larger_than_dataset_exits_2(faces_root, capsys):
    assert cli_main(_train_cli(faces_root, "model.resolution=32", "train.run_name=too-big")) == 2
    err = capsys.readouterr().err
    assert "model.resolution 32" in err and "resolution 16" in err
    _assert_no_run(faces_root, "too-big")


def test_unknown_loss_exits_2(faces_root, capsys):
    assert cli_main(_train_cli(faces_root, "loss.name=hinge", "train.run_name=bad-loss")) == 2
    err = capsys.readouterr().err
    assert "loss.name" in err and "hinge" in err
    _assert_no_run(faces_root, "bad-loss")


@pytest.mark.parametrize(
    "setting,field",
    [
        ("train.num_workers=0", "train.num_workers"),
        ("train.total_images=-5", "train.total_images"),
        ("train.start_resolution=6", "train.start_resolution"),
        ("train.batch_size={8: 0}", "train.batch_size"),
    ],
)
def test_config_out_of_range_exits_2(faces_root, capsys, setting, field):
    assert cli_main(_train_cli(faces_root, setting, "train.run_name=bad-range")) == 2
    assert field in capsys.readouterr().err
    _assert_no_run(faces_root, "bad-range")


def test_unwritable_storage_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = str(blocker / "root")  # a folder below a regular file cannot be created
    assert cli_main(_train_cli(root)) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker) in err


def test_existing_run_with_other_architecture_exits_2(reference_run, faces_root, capsys):
    assert cli_main(_train_cli(faces_root, "train.run_name=ref-2w", "model.fmap_max=16")) == 2
    assert "different model" in capsys.readouterr().err
    assert _run_ckpts(faces_root, "ref-2w")  # nothing of the existing run was lost


def _s3_run(s3_server, s3_root, s3_storage, sample_zip, run: str, total: int) -> tuple[FacegenConfig, object]:
    from facegen_ray.train.trainer import train

    if not s3_storage.exists(Layout(s3_root).manifest(Layout(s3_root).dataset("faces"))):
        rc = cli_main(
            [
                "prepare",
                str(sample_zip),
                Layout(s3_root).dataset("faces"),
                "--resolution",
                "8",
                "--limit",
                "48",
                "--set",
                f"storage.endpoint_url={s3_server}",
                "--set",
                "storage.region=us-east-1",
            ]
        )
        assert rc == 0
    cfg = make_cfg(
        s3_root,
        run,
        num_workers=2,
        start_resolution=8,
        total_images=total,
        checkpoint_every_images=32,
        batch_size={8: 8},
    )
    cfg = cfg.model_copy(update={"storage": s3_storage.cfg.model_copy(update={"root": s3_root})})
    return cfg, train(cfg, s3_storage, export=True)


@pytest.mark.slow  # ~1 min in CI; S3 checkpoints are also covered by test_checkpoint_crash (moto) in the default run
def test_s3_storage_on_moto(s3_server, s3_root, s3_storage, ray_session, sample_zip):
    """storage.root = s3:// (moto): shards, checkpoints (both ranks' parts), samples, curves and
    the exported, registered model all live in the bucket."""
    from facegen_ray.registry import Registry

    cfg, out = _s3_run(s3_server, s3_root, s3_storage, sample_zip, "s3-run", 64)
    assert out.images_seen == 64
    run = Layout(s3_root).run("s3-run")
    names = [p[len(run) + 1 :] for p in s3_storage.find(run)]
    assert "checkpoint-000000000064/state.pt" in names and "checkpoint-000000000064/rng-rank1.pt" in names
    assert "checkpoint-000000000032/meta.json" in names
    assert out.checkpoint_path == join(run, "checkpoint-000000000064")  # a URI the user can pass on
    assert "loss_curves.png" in names and any(n.startswith("samples/grid-") for n in names)
    assert out.model_uri.startswith("s3://") and s3_storage.exists(join(out.model_uri, "model.json"))
    assert Registry(s3_storage, s3_root).get(out.version)["uri"] == out.model_uri


@pytest.mark.slow
def test_s3_run_resumes_from_bucket(s3_server, s3_root, s3_storage, ray_session, sample_zip):
    """A second run of the same name with a larger budget continues from the checkpoint in S3."""
    from facegen_ray.train.trainer import train

    cfg, first = _s3_run(s3_server, s3_root, s3_storage, sample_zip, "s3-resume", 32)
    again = train(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"total_images": 64})}), s3_storage, export=False
    )
    assert again.images_seen == 64 and all(w["started_at"] == 32 for w in again.workers)
