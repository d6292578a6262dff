"""GAN objectives on toy cases whose values and gradients are computable by hand
(a linear critic D(x) = a.x + b), plus regularisers, clipping and checkpoint state."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_dict
from torch import nn

from facegen_ray.config import LossConfig, ModelConfig
from facegen_ray.losses import PL_DECAY, build_loss
from facegen_ray.models import Discriminator, Generator


class LinearD(nn.Module):
    """D(x) = a . x + b over all non-batch dims; x [N, ...] -> [N]."""

    def __init__(self, a: list[float], b: float = 0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return x.flatten(1) @ self.a + self.b


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def loss_of(name: str, **kw):
    return build_loss(LossConfig(name=name, **kw))


REAL = torch.tensor([[1.0], [2.0], [0.5]])  # [3, 1] 1-D samples
FAKE = torch.tensor([[-1.0], [0.0], [3.0]])


def grads(loss: torch.Tensor, *params: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


# ---------------------------------------------------------------- discriminator objectives


@pytest.mark.parametrize("name", ["minimax", "nonsaturating"])
def test_bce_d_loss_value_and_gradient(name):
    D = LinearD([0.7], 0.1)
    loss, stats = loss_of(name).d_loss(D, REAL, FAKE)
    r, f = 0.7 * REAL[:, 0] + 0.1, 0.7 * FAKE[:, 0] + 0.1
    expected = F.softplus(-r).mean() + F.softplus(f).mean()
    torch.testing.assert_close(loss, expected)
    ga, gb = grads(loss, D.a, D.b)
    # d/da softplus(-r) = -sigmoid(-r) x_real ; d/da softplus(f) = sigmoid(f) x_fake
    exp_a = (-torch.sigmoid(-r) * REAL[:, 0]).mean() + (torch.sigmoid(f) * FAKE[:, 0]).mean()
    exp_b = (-torch.sigmoid(-r)).mean() + torch.sigmoid(f).mean()
    torch.testing.assert_close(ga, exp_a.view(1))
    torch.testing.assert_close(gb, exp_b)
    assert stats["d_real"] == pytest.approx(r.mean().item()) and stats["d_fake"] == pytest.approx(f.mean().item())


def test_label_smoothing_moves_the_real_optimum():
    """One-sided smoothing: the real term is minimised where sigmoid(D(real)) = 1 - s (BCE) or
    D(real) = 1 - s (least squares); fakes keep target 0. D is constant (a = 0), so
    d loss / d b = (real-term slope at the optimum = 0) + (fake-term slope)."""
    s = 0.1
    # BCE: D = logit(0.9) everywhere; real part's slope sigmoid(r) - 0.9 = 0, fake part sigmoid(f) = 0.9
    D = LinearD([0.0], math.log(9.0))
    loss, _ = loss_of("minimax", label_smoothing=s).d_loss(D, REAL, FAKE)
    (gb,) = torch.autograd.grad(loss, D.b)
    torch.testing.assert_close(gb, torch.tensor(0.9))
    loss, _ = loss_of("minimax").d_loss(D, REAL, FAKE)  # unsmoothed: reals still pulled up
    (gb,) = torch.autograd.grad(loss, D.b)
    torch.testing.assert_close(gb, torch.tensor(0.9 - 0.1))
    # least squares: D = 0.9 everywhere; real part (r - 0.9) = 0, fake part f = 0.9
    D = LinearD([0.0], 0.9)
    loss, _ = loss_of("lsgan", label_smoothing=s).d_loss(D, REAL, FAKE)
    (gb,) = torch.autograd.grad(loss, D.b)
    torch.testing.assert_close(gb, torch.tensor(0.9))
    # the generator's target is not smoothed
    g, _ = loss_of("lsgan", label_smoothing=s).g_loss(D, FAKE)
    torch.testing.assert_close(g, torch.tensor(0.5 * 0.1**2))


def test_wgan_d_loss_gradient():
    D = LinearD([0.3], -0.2)
    loss, stats = loss_of("wgan").d_loss(D, REAL, FAKE)
    ga, gb = grads(loss, D.a, D.b)
    torch.testing.assert_close(ga, (FAKE.mean() - REAL.mean()).view(1))
    assert gb.item() == pytest.approx(0.0, abs=1e-7)
    assert stats["wasserstein"] == pytest.approx(0.3 * (REAL.mean() - FAKE.mean()).item(), rel=1e-5)


def test_lsgan_d_loss_value_and_gradient():
    lam = 2.0
    D = LinearD([0.5], 0.25)
    loss, _ = loss_of("lsgan", ls_lambda=lam).d_loss(D, REAL, FAKE)
    r, f = 0.5 * REAL[:, 0] + 0.25, 0.5 * FAKE[:, 0] + 0.25
    torch.testing.assert_close(loss, lam * 0.5 * ((r - 1).square().mean() + f.square().mean()))
    ga, gb = grads(loss, D.a, D.b)
    torch.testing.assert_close(gb, lam * ((r - 1).mean() + f.mean()))
    torch.testing.assert_close(ga, (lam * (((r - 1) * REAL[:, 0]).mean() + (f * FAKE[:, 0]).mean())).view(1))


# ---------------------------------------------------------------- generator objectives


def test_generator_gradients_push_fakes_up_the_critic():
    """d loss / d fake must point against a (moving a fake along a raises D); sizes by hand."""
    a = 1.5
    D = LinearD([a], 0.0)
    fake = torch.tensor([[-4.0], [0.0], [2.0]], requires_grad=True)
    f = a * fake.detach()[:, 0]
    n = fake.shape[0]
    expected = {
        "minimax": -torch.sigmoid(f) * a / n,  # d/dx -softplus(a x)
        "nonsaturating": -torch.sigmoid(-f) * a / n,  # d/dx softplus(-a x)
        "wgan": torch.full_like(f, -a / n),
        "wgan-gp": torch.full_like(f, -a / n),
        "lsgan": (f - 1) * a / n,  # d/dx 1/2 (a x - 1)^2, lambda 1
    }
    for name, exp in expected.items():
        loss, stats = loss_of(name).g_loss(D, fake)
        (g,) = torch.autograd.grad(loss, fake)
        torch.testing.assert_close(g[:, 0], exp, msg=name)
        if name != "lsgan":
            assert (g[:, 0] < 0).all(), name
        assert "g_loss" in stats


def test_nonsaturating_does_not_saturate_where_minimax_does():
    D = LinearD([1.0], 0.0)
    fake = torch.tensor([[-6.0]], requires_grad=True)  # D is confident this is fake
    (g_mm,) = torch.autograd.grad(loss_of("minimax").g_loss(D, fake)[0], fake)
    (g_ns,) = torch.autograd.grad(loss_of("nonsaturating").g_loss(D, fake)[0], fake)
    assert abs(g_mm.item()) < 0.01 < 0.99 < abs(g_ns.item())


# ---------------------------------------------------------------- regularisers


def test_wgan_gp_equals_its_definition_on_a_linear_critic():
    a = [0.6, -1.2, 2.0, 0.4]
    norm_a = math.sqrt(sum(v * v for v in a))
    D = LinearD(a, 0.3)
    real = torch.randn(5, 4)
    fake = torch.randn(5, 4)
    lam, eps = 10.0, 0.001
    L = loss_of("wgan-gp", gp_lambda=lam, drift_epsilon=eps)
    gp = L.gradient_penalty(D, real, fake)
    torch.testing.assert_close(gp, torch.tensor((norm_a - 1) ** 2))
    loss, stats = L.d_loss(D, real, fake)
    r, f = real @ D.a.detach() + 0.3, fake @ D.a.detach() + 0.3
    expected = f.mean() - r.mean() + lam * (norm_a - 1) ** 2 + eps * r.square().mean()
    torch.testing.assert_close(loss, expected)
    assert stats["gp"] == pytest.approx((norm_a - 1) ** 2, rel=1e-5)
    # d GP / d a = 2 (||a|| - 1) a / ||a||, plus the Wasserstein and drift parts
    (ga,) = torch.autograd.grad(loss, D.a)
    a_t = torch.tensor(a)
    exp = fake.mean(0) - real.mean(0) + lam * 2 * (norm_a - 1) * a_t / norm_a + eps * 2 * (r[:, None] * real).mean(0)
    torch.testing.assert_close(ga, exp, atol=1e-5, rtol=1e-5)
    # a unit-norm critic has no penalty
    D1 = LinearD([0.6, 0.8], 0.0)
    assert L.gradient_penalty(D1, torch.randn(3, 2), torch.randn(3, 2)).item() == pytest.approx(0.0, abs=1e-10)


def test_lazy_r1_value_gradient_and_schedule():
    a = [0.5, -2.0, 1.0]
    D = LinearD(a, 0.0)
    gamma, interval = 4.0, 8
    L = loss_of("nonsaturating", r1_gamma=gamma, r1_interval=interval)
    real = torch.randn(6, 3)
    reg, stats = L.d_reg(D, real, step=16)
    sq = sum(v * v for v in a)
    torch.testing.assert_close(reg, torch.tensor(gamma / 2 * sq * interval))
    assert stats["r1_penalty"] == pytest.approx(sq)
    (ga,) = torch.autograd.grad(reg, D.a)
    torch.testing.assert_close(ga, gamma * interval * torch.tensor(a))
    assert L.d_reg(D, real, step=3) == (None, {})
    assert loss_of("nonsaturating", r1_gamma=0.0).d_reg(D, real, step=0) == (None, {})
    for other in ("minimax", "wgan", "wgan-gp", "lsgan"):
        assert loss_of(other).d_reg(D, real, step=0) == (None, {})


def test_wgan_clipping_keeps_weights_in_range():
    """The weights the critic applies (stored equalized-LR weight x its runtime gain
    1/sqrt(fan_in); biases and embeddings as stored) end in [-c, c] after every D step."""
    from facegen_ray.models.layers import runtime_gains

    cfg = ModelConfig(**tiny_model_dict(8, conditional=True))
    D = Discriminator(cfg)
    c = 0.01
    L = loss_of("wgan", clip_value=c)
    opt = torch.optim.SGD(D.parameters(), lr=1.0)
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    gains = list(runtime_gains(D))
    assert len(gains) == len(list(D.parameters()))
    conv = D.blocks[1].conv0
    assert [g for p, g in gains if p is conv.weight] == [pytest.approx(1 / math.sqrt(16 * 9))]
    assert [g for p, g in gains if p is conv.bias] == [1.0]
    for _ in range(2):
        opt.zero_grad()
        L.d_loss(D, real, fake)[0].backward()
        opt.step()
        assert max((p * g).abs().max().item() for p, g in gains) > c  # the step left the box
        L.after_d_step(D)
        for p, g in gains:
            assert (p * g).abs().max().item() <= c * (1 + 1e-6)
        # applied, not stored: a 3x3 conv over 16 channels keeps stored weights up to 12 c
        assert conv.weight.abs().max().item() > c
        assert conv.weight.abs().max().item() == pytest.approx(c * math.sqrt(16 * 9))
    assert L.n_critic == 5 and loss_of("wgan", n_critic=2).n_critic == 2
    assert loss_of("nonsaturating").n_critic == 1 and loss_of("wgan-gp").n_critic == 5
    # only plain WGAN clips
    D2 = LinearD([5.0], 5.0)
    for name in ("minimax", "nonsaturating", "wgan-gp", "lsgan"):
        loss_of(name).after_d_step(D2)
    assert D2.a.item() == 5.0


def test_instance_noise_on_both_d_inputs():
    D = LinearD([1.0], 0.0)
    std = 0.5
    L = loss_of("nonsaturating", instance_noise=std)
    real = torch.zeros(20000, 1)
    fake = torch.ones(20000, 1)
    L.d_loss(D, real, fake)
    seen_real, seen_fake = D.inputs
    assert seen_real.std().item() == pytest.approx(std, rel=0.05)
    assert (seen_fake - 1).std().item() == pytest.approx(std, rel=0.05)
    D.inputs.clear()
    L.g_loss(D, fake)
    assert (D.inputs[0] - 1).std().item() == pytest.approx(std, rel=0.05)
    D.inputs.clear()
    loss_of("nonsaturating").d_loss(D, real, fake)
    assert torch.equal(D.inputs[0], real) and torch.equal(D.inputs[1], fake)


# ---------------------------------------------------------------- path length


def test_path_length_regulariser_matches_definition_and_checkpoints():
    cfg = ModelConfig(**tiny_model_dict(8))
    G = Generator(cfg)
    z = torch.randn(4, cfg.z_dim)
    w, interval = 2.0, 4
    L = loss_of("nonsaturating", pl_weight=w, pl_interval=interval, pl_batch_shrink=1)  # whole batch: the definition
    assert L.g_reg(G, z, step=1) == (None, {})
    assert loss_of("nonsaturating").g_reg(G, z, step=0) == (None, {})

    torch.manual_seed(7)
    reg, stats = L.g_reg(G, z, step=8)
    torch.manual_seed(7)
    img, ws = G(z, return_ws=True)
    y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (g,) = torch.autograd.grad((img * y).sum(), ws)
    lengths = g.square().sum(2).mean(1).sqrt()
    pl_mean = PL_DECAY * lengths.mean()
    torch.testing.assert_close(torch.tensor(stats["pl_mean"]), pl_mean)
    torch.testing.assert_close(reg.detach(), (lengths - pl_mean).square().mean() * w * interval)
    reg.backward()
    assert G.mapping.layers[0].weight.grad is not None and torch.isfinite(G.mapping.layers[0].weight.grad).all()

    state = L.state_dict()
    L2 = loss_of("nonsaturating", pl_weight=w, pl_interval=interval)
    L2.load_state_dict(state)
    assert L2.state_dict()["pl_mean"] == pytest.approx(state["pl_mean"]) and state["pl_mean"] > 0


# ---------------------------------------------------------------- with the real models


@pytest.mark.parametrize("name", ["minimax", "nonsaturating", "wgan", "wgan-gp", "lsgan"])
def test_every_loss_trains_real_models_in_float32_and_autocast(name):
    cfg = ModelConfig(**tiny_model_dict(8, conditional=True))
    G, D = Generator(cfg), Discriminator(cfg)
    G.set_stage(1, 0.5)
    D.set_stage(1, 0.5)
    L = loss_of(name, pl_weight=1.0, pl_interval=1, r1_interval=1, instance_noise=0.05, label_smoothing=0.1)
    z = torch.randn(4, cfg.z_dim)
    c = torch.tensor([[0, 1, 2], [-1, 0, 4], [3, -1, -1], [7, 1, 0]])
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fake = G(z, c, style_mixing_prob=0.9, update_w_avg=True)
            d, ds = L.d_loss(D, real, fake.detach(), c)
            r, rs = L.d_reg(D, real, c, step=0)
            g, gs = L.g_loss(D, fake, c)
            p, ps = L.g_reg(G, z, c, step=0)
        total_d = d + (r if r is not None else 0)
        total_d.backward()
        L.after_d_step(D)
        (g + p).backward()
        for stats in (ds, rs, gs, ps):
            assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
        assert all(torch.isfinite(q.grad).all() for q in G.parameters() if q.grad is not None)
        assert (r is not None) == (name == "nonsaturating")


def test_losses_and_regularisers_work_through_ddp(tmp_path):
    """Single-process gloo group: every loss term backpropagates through DDP-wrapped G and D
    (find_unused_parameters=True, needed anyway: inactive stages' layers get no grads)."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.FileStore(os.fspath(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        cfg = ModelConfig(**tiny_model_dict(8, conditional=True))
        G, D = Generator(cfg), Discriminator(cfg)
        G.set_stage(1, 0.5)
        D.set_stage(1, 0.5)
        Gd, Dd = DDP(G, find_unused_parameters=True), DDP(D, find_unused_parameters=True)
        c = torch.tensor([[0, 1, 2]]).repeat(4, 1)
        for name in ("nonsaturating", "wgan-gp"):
            L = loss_of(name, pl_weight=2.0, r1_interval=1, pl_interval=1)
            for _ in range(2):
                z, real = torch.randn(4, cfg.z_dim), torch.randn(4, 3, 8, 8)
                with torch.no_grad():
                    fake = Gd(z, c)
                L.d_loss(Dd, real, fake, c)[0].backward()
                r, _ = L.d_reg(Dd, real, c, step=0)
                if r is not None:
                    r.backward()
                L.g_loss(Dd, Gd(z, c), c)[0].backward()
                p, stats = L.g_reg(Gd, z, c, step=0)
                p.backward()
                assert stats["pl_mean"] > 0
        assert all(torch.isfinite(q.grad).all() for q in G.parameters() if q.grad is not None)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- row weights


class QuadD(nn.Module):
    """D(x) = a . x^2 + b . x: a non-constant input gradient, so R1 differs per row."""

    def __init__(self, a: list[float], b: list[float]):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = x.flatten(1)
        return x.square() @ self.a + x @ self.b


WEIGHTS = torch.tensor([3.0, 1.0, 2.0])


def _repeated(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(x, w.long(), dim=0)


@pytest.mark.parametrize("name", ["minimax", "nonsaturating", "wgan", "lsgan"])
def test_integer_row_weights_equal_repeating_the_reals(name):
    """Weighting real rows by w is the same objective (value and gradient) as repeating each
    real row w times; scaling every weight leaves it unchanged; all-ones equals no weights."""
    D = QuadD([0.3], [0.7])
    L = loss_of(name, ls_lambda=1.5)
    weighted, stats = L.d_loss(D, REAL, FAKE, weight=WEIGHTS)
    repeated, stats_rep = L.d_loss(D, _repeated(REAL, WEIGHTS), FAKE)
    torch.testing.assert_close(weighted, repeated)
    torch.testing.assert_close(grads(weighted, D.a, D.b), grads(repeated, D.a, D.b))
    torch.testing.assert_close(L.d_loss(D, REAL, FAKE, weight=WEIGHTS * 7.5)[0], repeated)
    torch.testing.assert_close(L.d_loss(D, REAL, FAKE, weight=torch.ones(3))[0], L.d_loss(D, REAL, FAKE)[0])
    assert not torch.allclose(weighted, L.d_loss(D, REAL, FAKE)[0])  # the weights do change it


def test_row_weights_in_wgan_gp_and_r1():
    """WGAN-GP: the Wasserstein estimate and the drift term are weighted means over reals (the
    penalty at real/fake interpolates is not); R1 is the weighted mean of per-row penalties."""
    D = QuadD([0.4, -0.2], [0.1, 0.5])
    real, fake = torch.randn(3, 2), torch.randn(3, 2)
    L = loss_of("wgan-gp", gp_lambda=0.0, drift_epsilon=0.01)
    loss, stats = L.d_loss(D, real, fake, weight=WEIGHTS)
    r, f = D(real).detach(), D(fake).detach()
    w = WEIGHTS / WEIGHTS.sum()
    assert stats["wasserstein"] == pytest.approx(float((w * r).sum() - f.mean()), rel=1e-5)
    torch.testing.assert_close(loss, f.mean() - (w * r).sum() + 0.01 * (w * r.square()).sum())
    R1 = loss_of("nonsaturating", r1_gamma=2.0, r1_interval=1)
    reg_w, _ = R1.d_reg(D, real, step=0, weight=WEIGHTS)
    reg_rep, _ = R1.d_reg(D, _repeated(real, WEIGHTS), step=0)
    torch.testing.assert_close(reg_w, reg_rep)
    assert not torch.allclose(reg_w, R1.d_reg(D, real, step=0)[0])


def test_training_loop_row_weights_from_the_batch():
    from facegen_ray.data.feeder import DATA_COLUMNS
    from facegen_ray.train.steps import row_weights

    assert "weight" in DATA_COLUMNS
    cpu = torch.device("cpu")
    assert row_weights({"weight": torch.ones(4)}, True, cpu) is None  # unweighted fast path
    assert row_weights({"image": torch.zeros(4)}, True, cpu) is None
    w = torch.tensor([0.5, 2.0, 1.0])
    assert row_weights({"weight": w}, False, cpu) is None  # train.row_weights=false
    rw = row_weights({"weight": w}, True, cpu)
    torch.testing.assert_close(rw.w, w)
    torch.testing.assert_close(rw.denom, w.sum())  # one worker: the plain weighted mean
    for bad in ([1.0, -1.0], [float("nan"), 1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="invalid weights"):
            row_weights({"weight": torch.tensor(bad)}, True, cpu)


# Two workers' shards of one global batch: 3 reals (with weights) and 3 fakes each.
DDP_REAL = [torch.tensor([[1.0], [2.0], [0.5]]), torch.tensor([[-0.5], [1.5], [0.2]])]
DDP_FAKE = [torch.tensor([[-1.0], [0.0], [3.0]]), torch.tensor([[0.7], [-2.0], [1.0]])]
DDP_W = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.5, 0.5, 4.0])]  # unequal sums per worker
DDP_LOSSES = {
    "minimax": {},
    "nonsaturating": {"r1_gamma": 2.0, "r1_interval": 1},
    "wgan": {},
    "wgan-gp": {"gp_lambda": 0.0, "drift_epsilon": 0.1},
    "lsgan": {"ls_lambda": 1.5},
}


