"""The per-worker training function Ray Train runs on every worker (`train_loop_per_worker`).

One iteration = `loss.n_critic` discriminator steps (each on a fresh real batch from this
worker's dataset shard) + one generator step; `images_seen` counts real images shown to D,
summed over workers. The progressive schedule (schedule.py) is a pure function of
`images_seen`, so all workers agree on stage/alpha/batch without talking.

Data parallelism: gradients are averaged across workers with one flat all-reduce per step
(gloo on CPU, NCCL on GPU). This is what DDP does, done by hand because R1 and path-length
regularisation need double backward, which the DDP wrapper does not support; parameters
start identical (broadcast from rank 0) and so stay identical.

Determinism (what makes resume bit-exact on CPU): the model is initialised from
`train.seed`; each worker then seeds its own RNGs with `seed + rank` (latents, noise,
style mixing); the dataset shard is split with `preserve_order`, shuffled per epoch by a local
shuffle buffer seeded from (seed, epoch, rank), and the data position (epoch, rows consumed)
is part of the checkpoint: a resumed worker replays its epoch and skips the rows already seen.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import time
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from facegen_ray.config import FacegenConfig
from facegen_ray.losses import RowWeights
from facegen_ray.observability.metrics import training_metrics
from facegen_ray.storage import Storage
from facegen_ray.train import report as rep
from facegen_ray.train.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from facegen_ray.train.schedule import ProgressiveSchedule, SchedulePoint

DATA_COLUMNS = ["image", "age", "gender", "race", "weight"]


# ---------------------------------------------------------------------------- data
class ShardFeeder:
    """Serves batches of any size from a Ray Data shard iterator, epoch after epoch.

    The stream is epoch 0's rows, then epoch 1's, ... (each epoch shuffled by a local buffer
    seeded from (seed, epoch, rank)). Batches are cut from fixed-size chunks, so the batch size
    may change between stages without losing rows, and a batch may span two epochs.
    `position` = (epoch, rows of it already handed out) rebuilds the same stream after a
    restart: reopen that epoch and skip that many rows.
    """

    def __init__(self, shard, *, chunk: int, seed: int, rank: int, shuffle_buffer: int,
                 epoch: int = 0, rows: int = 0):
        self.shard = shard
        self.chunk = max(1, int(chunk))
        self.seed = int(seed)
        self.rank = int(rank)
        self.shuffle_buffer = int(shuffle_buffer)
        self._epoch = int(epoch)          # epoch the open iterator reads
        self._skip = int(rows)            # rows to drop when (re)opening that epoch
        self._pulled = 0                  # rows pulled from the open epoch (incl. skipped)
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_rows = 0

    @property
    def position(self) -> dict[str, int]:
        """(epoch, rows handed out from it); the rows still pending all belong to that epoch."""
        if self._it is None:
            return {"epoch": self._epoch, "rows": self._skip}
        return {"epoch": self._epoch, "rows": self._pulled - self._pending_rows}

    def _open(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.shuffle_buffer > 0:
            kwargs["local_shuffle_buffer_size"] = self.shuffle_buffer
            kwargs["local_shuffle_seed"] = (self.seed * 1_000_003 + self._epoch * 1009 + self.rank) % (2**31)
        self._it = iter(self.shard.iter_torch_batches(batch_size=self.chunk, device="cpu", **kwargs))
        self._pulled = 0
        skip, self._skip = self._skip, 0
        while skip > 0:  # replay the rows this epoch already handed out (resume)
            batch = self._next_raw()
            if batch is None:
                raise RuntimeError(f"cannot resume data position: epoch {self._epoch} has fewer rows than {skip}")
            n = len(batch["image"])
            self._pulled += n
            if n > skip:
                self._push({k: v[skip:] for k, v in batch.items()})
                skip = 0
            else:
                skip -= n

    def _next_raw(self) -> dict[str, torch.Tensor] | None:
        try:
            batch = next(self._it)
        except StopIteration:
            return None
        return {k: v for k, v in batch.items() if k in DATA_COLUMNS}

    def _push(self, batch: dict[str, torch.Tensor]) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch["image"])

    def take(self, n: int) -> dict[str, torch.Tensor]:
        """The next n rows ({column: tensor [n,...]}); rolls over into the next epoch as needed."""
        if self._it is None:
            self._open()
        empty_in_a_row = 0
        out: list[dict[str, torch.Tensor]] = []
        got = 0
        while got < n:
            if self._pending_rows == 0:
                batch = self._next_raw()
                if batch is None:  # epoch exhausted: next epoch
                    empty_in_a_row = empty_in_a_row + 1 if self._pulled == 0 else 0
                    if empty_in_a_row > 1:
                        raise RuntimeError("this worker's dataset shard is empty (fewer rows than workers?)")
                    self._epoch += 1
                    self._skip = 0
                    self._open()
                    continue
                self._pulled += len(batch["image"])
                self._push(batch)
            head = self._pending[0]
            k = min(n - got, len(head["image"]))
            out.append({c: v[:k] for c, v in head.items()})
            rest = {c: v[k:] for c, v in head.items()}
            if len(rest["image"]):
                self._pending[0] = rest
            else:
                self._pending.pop(0)
            self._pending_rows -= k
            got += k
        return {c: torch.cat([b[c] for b in out]) for c in out[0]}


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
    w = w.to(device=device, dtype=torch.float32, non_blocking=True)
    invalid = (~torch.isfinite(w)) | (w < 0)
    stats = torch.stack([
        torch.where(invalid, torch.zeros_like(w), w).sum(), (w != 1).sum().float(), invalid.sum().float(),
    ])
    world = _world()
    if world > 1:
        dist.all_reduce(stats)
    total, not_one, n_invalid = stats.tolist()
    if n_invalid > 0 or not total > 0:
        raise ValueError("dataset rows have invalid weights (negative, NaN/inf or all zero in a batch)")
    if not_one == 0:
        return None
    return RowWeights(w, torch.tensor(total / world, device=device))


def prepare_reals(images: torch.Tensor, point: SchedulePoint) -> torch.Tensor:
    """Reals [N,3,R0,R0] at the loader's resolution -> [N,3,R,R] at the stage resolution.

    Downsampling is a box filter (average pooling, antialiased for power-of-two factors).
    While a block fades in, reals are blended with their half-resolution version upsampled,
    matching what the generator produces at that alpha (ProGAN)."""
    r0 = images.shape[-1]
    x = images
    if r0 > point.resolution:
        x = F.avg_pool2d(x, r0 // point.resolution)
    if point.fading and point.alpha < 1.0:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(low, x, point.alpha)
    return x


# ---------------------------------------------------------------------------- distributed helpers
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def allreduce_grads(module: torch.nn.Module, world: int, sanitize: bool) -> None:
    """Average gradients across workers with one flat all-reduce (every rank has the same
    set of parameters with gradients, because they run the same stage)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    if world > 1:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
    if sanitize:  # fp32 path: keep one bad batch from poisoning the weights
        for p in params:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)


