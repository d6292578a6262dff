"""What the StyleGAN2 review of the training code found (issue 13), each pinned by a test that
fails on the code before the fix: the fade-in operator of reals, the path-length mean over
the ws a stage uses, R1 gamma 'auto', x-flips, the skip generator, DiffAugment, and compiled
models with R1/path length."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_dict

from facegen_ray.config import FacegenConfig, LossConfig, ModelConfig
from facegen_ray.losses import PL_DECAY, build_loss
from facegen_ray.models import Discriminator, Generator
from facegen_ray.models.augment import AugmentedDiscriminator, diff_augment, parse_policy
from facegen_ray.models.layers import upsample2x
from facegen_ray.train.schedule import ProgressiveSchedule, SchedulePoint
from facegen_ray.train.steps import GANSteps, mirror_batch, prepare_reals


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _point(stage: int, alpha: float, n: int = 4) -> SchedulePoint:
    res = 4 * 2**stage
    return SchedulePoint(
        images_seen=0,
        stage=stage,
        alpha=alpha,
        resolution=res,
        global_batch=n,
        worker_batch=n,
        lr_scale=1.0,
        fading=alpha < 1.0,
        done=False,
    )


# ---------------------------------------------------------------- 1. fade-in: one operator for reals and fakes
@pytest.mark.parametrize("architecture", ["skip", "orig"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_fading_reals_go_through_the_generators_upsampling(architecture, alpha):
    """A real whose half-resolution version is exactly what G makes at the previous stage is,
    after prepare_reals at alpha = 0, exactly what G makes at the new stage at alpha = 0; at
    any alpha the low-resolution half of the blend uses the same operator."""
    G = Generator(ModelConfig(**{**tiny_model_dict(16), "architecture": architecture})).eval()
    z = torch.randn(4, G.z_dim)
    with torch.no_grad():
        G.set_stage(1, 1.0)
        low = G(z, noise_mode="const")  # [4,3,8,8]
        G.set_stage(2, 0.0)
        fake_at_0 = G(z, noise_mode="const")  # [4,3,16,16] = upsample(low)
    real = F.interpolate(low, scale_factor=2, mode="nearest")  # any image whose 2x2 box average is `low`
    out = prepare_reals(real, _point(2, alpha))
    torch.testing.assert_close(out, torch.lerp(fake_at_0, real, alpha), atol=1e-6, rtol=1e-6)
    if alpha == 0.0:
        torch.testing.assert_close(out, fake_at_0, atol=1e-6, rtol=1e-6)


def test_reals_at_alpha_one_are_box_downsampled_only():
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(prepare_reals(x, _point(2, 1.0)), F.avg_pool2d(x, 2))


# ---------------------------------------------------------------- 2. path length over the used ws
def test_path_length_averages_over_the_ws_the_stage_uses():
    cfg = ModelConfig(**tiny_model_dict(16))  # 3 stages, 6 ws
    G = Generator(cfg)
    G.set_stage(1, 1.0)  # reads ws[0:4]
    assert G.synthesis.num_used_ws() == 4 < G.num_ws
    loss = build_loss(LossConfig(name="nonsaturating", pl_weight=2.0, pl_interval=1, pl_batch_shrink=1))
    z = torch.randn(6, cfg.z_dim)
    torch.manual_seed(11)
    _, stats = loss.g_reg(G, z, None, step=0)

    torch.manual_seed(11)  # the same draws (noise, y) by hand
    delta = torch.zeros(6, G.num_ws, cfg.w_dim, requires_grad=True)
    img = G(z, None, ws_offset=delta)
    y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * y).sum(), delta)
    assert grad[:, 4:].abs().sum() == 0, "the unused ws get no gradient"
    lengths = grad[:, :4].square().sum(dim=2).mean(dim=1).sqrt()
    assert stats["pl_mean"] == pytest.approx(PL_DECAY * float(lengths.mean()), rel=1e-5)


# ---------------------------------------------------------------- 3. R1 gamma 'auto'
def test_r1_gamma_auto_is_the_default_and_follows_resolution_and_batch():
    cfg = LossConfig()
    assert cfg.r1_gamma == "auto"
    assert cfg.r1_gamma_at(32, 32) == pytest.approx(0.0002 * 32**2 / 32)
    assert cfg.r1_gamma_at(64, 64) == pytest.approx(0.0128)
    assert LossConfig(r1_gamma=10).r1_gamma_at(64, 64) == 10.0
    with pytest.raises(ValueError):
        LossConfig(r1_gamma=-1)
    with pytest.raises(ValueError):
        LossConfig(r1_gamma="sometimes")


def test_r1_penalty_uses_the_stage_gamma():
    D = Discriminator(ModelConfig(**tiny_model_dict(16)))
    D.set_stage(1, 1.0)
    real = torch.rand(8, 3, 8, 8) * 2 - 1
    auto = build_loss(LossConfig(r1_interval=4))
    fixed = build_loss(LossConfig(r1_gamma=1.0, r1_interval=4))
    la, sa = auto.d_reg(D, real, None, step=0)
    lf, sf = fixed.d_reg(D, real, None, step=0)
    assert sa["r1_gamma"] == pytest.approx(0.0002 * 64 / 8)
    assert sf["r1_penalty"] == pytest.approx(sa["r1_penalty"])
    # loss = penalty * gamma / 2 * interval
    assert float(la) == pytest.approx(sa["r1_penalty"] * sa["r1_gamma"] / 2 * 4, rel=1e-5)
    assert float(lf) == pytest.approx(sf["r1_penalty"] * 1.0 / 2 * 4, rel=1e-5)


# ---------------------------------------------------------------- 4. x-flips
def test_mirror_flips_about_half_the_rows_deterministically():
    x = torch.arange(64 * 3 * 4 * 4, dtype=torch.float32).view(64, 3, 4, 4)
    a = mirror_batch(x, torch.Generator().manual_seed(1))
    b = mirror_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    flipped = [torch.equal(a[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(a[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 <= sum(flipped) <= 48


@pytest.mark.parametrize("mirror", [True, False])
def test_training_reals_are_mirrored_only_when_configured(tmp_path, mirror):
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": str(tmp_path)},
            "model": tiny_model_dict(16),
            "train": {"start_resolution": 16, "batch_size": {16: 32}, "mirror": mirror},
        }
    )
    gan = GANSteps(cfg, torch.device("cpu"))
    x = torch.rand(32, 3, 16, 16)
    out = gan.to_device_reals(x, _point(2, 1.0, 32))
    n_flipped = sum(not torch.equal(out[i], x[i]) for i in range(32))
    assert (n_flipped > 0) == mirror


# ---------------------------------------------------------------- 5. skip generator
def test_skip_generator_sums_every_blocks_upsampled_rgb():
    cfg = ModelConfig(**{**tiny_model_dict(16), "architecture": "skip"})
    G = Generator(cfg).eval()
    z = torch.randn(3, cfg.z_dim)
    with torch.no_grad():
        ws = G.mapping(z)
        x = G.synthesis.const.unsqueeze(0).repeat(3, 1, 1, 1)
        img = None
        for blk in G.synthesis.blocks:
            x = blk(x, ws, "const")
            y = blk.rgb(x, ws)
            img = y if img is None else upsample2x(img) + y
        torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), img, atol=1e-6, rtol=1e-6)
        orig = Generator(ModelConfig(**{**tiny_model_dict(16), "architecture": "orig"})).eval()
        orig.load_state_dict(G.state_dict())  # same parameters, other wiring
        assert not torch.allclose(orig.synthesis(ws, noise_mode="const"), img)


def test_models_saved_before_architecture_load_as_orig(tmp_path):
    import json

    from facegen_ray.config import StorageConfig
    from facegen_ray.models import load_model_dir, save_model_dir
    from facegen_ray.models.export import MODEL_FILE
    from facegen_ray.storage import Storage, join

    cfg = ModelConfig(**{**tiny_model_dict(16), "architecture": "orig"})
    storage = Storage(StorageConfig(root=str(tmp_path)))
    uri = str(tmp_path / "m")
    save_model_dir(storage, uri, Generator(cfg), cfg, {})
    doc = json.loads(storage.read_text(join(uri, MODEL_FILE)))
    del doc["model"]["architecture"]  # what an export from before the option looks like
    storage.write_text(join(uri, MODEL_FILE), json.dumps(doc))
    _, loaded, _ = load_model_dir(storage, uri)
    assert loaded.architecture == "orig"


# ---------------------------------------------------------------- 6. DiffAugment
def test_diffaugment_is_differentiable_and_changes_inputs():
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, parse_policy("color,translation,cutout"))
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        parse_policy("color,rotate")


def test_translation_moves_content_and_cutout_zeroes_a_quarter():
    x = torch.ones(16, 1, 16, 16)
    t = diff_augment(x, ("translation",))
    zeros = (t == 0).flatten(1).sum(1)
    assert zeros.max() > 0 and zeros.max() <= 16 * 16 - 14 * 14 + 1  # at most 2 rows + 2 columns vacated
    c = diff_augment(x, ("cutout",))
    cut = (c == 0).flatten(1).sum(1)
    assert cut.max() == 64 and cut.min() >= 16  # an 8x8 square, clipped at the border


def test_augmented_discriminator_passes_gradients_to_the_generator(tmp_path):
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": str(tmp_path)},
            "model": tiny_model_dict(16),
            "train": {"start_resolution": 16, "batch_size": {16: 4}, "augment": "diffaugment"},
        }
    )
    gan = GANSteps(cfg, torch.device("cpu"))
    assert isinstance(gan.D_run, AugmentedDiscriminator) and gan.D_run.D is gan.D
    gan.apply(ProgressiveSchedule(cfg.train, cfg.model, 1).at(0))
    gan.d_step(gan.to_device_reals(torch.rand(4, 3, 16, 16), _point(2, 1.0)), None, 0)  # R1 through the augmentation
    assert "d_r1_penalty" in gan.reg_stats
    before = [p.detach().clone() for p in gan.G.parameters()]
    gan.g_step(4, None, 1)
    assert any(not torch.equal(b, p) for b, p in zip(before, gan.G.parameters()))


# ---------------------------------------------------------------- 7. compile + double backward
@pytest.mark.slow
def test_compiled_models_train_with_r1_and_path_length(tmp_path):
    """train.compile hands compiled G/D to the main losses only; R1 and path length (double
    backward, which torch.compile does not support) run the eager modules."""
    cfg = FacegenConfig.model_validate(
        {
            "storage": {"root": str(tmp_path)},
            "model": tiny_model_dict(8),
            "loss": {"r1_interval": 1, "pl_weight": 2.0, "pl_interval": 1},
            "train": {"start_resolution": 8, "batch_size": {8: 4}, "compile": True},
        }
    )
    gan = GANSteps(cfg, torch.device("cpu"))
    point = ProgressiveSchedule(cfg.train, cfg.model, 1).at(0)
    gan.apply(point)
    assert gan.D_run is not gan.D_aug
    for i in range(2):
        assert math.isfinite(gan.d_step(gan.to_device_reals(torch.rand(4, 3, 8, 8), point), None, i))
        assert math.isfinite(gan.g_step(4, None, i))
    assert "d_r1_penalty" in gan.reg_stats and "g_pl_penalty" in gan.reg_stats


def test_path_length_runs_on_a_fraction_of_the_batch():
    cfg = ModelConfig(**tiny_model_dict(8))
    G = Generator(cfg)
    calls = []
    orig_forward = G.forward

    def spy(z, *a, **k):
        calls.append(z.shape[0])
        return orig_forward(z, *a, **k)

    G.forward = spy
    z = torch.randn(8, cfg.z_dim)
    for shrink, expected in ((2, 4), (1, 8), (16, 1)):
        calls.clear()
        loss = build_loss(LossConfig(pl_weight=1.0, pl_interval=1, pl_batch_shrink=shrink))
        reg, _ = loss.g_reg(G, z, None, step=0)
        assert reg is not None and calls == [expected]