def _d_grads(name: str, real, fake, weight) -> list[torch.Tensor]:
    D = QuadD([0.3], [0.7])
    L = loss_of(name, **DDP_LOSSES[name])
    total = L.d_loss(D, real, fake, weight=weight)[0]
    reg, _ = L.d_reg(D, real, step=0, weight=weight)
    if reg is not None:
        total = total + reg
    return grads(total, D.a, D.b)


def _ddp_worker(rank: int, world: int, tmp: str) -> None:
    """One of `world` gloo processes: D gradients from this worker's shard, averaged across
    workers as the training loop does (all-reduce / world), saved by rank 0."""
    import os

    import torch.distributed as dist

    from facegen_ray.train.steps import row_weights

    dist.init_process_group(
        "gloo", store=dist.FileStore(os.path.join(tmp, "store"), world), rank=rank, world_size=world
    )
    try:
        out = {}
        for name in DDP_LOSSES:
            rw = row_weights({"weight": DDP_W[rank]}, True, torch.device("cpu"))
            gs = _d_grads(name, DDP_REAL[rank], DDP_FAKE[rank], rw)
            for g in gs:
                dist.all_reduce(g)
                g /= world
            out[name] = gs
        # one worker with an invalid weight: every worker raises (none waits in a collective)
        bad = torch.tensor([1.0, -1.0, 1.0]) if rank == 1 else torch.tensor([1.0, 2.0, 1.0])
        try:
            row_weights({"weight": bad}, True, torch.device("cpu"))
            out["invalid_raised"] = False
        except ValueError:
            out["invalid_raised"] = True
        # all weights 1 on every worker: all take the unweighted path
        out["all_ones"] = row_weights({"weight": torch.ones(3)}, True, torch.device("cpu")) is None
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_row_weights_under_ddp_give_the_global_weighted_mean(tmp_path):
    """Two gloo workers with unequal weight sums: the averaged D gradient equals the gradient
    of one weighted mean over the global batch (not the mean of per-worker weighted means), for
    every objective, R1 and the WGAN-GP drift included."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    real, fake, w = torch.cat(DDP_REAL), torch.cat(DDP_FAKE), torch.cat(DDP_W)
    for name in DDP_LOSSES:
        reference = _d_grads(name, real, fake, w)
        per_worker_means = [
            (a + b) / 2 for a, b in zip(*(_d_grads(name, DDP_REAL[k], DDP_FAKE[k], DDP_W[k]) for k in range(2)))
        ]
        for r in ranks:
            for got, ref in zip(r[name], reference):
                torch.testing.assert_close(got, ref)
            assert not all(torch.allclose(g, o) for g, o in zip(r[name], per_worker_means)), name
    assert all(r["invalid_raised"] for r in ranks)
    assert all(r["all_ones"] for r in ranks)


# ---------------------------------------------------------------- reals and fakes in one D call


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("augment", [False, True])
def test_d_pair_in_one_call_equals_two_calls(conditional, augment):
    """call_d_pair scores reals and fakes as one batch of 2N: the minibatch-stddev groups stay
    within each half, so the logits and D's gradients are those of two separate calls."""
    from facegen_ray.losses import call_d_pair
    from facegen_ray.models.augment import AugmentedDiscriminator

    cfg = ModelConfig(**tiny_model_dict(16, conditional))
    D = Discriminator(cfg)
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    c = torch.tensor([[0, 1, 2], [1, 0, 3], [-1, -1, -1], [0, 0, 0]]) if conditional else None
    D_run = AugmentedDiscriminator(D, "translation") if augment else D
    calls = []
    D.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    torch.manual_seed(1)
    r, f = call_d_pair(D_run, real, fake, c)
    assert calls == [8] and r.shape == f.shape == (4,)
    g_pair = torch.autograd.grad((r * 1.3 - f).sum(), list(D.parameters()), allow_unused=True)
    # two separate calls (augmentation: its translation is drawn per sample, so draw it as the
    # joined call did by seeding the same stream and cutting it into the two halves)
    from facegen_ray.losses import _call_d

    if augment:
        torch.manual_seed(1)
        both = torch.cat([real, fake])
        from facegen_ray.models.augment import diff_augment

        aug = diff_augment(both, D_run.ops)
        real, fake, D_run = aug[:4], aug[4:], D
    r2, f2 = _call_d(D_run, real, c), _call_d(D_run, fake, c)
    torch.testing.assert_close(r, r2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f, f2, atol=1e-5, rtol=1e-5)
    g_two = torch.autograd.grad((r2 * 1.3 - f2).sum(), list(D.parameters()), allow_unused=True)
    assert sum(g is not None for g in g_pair) > 10
    for a, b in zip(g_pair, g_two):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_d_pair_falls_back_to_two_calls():
    """A discriminator that does not say it keeps joined batches apart is called twice."""
    from facegen_ray.losses import call_d_pair

    D = LinearD([0.7], 0.1)
    r, f = call_d_pair(D, REAL, FAKE, None)
    assert [t.shape[0] for t in D.inputs] == [3, 3]
    torch.testing.assert_close(r, REAL.flatten() * 0.7 + 0.1)
    torch.testing.assert_close(f, FAKE.flatten() * 0.7 + 0.1)
    D.inputs.clear()
    call_d_pair(D, REAL, FAKE[:2], None)  # unequal batches: two calls too
    assert [t.shape[0] for t in D.inputs] == [3, 2]