def broadcast_module(module: torch.nn.Module, world: int) -> None:
    if world <= 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_buffers(module: torch.nn.Module, world: int, name_part: str) -> None:
    """Average the running buffers (e.g. w_avg) that each worker updates from its own batch."""
    if world <= 1:
        return
    for name, b in module.named_buffers():
        if name_part in name and b.is_floating_point():
            dist.all_reduce(b.data)
            b.data /= world


def module_digest(module: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers: equal digests = bit-identical weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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


def _attributes(batch: dict[str, torch.Tensor], cfg: FacegenConfig, device) -> torch.Tensor | None:
    if not cfg.model.conditional:
        return None
    from facegen_ray.models.conditioning import encode_attributes

    return encode_attributes(batch["age"], batch["gender"], batch["race"], cfg.model).to(device)


# ---------------------------------------------------------------------------- the GAN steps
class GANSteps:
    """G, D, G_ema, the loss, both optimisers and AMP scalers, and one D / G step each.

    Used by the Ray Train worker below and by benchmarks/train.py (same code, no Ray)."""

    def __init__(self, cfg: FacegenConfig, device: torch.device, world: int = 1):
        from facegen_ray.losses import build_loss
        from facegen_ray.models import Discriminator, Generator

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
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tcfg.g_lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tcfg.d_lr, betas=betas)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_run, self.D_run = self.G, self.D
        self._compiled = None
        if tcfg.compile and self.on_gpu:
            self._compiled = (torch.compile(self.G), torch.compile(self.D))
        self._stage: tuple[int, float] | None = None
        self.reg_stats: dict[str, float] = {}

    # -- state
    def state_dict(self) -> dict[str, Any]:
        fn = getattr(self.loss, "state_dict", None)
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
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
                self.G_run, self.D_run = self._compiled if point.alpha >= 1.0 else (self.G, self.D)
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
        real = prepare_reals(images.to(self.device, non_blocking=True), point)  # [n,3,R,R]
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    # -- steps
    def d_step(self, real: torch.Tensor, c: torch.Tensor | None, d_step_index: int,
               weight: RowWeights | torch.Tensor | None = None) -> float:
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
        reg, stats = self.loss.d_reg(self.D_run, real, c, step=d_step_index, weight=weight)  # fp32, no autocast
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
        from facegen_ray.models.ema import update_ema

        update_ema(self.G_ema, self.G, ema_beta(self.cfg.train, images_seen, global_batch))

    @torch.no_grad()
    def samples(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """G_ema on fixed latents with constant noise, without touching the training RNGs."""
        with torch.random.fork_rng(devices=[self.device] if self.on_gpu else []):
            return self.G_ema(z, c, noise_mode="const")  # [N,3,R,R]


# ---------------------------------------------------------------------------- the worker
def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point. config: {"cfg": FacegenConfig dump, "run_uri": str,
    "fault": {"rank", "after_images", "marker"} | None (test hook: os._exit once)}.
    Returns (rank 0) {"workers": [per-rank summary], "history": [...], "counters": {...}}."""
    import random

    import numpy as np
    import ray.train
    import ray.train.torch

    cfg = FacegenConfig.model_validate(config["cfg"])
    tcfg = cfg.train
    run_uri: str = config["run_uri"]
    storage = Storage(cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if tcfg.use_gpu else torch.device("cpu")
    gan = GANSteps(cfg, device, world=_world())

    counters = {"images_seen": 0, "d_steps": 0, "g_steps": 0, "iterations": 0}
    data_pos = {"epoch": 0, "rows": 0}
    history: list[dict[str, Any]] = []
    seed = tcfg.seed + 1000 * rank + 1  # per-rank streams: latents, noise, style mixing
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, rng = load_checkpoint(d, rank, map_location=device)
        gan.load_state_dict(state)
        counters.update(state["counters"])
        data_pos.update(state["data"])
        history = list(state.get("history", []))
        if rng is not None:
            restore_rng(rng)
        if rank == 0:
            print(f"[facegen] resumed from checkpoint at {counters['images_seen']} images", flush=True)
    elif tcfg.init_from:  # warm start of a new run (facegen retrain): weights + counters, new data
        from facegen_ray.train.warm_start import warm_start

        counters.update(warm_start(gan, storage, tcfg.init_from, device))
        if rank == 0:
            print(f"[facegen] warm start from {tcfg.init_from} at {counters['images_seen']} images", flush=True)
    gan.sync_initial_state()

    schedule = ProgressiveSchedule(tcfg, cfg.model, num_workers=world)
    feeder = ShardFeeder(
        ray.train.get_dataset_shard("train"), chunk=32, seed=tcfg.seed, rank=rank,
        shuffle_buffer=tcfg.shuffle_buffer, epoch=data_pos["epoch"], rows=data_pos["rows"],
    )
    sample_z, sample_c = fixed_latents(cfg, device)
    fault = config.get("fault") or None
    evaluator = None  # FID of G_ema at eval points, for Ray Tune (train.eval_every_images; off by default)
    if tcfg.eval_every_images and rank == 0:
        from facegen_ray.train.periodic_eval import PeriodicEvaluator
        from facegen_ray.train.trainer import dataset_uri

        evaluator = PeriodicEvaluator(cfg, storage, dataset_uri(cfg), device)

    def write_checkpoint(point: SchedulePoint, final: bool) -> None:
        """Every rank writes its part (RNG); rank 0 adds the model state, grid and curves."""
        state = meta = None
        if rank == 0:
            state = {
                **gan.state_dict(), "counters": dict(counters), "data": feeder.position,
                "stage": point.stage, "alpha": point.alpha, "history": history,
                "config": cfg.model_dump(mode="json"), "world_size": world,
            }
            meta = {
                **counters, "stage": point.stage, "alpha": point.alpha, "resolution": point.resolution,
                "world_size": world, "final": final, "config": cfg.model_dump(mode="json"),
                "g_ema_digest": module_digest(gan.G_ema),
            }
            rep.write_sample_grid(storage, run_uri, gan.samples(sample_z, sample_c), counters["images_seen"])
            if history:
                rep.write_loss_curves(storage, run_uri, history)
        with tempfile.TemporaryDirectory(prefix="facegen-ckpt-") as tmp:
            save_checkpoint(tmp, rank, state, meta)
            metrics = {**(history[-1] if history else {}), **counters, "checkpoint": True, "final": final}
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint-{counters['images_seen']:012d}",
            )
        if rank == 0:
            training_metrics().checkpoint(tcfg.run_name, rank)  # Prometheus (never raises)

    last_ckpt = started_at = counters["images_seen"]
    t_last, img_last = time.perf_counter(), counters["images_seen"]
    acc = {"d": 0.0, "g": 0.0, "n_d": 0, "n_g": 0}
    point = schedule.at(counters["images_seen"])
    while not point.done:
        gan.apply(point)
        nb = point.worker_batch
        c = None
        for _ in range(gan.n_critic):  # each D step on a fresh real batch
            batch = feeder.take(nb)
            real = gan.to_device_reals(batch["image"], point)  # [nb,3,R,R]
            c = _attributes(batch, cfg, device)
            acc["d"] += gan.d_step(real, c, counters["d_steps"], row_weights(batch, tcfg.row_weights, device))
            acc["n_d"] += 1
            counters["d_steps"] += 1
            counters["images_seen"] += point.global_batch
        acc["g"] += gan.g_step(nb, c, counters["g_steps"])
        acc["n_g"] += 1
        counters["g_steps"] += 1
        counters["iterations"] += 1
        gan.ema(counters["images_seen"], point.global_batch)

        # logging / checkpoints: the decision depends on counters only -> same on every rank
        seen = counters["images_seen"]
        prev = seen - gan.n_critic * point.global_batch
        next_point = schedule.at(seen)
        crossed_log = seen // tcfg.log_every_images > prev // tcfg.log_every_images
        crossed_ckpt = seen // tcfg.checkpoint_every_images > prev // tcfg.checkpoint_every_images
        every_eval = tcfg.eval_every_images
        crossed_eval = bool(every_eval) and seen // every_eval > prev // every_eval
        if crossed_log or crossed_ckpt or crossed_eval or next_point.done:
            now = time.perf_counter()
            entry = {
                "images_seen": seen, "stage": point.stage, "alpha": round(point.alpha, 6),
                "resolution": point.resolution, "global_batch": point.global_batch,
                "d_loss": acc["d"] / max(acc["n_d"], 1), "g_loss": acc["g"] / max(acc["n_g"], 1),
                "img_per_s": (seen - img_last) / max(now - t_last, 1e-9),
                "d_steps": counters["d_steps"], "g_steps": counters["g_steps"], **gan.reg_stats,
            }
            if evaluator is not None and (crossed_eval or next_point.done):
                entry.update(evaluator(gan.G_ema))  # rank 0 only: "fid" goes out with this report
                print(f"[facegen] {seen} img: FID {entry['fid']:.2f} ({entry['eval_num_gen']} generated vs "
                      f"{entry['eval_num_real']} real, {entry['eval_s']:.1f}s)", flush=True)
            history.append(entry)
            acc = {"d": 0.0, "g": 0.0, "n_d": 0, "n_g": 0}
            training_metrics().progress(tcfg.run_name, rank, entry)  # Prometheus gauges, tag rank (never raises)
            if rank == 0:
                print(rep.progress_line(entry), flush=True)
            if crossed_ckpt or next_point.done:
                write_checkpoint(point, final=next_point.done)
                last_ckpt = seen
            else:
                ray.train.report(dict(entry))
            t_last, img_last = time.perf_counter(), seen  # throughput excludes checkpoint/report time
        if fault and rank == int(fault["rank"]) and seen >= int(fault["after_images"]) and last_ckpt > 0:
            marker = fault["marker"]
            if not os.path.exists(marker):
                # die only once the last checkpoint is committed, so the test knows where the
                # restarted group must resume from (a crash before the commit would restart
                # from the previous checkpoint instead, which is also correct, just less checkable)
                ray.train.get_all_reported_checkpoints(
                    consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
                with open(marker, "w") as f:
                    f.write(f"worker rank {rank} killed at {seen} images\n")
                print(f"[facegen] fault injection: rank {rank} exits at {seen} images", flush=True)
                os._exit(1)
        point = next_point

    # summary for the driver (rank 0's return value): every rank's step counts and weight digests
    summary = {
        "rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
        **counters, "started_at": started_at, "data_position": feeder.position,
        "g_digest": module_digest(gan.G), "d_digest": module_digest(gan.D),
        "g_ema_digest": module_digest(gan.G_ema),
    }
    w = _world()
    gathered: list[Any] = [None] * w
    if w > 1:
        dist.all_gather_object(gathered, summary)
    else:
        gathered = [summary]
    if rank == 0:
        return {"workers": gathered, "history": history, "counters": counters}
    return None
