"""GAN objectives, selectable by name (LossConfig.name), with their regularisers.

    loss = build_loss(cfg.loss)
    for _ in range(loss.n_critic):                # D steps per G step
        l, stats = loss.d_loss(D, real, fake.detach(), c, weight=w); l.backward(); opt_d.step()
        r, stats = loss.d_reg(D, real, c, step=d_step, weight=w)  # lazy R1, None when not due
        loss.after_d_step(D)                                  # WGAN weight clipping
    l, stats = loss.g_loss(D, G(z, c), c); l.backward(); opt_g.step()
    r, stats = loss.g_reg(G, z, c, step=g_step)               # path length, None when not due

Objectives (r = D(real), f = D(fake) logits; t = 1 - label_smoothing, the real target):

    minimax        D: BCE(r, t) + BCE(f, 0)             G: log(1 - sigmoid(f)) = -softplus(f)
    nonsaturating  D: as minimax (+ lazy R1)            G: softplus(-f) = -log sigmoid(f)
    wgan           D: f - r, applied weights in [-c, c] G: -f
    wgan-gp        D: f - r + gp_lambda (||grad D(x_hat)|| - 1)^2 + drift_epsilon r^2     G: -f
    lsgan          D: ls_lambda/2 ((r - t)^2 + f^2)     G: ls_lambda/2 (f - 1)^2

Instance noise (N(0, instance_noise^2)) is added to every D input in d_loss and g_loss.
R1 (nonsaturating): gamma/2 * ||grad_x D(x)||^2 on reals, every r1_interval D steps, scaled by
r1_interval (lazy regularisation); gamma 'auto' = 0.0002 res^2 / global batch at each stage. Path length (any objective, pl_weight > 0): every
pl_interval G steps on 1/pl_batch_shrink of the batch, pl_weight * pl_interval * (||J_w^T y|| - a)^2
with a running mean a kept
in this object (state_dict / load_state_dict for checkpoints). Gradient penalties are
computed in float32 with autocast disabled. Averages are over the batch; with `weight` (the
real rows' dataset weights: --balance reweight, merged feedback) the expectations over reals —
the real term, R1, the WGAN-GP drift — are weighted means sum(w x) / sum(w). Given as
`RowWeights` (what training passes), the denominator is the global batch's weight sum over
the number of workers, so the gradient averaged over DDP workers is that of one weighted mean
over all workers' reals, not a mean of per-worker means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facegen_ray.config import LossConfig
from facegen_ray.models.ema import unwrap
from facegen_ray.models.layers import runtime_gains

PL_DECAY = 0.01  # running mean of path lengths: a <- a + 0.01 (mean - a)


_unwrap = unwrap


def _call_d(D: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    out = D(x) if c is None else D(x, c)
    return out.reshape(out.shape[0])  # [N]


def call_d_pair(
    D: nn.Module, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(real), D(fake)) as logits [N] each. A discriminator that keeps joined batches apart
    (`accepts_parts`: ours, plain or augmented, under DDP or torch.compile) scores both in one
    call of 2N: the same logits, one larger batch instead of two, which costs less than two
    calls (docs/performance.md)."""
    if real.shape != fake.shape or not getattr(unwrap(D), "accepts_parts", False):
        return _call_d(D, real, c), _call_d(D, fake, c)
    x = torch.cat([real, fake.to(real.dtype)])
    if c is not None and c.dim() == 2 and c.shape[0] == real.shape[0]:
        c = torch.cat([c, c])
    out = D(x, c, parts=2)
    return out.reshape(x.shape[0]).chunk(2)


@dataclass(frozen=True)
class RowWeights:
    """The real rows' weights w [n] on this worker, with the denominator of their weighted mean.

    With W data-parallel workers whose gradients are averaged, denom = (sum of w over every
    worker's batch) / W makes the averaged gradient of sum_k(w x) / denom equal to that of one
    weighted mean over the global batch. On one worker, denom = sum(w)."""

    w: torch.Tensor
    denom: torch.Tensor  # scalar


