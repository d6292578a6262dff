"""The GAN step: G, D, G_ema, the loss, both optimisers, and one D / G update each
(`GANSteps`), plus what the step needs from a batch: reals at the stage's resolution
(`prepare_reals`), the rows' dataset weights (`row_weights`), attributes, the EMA decay and
the sample grid's fixed latents.

Used by the Ray Train worker (facegen_ray.train.loop) and by benchmarks/train.py (same code,
no Ray). No Ray import here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from facegen_ray.config import FacegenConfig
from facegen_ray.losses import RowWeights, build_loss
from facegen_ray.models import Discriminator, Generator
from facegen_ray.models.augment import AugmentedDiscriminator
from facegen_ray.models.conditioning import encode_attributes
from facegen_ray.models.ema import update_ema
from facegen_ray.models.layers import downsample2x, upsample2x
from facegen_ray.train.distributed import allreduce_grads, average_buffers, broadcast_module, world_size
from facegen_ray.train.schedule import SchedulePoint


def row_weights(batch: dict[str, torch.Tensor], enabled: bool, device: torch.device) -> RowWeights | None:
    """The batch's `weight` column [n] for the D loss, or None when disabled, absent or all 1
    over the global batch (the unweighted path: plain means, bit-identical to datasets without
    weights).

    Under DDP every worker calls this each D step (one small all-reduce of [sum w, #w != 1,
    #invalid]): the denominator is the global weight sum / world size (see RowWeights), the
    fast path is taken by all workers or none, and invalid weights fail on every worker."""
    w = batch.get("weight")
    if not enabled or w is None:
        return None
    world = world_size()
    # the checks read their values on the host: on one worker they are computed from the loader's
    # CPU tensor (no GPU sync per D step); under DDP the stats are all-reduced where the process
    # group lives (NCCL: the GPU), which costs one small sync
    w_host = w.to(dtype=torch.float32)
    w_dev = w_host.to(device=device, non_blocking=True)
    src = w_host if world == 1 else w_dev
    invalid = (~torch.isfinite(src)) | (src < 0)
    stats = torch.stack(
        [
            torch.where(invalid, torch.zeros_like(src), src).sum(),
            (src != 1).sum().float(),
            invalid.sum().float(),
        ]
    )
    if world > 1:
        dist.all_reduce(stats)
    total, not_one, n_invalid = stats.tolist()
    if n_invalid > 0 or not total > 0:
        raise ValueError("dataset rows have invalid weights (negative, NaN/inf or all zero in a batch)")
    if not_one == 0:
        return None
    denom = w_dev.sum() if world == 1 else stats[0] / world  # on the device, no host round trip
    return RowWeights(w_dev, denom)


def prepare_reals(images: torch.Tensor, point: SchedulePoint) -> torch.Tensor:
    """Reals [N,3,R0,R0] at the loader's resolution -> [N,3,R,R] at the stage resolution.

    Downsampling is a box filter (average pooling, antialiased for power-of-two factors).
    While a block fades in, reals are blended with their half-resolution version brought back
    up with `upsample2x`, the operator G's fade path applies to the previous stage's output,
    so at any alpha reals and fakes differ in content only, never in the upsampling filter
    (ProGAN's fade-in; a different filter would hand D a free cue)."""
    r0 = images.shape[-1]
    x = images
    if r0 > point.resolution:
        x = F.avg_pool2d(x, r0 // point.resolution)
    if point.fading and point.alpha < 1.0:
        low = upsample2x(downsample2x(x))
        x = torch.lerp(low, x, point.alpha)
    return x


def mirror_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x-flip each image [N,3,H,W] with probability 1/2 (StyleGAN's --mirror augmentation).
    Draws N uniforms from `generator` (default: torch's global CPU RNG, which checkpoints
    restore, so a resumed run flips the same rows)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5  # [N]
    if not bool(flip.any()):
        return images
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def ema_beta(cfg_train, images_seen: int, global_batch: int) -> float:
    """Per-step EMA decay from a half-life in images, with StyleGAN2's ramp-up."""
    half_life = float(cfg_train.ema_half_life_images)
    if cfg_train.ema_rampup is not None and cfg_train.ema_rampup > 0:
        half_life = min(half_life, images_seen * cfg_train.ema_rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (global_batch / half_life)


def fixed_latents(cfg: FacegenConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample grid's latents (and attributes, if conditional): same for the whole run."""
    n = cfg.train.sample_grid
    g = torch.Generator().manual_seed(cfg.train.seed + 7919)
    z = torch.randn(n, cfg.model.z_dim, generator=g)
    c = None
    if cfg.model.conditional:
        i = torch.arange(n)
        c = torch.stack([i % len(cfg.model.age_buckets), i % 2, i % 5], dim=1).long().to(device)
    return z.to(device), c


def batch_attributes(batch: dict[str, torch.Tensor], cfg: FacegenConfig, device) -> torch.Tensor | None:
    if not cfg.model.conditional:
        return None
    return encode_attributes(batch["age"], batch["gender"], batch["race"], cfg.model).to(device)


class GANSteps:
    """G, D, G_ema, the loss, both optimisers and AMP scalers, and one D / G step each.

    Used by the Ray Train worker below and by benchmarks/train.py (same code, no Ray)."""

    def __init__(self, cfg: FacegenConfig, device: torch.device, world: int = 1):
        tcfg = cfg.train
        self.cfg, self.device, self.world = cfg, device, world
        self.on_gpu = device.type == "cuda"
        self.amp = bool(tcfg.amp and self.on_gpu)
        self.channels_last = bool(tcfg.channels_last and self.on_gpu)
        torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
        self.G = Generator(cfg.model).to(device)
        self.D = Discriminator(cfg.model).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.loss = build_loss(cfg.loss)
        self.n_critic = int(self.loss.n_critic)
        betas = tuple(tcfg.betas)
        # fused: one kernel over all parameters instead of one small kernel per tensor (the
        # same update, in a fraction of the time; docs/performance.md)
        fused = device.type in ("cpu", "cuda")
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tcfg.g_lr, betas=betas, fused=fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tcfg.d_lr, betas=betas, fused=fused)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        # what D's inputs pass through: DiffAugment (train.augment) wraps D, so reals, fakes and
        # R1's reals are all augmented the same way
        self.D_aug: torch.nn.Module = self.D
        if tcfg.augment == "diffaugment":
            self.D_aug = AugmentedDiscriminator(self.D, tcfg.augment_policy)
        self.G_run, self.D_run = self.G, self.D_aug
        self._compiled = None
        if tcfg.compile:
            # compiled graphs serve the main losses only: R1 and path length need double
            # backward, which torch.compile does not support, so they run the eager modules
            # (same parameters)
            self._compiled = (torch.compile(self.G), torch.compile(self.D_aug))
        self._stage: tuple[int, float] | None = None
        self.reg_stats: dict[str, float] = {}

    # -- state
    def state_dict(self) -> dict[str, Any]:
        fn = getattr(self.loss, "state_dict", None)
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "loss": fn() if callable(fn) else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        fn = getattr(self.loss, "load_state_dict", None)
        if callable(fn) and state.get("loss"):
            fn(state["loss"])

    def sync_initial_state(self) -> None:
        """Rank 0's weights everywhere (they are equal by seeding already; this makes sure)."""
        for m in (self.G, self.D, self.G_ema):
            broadcast_module(m, self.world)

    # -- schedule
    def apply(self, point: SchedulePoint) -> None:
        if self._stage != (point.stage, point.alpha):
            for m in (self.G, self.D, self.G_ema):
                m.set_stage(point.stage, point.alpha)
            self._stage = (point.stage, point.alpha)
            # compiled graphs specialise on stage/alpha: use them only at alpha = 1 (one
            # recompile per stage), eager while a block fades in (alpha changes every step)
            if self._compiled is not None:
                self.G_run, self.D_run = self._compiled if point.alpha >= 1.0 else (self.G, self.D_aug)
        for g in self.opt_g.param_groups:
            g["lr"] = self.cfg.train.g_lr * point.lr_scale
        for g in self.opt_d.param_groups:
            g["lr"] = self.cfg.train.d_lr * point.lr_scale

    def _autocast(self):
        return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp)

    def _step(self, opt, scaler, module: torch.nn.Module, total: torch.Tensor) -> None:
        scaler.scale(total).backward()
        allreduce_grads(module, self.world, sanitize=not self.amp)
        if self.cfg.train.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.train.grad_clip)
        scaler.step(opt)
        scaler.update()

    def to_device_reals(self, images: torch.Tensor, point: SchedulePoint) -> torch.Tensor:
        """Loader images -> reals for D: x-flipped at random (train.mirror), at the stage's
        resolution and fade-in blend, on the device."""
        if self.cfg.train.mirror:
            images = mirror_batch(images)
        real = prepare_reals(images.to(self.device, non_blocking=True), point)  # [n,3,R,R]
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    # -- steps
    def d_step(
        self,
        real: torch.Tensor,
        c: torch.Tensor | None,
        d_step_index: int,
        weight: RowWeights | torch.Tensor | None = None,
    ) -> float:
        """One discriminator update on a real batch and as many fakes; lazy R1 when due.
        weight: the real rows' dataset weights (row_weights(); None: unweighted)."""
        G, D = self.G, self.D
        G.requires_grad_(False)
        D.requires_grad_(True)
        n = real.shape[0]
        z = torch.randn(n, self.cfg.model.z_dim, device=self.device)  # [n,z_dim]
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            with torch.no_grad():
                fake = self.G_run(z, c, style_mixing_prob=self.cfg.model.style_mixing_prob)
            d_loss, _ = self.loss.d_loss(self.D_run, real, fake.detach(), c, weight=weight)
        total = d_loss.float()
        # fp32, no autocast, eager D (double backward)
        reg, stats = self.loss.d_reg(self.D_aug, real, c, step=d_step_index, weight=weight)
        if reg is not None:
            total = total + reg.float()
            self.reg_stats.update({f"d_{k}": float(v) for k, v in stats.items()})
        self._step(self.opt_d, self.scaler_d, D, total)
        self.loss.after_d_step(D)
        return float(d_loss.detach())

    def g_step(self, n: int, c: torch.Tensor | None, g_step_index: int) -> float:
        """One generator update (updates w_avg); path-length regularisation when due."""
        G, D = self.G, self.D
        G.requires_grad_(True)
        D.requires_grad_(False)
        z = torch.randn(n, self.cfg.model.z_dim, device=self.device)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            fake = self.G_run(z, c, style_mixing_prob=self.cfg.model.style_mixing_prob, update_w_avg=True)
            g_loss, _ = self.loss.g_loss(self.D_run, fake, c)
        total = g_loss.float()
        reg, stats = self.loss.g_reg(G, z, c, step=g_step_index)
        if reg is not None:
            total = total + reg.float()
            self.reg_stats.update({f"g_{k}": float(v) for k, v in stats.items()})
        self._step(self.opt_g, self.scaler_g, G, total)
        average_buffers(G, self.world, "w_avg")
        pl_mean = getattr(self.loss, "pl_mean", None)
        if reg is not None and self.world > 1 and isinstance(pl_mean, torch.Tensor):
            dist.all_reduce(pl_mean)  # each rank measured its own batch: keep one running mean
            pl_mean /= self.world
        D.requires_grad_(True)
        return float(g_loss.detach())

    @torch.no_grad()
    def ema(self, images_seen: int, global_batch: int) -> None:
        update_ema(self.G_ema, self.G, ema_beta(self.cfg.train, images_seen, global_batch))

    @torch.no_grad()
    def samples(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """G_ema on fixed latents with constant noise, without touching the training RNGs."""
        with torch.random.fork_rng(devices=[self.device] if self.on_gpu else []):
            return self.G_ema(z, c, noise_mode="const")  # [N,3,R,R]
