"""Training learns: a tiny StyleGAN trained for a few hundred steps on the bundled sample of
real faces gets measurably closer to them, and the test fails when a change breaks learning.

The distance is KID (unbiased polynomial-kernel MMD^2, facegen_ray.metrics.kid) on pixels:
images box-downsampled to 8x8 and flattened (192 features). Inception features would be the
standard, but extracting them for a few hundred images costs minutes on this CPU; pixel KID
sees what matters here (colour, layout, the face's light/dark structure) and an untrained G,
whose output is near-uniform grey noise, is far from the faces in it.

Margins (measured on the 2-core CPU, torch 2.13, 2026-11-27, seed 0): pixel KID 1.29 at init,
0.03 after 300 steps; a detached G stays at 1.29 exactly. The test trains 150 steps and asks for
a drop to below half of the initial value and by at least 0.1, far from both ends. That a
detached G output or a zero learning rate fails the same check is itself tested (marked slow:
it trains twice more).
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE_ZIP, tiny_model_dict

from facegen_ray.config import FacegenConfig
from facegen_ray.data.transforms import center_crop_square, decode_rgb, resize_square
from facegen_ray.metrics.kid import kernel_inception_distance
from facegen_ray.train.schedule import ProgressiveSchedule
from facegen_ray.train.steps import GANSteps

RES = 16
STEPS = 150
BATCH = 16


@pytest.fixture(scope="module")
def sample_faces() -> torch.Tensor:
    """The bundled sample's faces [N,3,16,16] in [-1, 1] (the same decode/crop/resize as prepare)."""
    imgs = []
    with zipfile.ZipFile(SAMPLE_ZIP) as z:
        for name in sorted(z.namelist()):
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            img = resize_square(center_crop_square(decode_rgb(z.read(name))), RES)
            imgs.append(np.asarray(img, dtype=np.uint8))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert len(x) >= 300
    return x


def pixel_features(x: torch.Tensor) -> np.ndarray:
    """[N,3,16,16] in [-1,1] -> [N,192]: 8x8 box-downsampled pixels."""
    return F.avg_pool2d(x.clamp(-1, 1), 2).flatten(1).double().numpy()


def pixel_kid(G: torch.nn.Module, reals: torch.Tensor, n: int = 256) -> float:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(123)
        fake = G(torch.randn(n, G.z_dim), noise_mode="const")
    return kernel_inception_distance(pixel_features(fake), pixel_features(reals), subsets=20, subset_size=200)["mean"]


def train_tiny(reals: torch.Tensor, *, seed: int = 0, break_with: str | None = None) -> tuple[float, float]:
    """(KID of G_ema at init, KID after STEPS iterations)."""
    cfg = FacegenConfig.model_validate(
        {
            "model": {**tiny_model_dict(RES), "architecture": "skip"},
            "loss": {"name": "nonsaturating", "r1_gamma": 0.05, "r1_interval": 4},
            "train": {
                "start_resolution": RES,
                "batch_size": {RES: BATCH},
                "seed": seed,
                "g_lr": 0.005,
                "d_lr": 0.005,
                "ema_half_life_images": 500,
                "total_images": 10**6,
            },
        }
    )
    gan = GANSteps(cfg, torch.device("cpu"))
    point = ProgressiveSchedule(cfg.train, cfg.model, num_workers=1).at(0)
    gan.apply(point)
    if break_with == "detached":  # G's output cut off from D's verdict: G gets no learning signal
        gan.G_run = _Detached(gan.G)
    if break_with == "zero_lr":  # (config refuses lr 0; this is what a broken schedule would do)
        for group in gan.opt_g.param_groups:
            group["lr"] = 0.0
    before = pixel_kid(gan.G_ema, reals)
    g = torch.Generator().manual_seed(seed)
    for i in range(STEPS):
        idx = torch.randint(0, len(reals), (BATCH,), generator=g)
        gan.d_step(gan.to_device_reals(reals[idx], point), None, i)
        gan.g_step(BATCH, None, i)
        gan.ema(BATCH * (i + 1), BATCH)
    after = pixel_kid(gan.G_ema, reals)
    print(f"learning check ({break_with or 'intact'}, seed {seed}): pixel KID {before:.4f} -> {after:.4f}")
    return before, after


class _Detached(torch.nn.Module):
    def __init__(self, G):
        super().__init__()
        self.G = G

    def forward(self, *args, **kwargs):
        return self.G(*args, **kwargs).detach().requires_grad_(True)


def test_training_brings_generated_faces_closer_to_the_reals(sample_faces):
    torch.manual_seed(0)
    before, after = train_tiny(sample_faces)
    assert before > 0.2, f"an untrained G should be far from the faces (KID {before:.3f})"
    assert after < 0.5 * before and before - after > 0.1, f"KID {before:.3f} -> {after:.3f}: training did not learn"


@pytest.mark.slow
@pytest.mark.parametrize("break_with", ["detached", "zero_lr"])
def test_the_learning_check_fails_when_learning_is_broken(sample_faces, break_with):
    torch.manual_seed(0)
    before, after = train_tiny(sample_faces, break_with=break_with)
    learned = after < 0.5 * before and before - after > 0.1
    assert not learned, f"{break_with}: KID {before:.3f} -> {after:.3f} passed the learning check"