def wmean(x: torch.Tensor, weight: torch.Tensor | RowWeights | None) -> torch.Tensor:
    """Mean of the per-row values x [N], weighted by the dataset rows' `weight` [N] when given:
    sum(w x) / sum(w) for a tensor (row weights re-balance the real batch, their scale does
    not matter), sum(w x) / denom for RowWeights (the global-batch denominator under DDP)."""
    if weight is None:
        return x.mean()
    if isinstance(weight, RowWeights):
        w = weight.w.to(device=x.device, dtype=x.dtype)
        return (x * w).sum() / weight.denom.to(device=x.device, dtype=x.dtype).clamp_min(1e-12)
    w = weight.to(device=x.device, dtype=x.dtype)
    return (x * w).sum() / w.sum().clamp_min(1e-12)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class GANLoss:
    """Shared machinery; subclasses define the objective (`_d_objective`, `_g_objective`)."""

    name = "base"

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg
        self.n_critic = cfg.critic_steps
        self.real_target = 1.0 - cfg.label_smoothing
        self.pl_mean = torch.zeros(())  # running mean path length (moved to the device on use)

    # ---- helpers
    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.instance_noise > 0:
            return x + torch.randn_like(x) * self.cfg.instance_noise
        return x

    def _d_objective(
        self, r: torch.Tensor, f: torch.Tensor, w: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """D's objective from real logits r [N] (rows weighted by w [N] when given) and fake f [N]."""
        raise NotImplementedError

    def _g_objective(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- discriminator
    def d_loss(
        self,
        D: nn.Module,
        real: torch.Tensor,
        fake: torch.Tensor,
        c: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """D's loss on a real and a (detached) fake batch; returns (scalar, stats). weight [N]:
        the real rows' dataset weights (expectations over reals become weighted means)."""
        r, f = call_d_pair(D, self._noisy(real), self._noisy(fake.detach()), c)
        r, f = r.float(), f.float()  # [N] each
        loss, extra = self._d_objective(r, f, weight)
        stats = {"d_loss": float(loss.detach()), "d_real": float(r.detach().mean()), "d_fake": float(f.detach().mean())}
        stats.update(extra)
        return loss, stats

    def d_reg(
        self,
        D: nn.Module,
        real: torch.Tensor,
        c: torch.Tensor | None = None,
        step: int = 0,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Lazy regulariser for D (R1 for nonsaturating); (None, {}) when none is due at `step`.
        weight [N]: the real rows' dataset weights, as in d_loss."""
        return None, {}

    def after_d_step(self, D: nn.Module) -> None:
        """Called after each D optimizer step (WGAN clips the weights here)."""

    # ---- generator
    def g_loss(
        self, D: nn.Module, fake: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """G's loss on a fake batch (not detached); returns (scalar, stats)."""
        f = _call_d(D, self._noisy(fake), c).float()  # [N]
        loss = self._g_objective(f)
        return loss, {"g_loss": float(loss.detach()), "g_fake": float(f.detach().mean())}

    def g_reg(
        self, G: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None, step: int = 0
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Path-length regularisation (StyleGAN2) every pl_interval G steps when pl_weight > 0.

        G is called as G(z, c, ws_offset=delta) with a zero delta [N,num_ws,w_dim] that requires
        grad, so d img / d ws = d img / d delta also through a DDP wrapper; the penalty pushes
        ||J_w^T y|| (y ~ N(0, I) / sqrt(H W) image-space noise) towards its running mean.
        """
        if self.cfg.pl_weight <= 0 or step % self.cfg.pl_interval != 0:
            return None, {}
        g = _unwrap(G)
        shrink = max(1, int(self.cfg.pl_batch_shrink))
        if shrink > 1 and z.shape[0] > 1:  # StyleGAN2: the penalty on a fraction of the batch
            keep = max(1, z.shape[0] // shrink)
            z = z[:keep]
            c = c[:keep] if c is not None and c.dim() > 1 and c.shape[0] > 1 else c
        with _no_autocast(z.device):
            delta = torch.zeros(z.shape[0], g.num_ws, g.w_dim, device=z.device, requires_grad=True)
            img = G(z, c, ws_offset=delta).float()  # [N,3,R,R]
            y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * y).sum(), delta, create_graph=True)  # [N,num_ws,w_dim]
            # mean over the ws this stage reads: the others get no gradient and would shrink the
            # length (and the penalty's effective weight) at early stages of progressive growing
            used = g.synthesis.num_used_ws() if hasattr(g, "synthesis") else g.num_ws
            lengths = grad[:, :used].float().square().sum(dim=2).mean(dim=1).sqrt()  # [N]
            batch_mean = lengths.detach().mean()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(batch_mean)
                batch_mean = batch_mean / dist.get_world_size()
            self.pl_mean = self.pl_mean.to(lengths.device)
            self.pl_mean = self.pl_mean.lerp(batch_mean, PL_DECAY)
            penalty = (lengths - self.pl_mean).square().mean()  # scalar
            # + 0 * img: every G parameter is reachable from the loss (DDP waits for all grads)
            loss = penalty * self.cfg.pl_weight * self.cfg.pl_interval + img[:, 0, 0, 0].sum() * 0
        return loss, {"pl_penalty": float(penalty.detach()), "pl_mean": float(self.pl_mean)}

    # ---- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pl_mean": float(self.pl_mean)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pl_mean = torch.tensor(float(state.get("pl_mean", 0.0)))


class MinimaxLoss(GANLoss):
    """Original GAN (Goodfellow et al.): D maximises log D(x) + log(1 - D(G(z))), G minimises
    log(1 - D(G(z)))."""

    name = "minimax"

    def _d_objective(self, r, f, w=None):
        real_loss = wmean(
            F.binary_cross_entropy_with_logits(r, torch.full_like(r, self.real_target), reduction="none"), w
        )
        fake_loss = F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
        return real_loss + fake_loss, {}

    def _g_objective(self, f):
        return -F.softplus(f).mean()  # = mean log(1 - sigmoid(f))


class NonSaturatingLoss(MinimaxLoss):
    """Non-saturating GAN: G maximises log D(G(z)); D regularised with lazy R1."""

    name = "nonsaturating"

    def _g_objective(self, f):
        return F.softplus(-f).mean()

    def d_reg(self, D, real, c=None, step: int = 0, weight=None):
        interval = self.cfg.r1_interval
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        gamma = self.cfg.r1_gamma_at(real.shape[-1], real.shape[0] * world)  # the stage's res and global batch
        if gamma <= 0 or step % interval != 0:
            return None, {}
        with _no_autocast(real.device):
            x = real.detach().float().requires_grad_(True)
            r = _call_d(D, x, c).float()
            (grad,) = torch.autograd.grad(r.sum(), x, create_graph=True)
            penalty = wmean(grad.square().flatten(1).sum(dim=1), weight)  # E ||grad_x D(x)||^2 over reals
            # + 0 * r: every D parameter is reachable from the loss (DDP waits for all grads)
            loss = penalty * (gamma / 2) * interval + r.sum() * 0
        return loss, {"r1_penalty": float(penalty.detach()), "r1_gamma": gamma}


class WGANLoss(GANLoss):
    """Wasserstein GAN (Arjovsky et al.): critic D maximises D(real) - D(fake) with its weights
    clipped to [-c, c]; G maximises D(fake)."""

    name = "wgan"

    def _d_objective(self, r, f, w=None):
        r_mean = wmean(r, w)
        return f.mean() - r_mean, {"wasserstein": float((r_mean - f.mean()).detach())}

    def _g_objective(self, f):
        return -f.mean()

    @torch.no_grad()
    def after_d_step(self, D: nn.Module) -> None:
        """Clip the weights the critic applies to [-c, c]: an equalized layer's stored weight w
        is used as w * gain (gain = 1/sqrt(fan_in)), so w is clamped to [-c/gain, c/gain]."""
        c = self.cfg.clip_value
        for p, gain in runtime_gains(_unwrap(D)):
            p.clamp_(-c / gain, c / gain)


class WGANGPLoss(WGANLoss):
    """WGAN-GP (Gulrajani et al.): gradient penalty lambda (||grad D(x_hat)|| - 1)^2 at random
    interpolates x_hat of real and fake, plus a small drift term eps * D(real)^2 (ProGAN)."""

    name = "wgan-gp"

    def after_d_step(self, D: nn.Module) -> None:  # no clipping
        return None

    def gradient_penalty(
        self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2, x_hat = real + u (fake - real)."""
        with _no_autocast(real.device):
            real, fake = real.detach().float(), fake.detach().float()
            u = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device)
            x_hat = (real + u * (fake - real)).requires_grad_(True)
            out = _call_d(D, x_hat, c).float()
            (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
            norm = (grad.square().flatten(1).sum(dim=1) + 1e-12).sqrt()  # [N]
            # + 0 * out: every D parameter is reachable from the penalty (DDP waits for all grads)
            return (norm - 1).square().mean() + out.sum() * 0

    def d_loss(self, D, real, fake, c=None, weight=None):
        real_in, fake_in = self._noisy(real), self._noisy(fake.detach())
        r, f = call_d_pair(D, real_in, fake_in, c)
        r, f = r.float(), f.float()
        wdist = wmean(r, weight) - f.mean()
        gp = self.gradient_penalty(D, real_in, fake_in, c)  # interpolates: pairs of real and fake, unweighted
        drift = wmean(r.square(), weight)
        loss = -wdist + self.cfg.gp_lambda * gp + self.cfg.drift_epsilon * drift
        stats = {
            "d_loss": float(loss.detach()),
            "d_real": float(r.detach().mean()),
            "d_fake": float(f.detach().mean()),
            "wasserstein": float(wdist.detach()),
            "gp": float(gp.detach()),
            "drift": float(drift.detach()),
        }
        return loss, stats


class LSGANLoss(GANLoss):
    """Least-squares GAN (Mao et al.): D regresses reals to t (1 - smoothing) and fakes to 0,
    G pushes fakes to 1; both scaled by ls_lambda / 2."""

    name = "lsgan"

    def _d_objective(self, r, f, w=None):
        lam = self.cfg.ls_lambda
        return lam * 0.5 * (wmean((r - self.real_target).square(), w) + f.square().mean()), {}

    def _g_objective(self, f):
        return self.cfg.ls_lambda * 0.5 * (f - 1).square().mean()


LOSSES: dict[str, type[GANLoss]] = {
    "minimax": MinimaxLoss,
    "nonsaturating": NonSaturatingLoss,
    "wgan": WGANLoss,
    "wgan-gp": WGANGPLoss,
    "lsgan": LSGANLoss,
}


def build_loss(cfg: LossConfig) -> GANLoss:
    """The loss object for cfg.name."""
    try:
        cls = LOSSES[cfg.name]
    except KeyError:
        raise ValueError(f"unknown loss {cfg.name!r}; choose one of {sorted(LOSSES)}") from None
    return cls(cfg)
