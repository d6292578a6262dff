"""Progressive schedule, checkpoint round trip and loop helpers: pure functions, no Ray."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from facegen_ray.config import FacegenConfig
from facegen_ray.train.checkpoint import capture_rng, load_checkpoint, read_meta, restore_rng, save_checkpoint
from facegen_ray.train.schedule import ProgressiveSchedule, resolution_of_stage, stage_of_resolution
from facegen_ray.train.steps import ema_beta, prepare_reals


def _cfg(**train) -> FacegenConfig:
    base = {
        "start_resolution": 4,
        "stabilize_images": 100,
        "fade_images": 50,
        "total_images": 1000,
        "batch_size": {4: 16, 8: 8, 16: 4},
    }
    base.update(train)
    return FacegenConfig.model_validate({"model": {"resolution": 16}, "train": base})


def test_stage_resolution_mapping():
    assert [stage_of_resolution(r) for r in (4, 8, 16, 64, 1024)] == [0, 1, 2, 4, 8]
    assert [resolution_of_stage(s) for s in (0, 1, 2, 4)] == [4, 8, 16, 64]


def test_schedule_stages_alpha_and_batches():
    cfg = _cfg()
    s = ProgressiveSchedule(cfg.train, cfg.model, num_workers=1)
    # stage 0: [0,100) stable; stage 1: fade [100,150) stable [150,250); stage 2: fade [250,300) then to the end
    p = s.at(0)
    assert (p.stage, p.alpha, p.resolution, p.global_batch, p.fading) == (0, 1.0, 4, 16, False)
    assert s.at(99).stage == 0
    p = s.at(100)
    assert (p.stage, p.alpha, p.resolution, p.global_batch, p.fading) == (1, 0.0, 8, 8, True)
    assert s.at(125).alpha == pytest.approx(0.5)
    p = s.at(150)
    assert (p.stage, p.alpha, p.fading) == (1, 1.0, False)
    assert s.at(249).stage == 1
    p = s.at(275)
    assert (p.stage, p.resolution, p.global_batch, p.alpha) == (2, 16, 4, pytest.approx(0.5))
    assert s.at(999).stage == 2 and s.at(999).alpha == 1.0 and not s.at(999).done
    assert s.at(1000).done and s.at(5000).done
    # alpha is monotone within a stage and always in [0,1]
    alphas = [s.at(i).alpha for i in range(100, 150)]
    assert alphas == sorted(alphas) and all(0 <= a <= 1 for a in alphas)


def test_schedule_start_resolution_and_no_fade():
    cfg = _cfg(start_resolution=8, fade_images=0)
    s = ProgressiveSchedule(cfg.train, cfg.model)
    assert s.at(0).stage == 1 and s.at(0).alpha == 1.0
    assert s.at(100).stage == 2 and s.at(100).alpha == 1.0 and not s.at(100).fading
    plan = s.describe()
    assert [d["resolution"] for d in plan] == [8, 16]
    assert plan[-1]["end_images"] == 1000


def test_schedule_splits_batch_across_workers_and_lr_scale():
    cfg = _cfg(lr_scale={16: 0.5})
    s = ProgressiveSchedule(cfg.train, cfg.model, num_workers=3)
    p = s.at(0)
    assert p.worker_batch == 5 and p.global_batch == 15  # 16 // 3 per worker
    p = s.at(400)
    assert (p.resolution, p.worker_batch, p.global_batch, p.lr_scale) == (16, 1, 3, 0.5)
    assert s.at(0).lr_scale == 1.0
    with pytest.raises(ValueError):
        s.at(-1)


def test_schedule_rejects_start_above_model():
    cfg = _cfg()
    t = cfg.train.model_copy(update={"start_resolution": 32})
    with pytest.raises(ValueError, match="start_resolution"):
        ProgressiveSchedule(t, cfg.model)


def test_rng_capture_restore_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    st = capture_rng()
    a = (torch.rand(4), np.random.rand(4), random.random())
    restore_rng(st)
    b = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_round_trip(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(5, 3)).sum().backward()
    opt.step()
    torch.manual_seed(11)
    state = {"G": m.state_dict(), "opt_g": opt.state_dict(), "counters": {"images_seen": 64, "d_steps": 4}}
    d = str(tmp_path / "ck")
    save_checkpoint(d, 0, state, {"images_seen": 64})
    save_checkpoint(d, 1, None, None)  # another rank adds only its RNG file
    expected_next = torch.rand(3)
    s2, rng0 = load_checkpoint(d, 0)
    _, rng1 = load_checkpoint(d, 1)
    _, rng5 = load_checkpoint(d, 5)
    assert rng0 is not None and rng1 is not None and rng5 is None
    assert read_meta(d)["images_seen"] == 64
    assert s2["counters"] == {"images_seen": 64, "d_steps": 4}
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(s2["G"])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    opt2 = torch.optim.Adam(m2.parameters())
    opt2.load_state_dict(s2["opt_g"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    torch.manual_seed(999)
    restore_rng(rng0)
    assert torch.equal(torch.rand(3), expected_next)


def test_incomplete_checkpoint_is_rejected(tmp_path):
    d = str(tmp_path / "ck")
    save_checkpoint(d, 1, None, None)  # no rank-0 state
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_checkpoint(d, 1)
    with pytest.raises(ValueError):
        save_checkpoint(d, 0, None, None)


def test_prepare_reals_downsamples_and_fades():
    from facegen_ray.train.schedule import SchedulePoint

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    p = SchedulePoint(0, 1, 1.0, 8, 2, 2, 1.0, False, False)
    y = prepare_reals(x, p)
    assert y.shape == (2, 3, 8, 8)
    assert torch.allclose(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())  # box filter
    p0 = SchedulePoint(0, 1, 0.0, 8, 2, 2, 1.0, True, False)
    y0 = prepare_reals(x, p0)  # alpha 0: the 4x4 image brought up with G's (bilinear) upsampling
    import torch.nn.functional as F

    from facegen_ray.models.layers import upsample2x

    low = F.avg_pool2d(x, 4)  # [2,3,4,4]: box means of 4x4 blocks
    assert torch.allclose(low[0, 0, 0, 0], x[0, 0, :4, :4].mean())
    torch.testing.assert_close(y0, upsample2x(low))


def test_ema_beta_half_life_and_rampup():
    cfg = _cfg(ema_half_life_images=1000, ema_rampup=None).train
    assert ema_beta(cfg, 10_000, 1000) == pytest.approx(0.5)
    ramp = _cfg(ema_half_life_images=1000, ema_rampup=0.05).train
    assert ema_beta(ramp, 0, 16) == 0.0  # start: copy the weights
    assert ema_beta(ramp, 10_000, 500) == pytest.approx(0.5)  # half-life min(1000, 10000*0.05=500)


def test_progress_line_and_grid():
    from facegen_ray.train.report import grid_name, image_grid, loss_curves_png, progress_line

    line = progress_line(
        {
            "images_seen": 12_345,
            "stage": 2,
            "resolution": 16,
            "alpha": 0.45,
            "d_loss": 0.62,
            "g_loss": 1.1,
            "img_per_s": 85.2,
        }
    )
    assert line == "[facegen] 12.3k img | stage 2 (16x16) α=0.45 | D 0.620 G 1.100 | 85 img/s"
    g = image_grid(torch.zeros(5, 3, 8, 8))  # 3x2 tiles enlarged to 64 px, 2 px gutters
    assert g.shape == (2 * 66 + 2, 3 * 66 + 2, 3) and g.dtype == np.uint8
    assert g[0, 0, 0] == 0 and g[10, 10, 0] == 128  # gutter black, mid-grey tile
    assert grid_name(12_345) == "grid-00012.345.png" and grid_name(5) < grid_name(64) < grid_name(12_345)
    png = loss_curves_png(
        [
            {
                "images_seen": i * 32,
                "stage": i // 3,
                "resolution": 4 * 2 ** (i // 3),
                "d_loss": 1.0,
                "g_loss": 0.5,
                "img_per_s": 10.0,
            }
            for i in range(6)
        ]
    )
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
