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
A dataset held in the object store is also held in each worker's memory after epoch 0; later
epochs are permutations seeded from (seed, epoch, rank), so resume stays exact there too.

Where the parts live: the step (GANSteps, prepare_reals, row weights, EMA) in train/steps.py,
the collectives in train/distributed.py, the shard feeder in data/feeder.py; this file is the
loop itself, in the order the reference training loops read: setup, resume, data, then per
iteration: the steps (`run_iteration`), what is due (`what_is_due`: log line, evaluation,
checkpoint), writing it; the counters and log accumulators are the types in loop_state.py,
and the crash tests' fault injection is train/faults.py (nothing unless a test asks).
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from facegen_ray.config import FacegenConfig, TrainConfig
from facegen_ray.data.feeder import ShardFeeder
from facegen_ray.observability.metrics import training_metrics
from facegen_ray.storage import Storage
from facegen_ray.train import report as rep
from facegen_ray.train.checkpoint import restore as restore_checkpoint
from facegen_ray.train.checkpoint import restore_rng, save_checkpoint, upload_checkpoint
from facegen_ray.train.distributed import any_rank, module_digest, world_size
from facegen_ray.train.faults import FaultHooks
from facegen_ray.train.loop_state import Counters, Due, LogWindow, due_after
from facegen_ray.train.periodic_eval import PeriodicEvaluator
from facegen_ray.train.schedule import ProgressiveSchedule, SchedulePoint
from facegen_ray.train.steps import GANSteps, batch_attributes, fixed_latents, row_weights
from facegen_ray.train.warm_start import warm_start

# Imported where used, not here: ray: in the worker function Ray Train runs; the step code and tests
# use this module without Ray.


def run_iteration(
    gan: GANSteps,
    feeder: ShardFeeder,
    point: SchedulePoint,
    counters: Counters,
    window: LogWindow,
    cfg: FacegenConfig,
    device: torch.device,
) -> None:
    """One iteration: n_critic D steps, each on a fresh real batch, then one G step and the EMA."""
    tcfg = cfg.train
    nb = point.worker_batch
    c = None
    for _ in range(gan.n_critic):
        t_data = time.perf_counter()
        batch = feeder.take(nb)
        window.data_s += time.perf_counter() - t_data
        real = gan.to_device_reals(batch["image"], point)  # [nb,3,R,R]
        c = batch_attributes(batch, cfg, device)
        window.add_d(gan.d_step(real, c, counters.d_steps, row_weights(batch, tcfg.row_weights, device)))
        counters.d_steps += 1
        counters.images_seen += point.global_batch
    window.add_g(gan.g_step(nb, c, counters.g_steps))
    counters.g_steps += 1
    counters.iterations += 1
    gan.ema(counters.images_seen, point.global_batch)


def what_is_due(
    tcfg: TrainConfig,
    counters: Counters,
    point: SchedulePoint,
    next_point: SchedulePoint,
    n_critic: int,
    over_budget: Callable[[], bool] | None,
) -> Due:
    """After an iteration at `point`: which of log line, evaluation and checkpoint are due, and
    whether the run ends (the schedule's end, or train.max_minutes spent: checked at log points
    only, and `over_budget` agrees across ranks). Depends on the counters only: the same on
    every rank."""
    seen = counters.images_seen
    prev = seen - n_critic * point.global_batch
    due = due_after(
        prev,
        seen,
        log_every=tcfg.log_every_images,
        checkpoint_every=tcfg.checkpoint_every_images,
        eval_every=tcfg.eval_every_images,
        final=next_point.done,
    )
    if over_budget is not None and due.log and not due.final and over_budget():
        due = dataclasses.replace(due, final=True)
    return due


# rank 0 names its worker group's placement group in every report; a sweep's driver removes it
# when the trial ends if Ray Train could not (tune/placement.py)
PLACEMENT_GROUP_KEY = "placement_group"


def _placement_group_tag(rank: int) -> dict[str, str]:
    if rank != 0:
        return {}
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return {PLACEMENT_GROUP_KEY: pg.id.hex()} if pg is not None else {}


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point. config: {"cfg": FacegenConfig dump, "run_uri": str,
    "dataset_uri": str (the dataset the run reads; periodic FID's reals),
    "fault", "checkpoint_fault": test hooks (train/faults.py), None in a real run}.
    Returns (rank 0) {"workers": [per-rank summary], "history": [...], "counters": {...}}."""
    import ray.train
    import ray.train.torch

    # ------------------------------------------------------------------ setup
    cfg = FacegenConfig.model_validate(config["cfg"])
    tcfg = cfg.train
    run_uri: str = config["run_uri"]
    storage = Storage(cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if tcfg.use_gpu else torch.device("cpu")
    threads = int(config.get("threads") or 1)
    torch.set_num_threads(threads)  # the CPUs this worker reserved, no more (trainer.worker_resources)
    gan = GANSteps(cfg, device, world=world_size())
    faults = FaultHooks.from_config(config, rank)
    node_ip = ray.util.get_node_ip_address()
    pg_tag = _placement_group_tag(rank)
    print(
        f"[facegen] rank {rank}/{world} on node {node_ip} (gloo interface {os.environ.get('GLOO_SOCKET_IFNAME') or 'default'})",
        flush=True,
    )

    counters = Counters()
    data_pos = {"epoch": 0, "rows": 0}
    history: list[dict[str, Any]] = []
    seed = tcfg.seed + 1000 * rank + 1  # per-rank streams: latents, noise, style mixing
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)

    # ------------------------------------------------------------------ resume / warm start
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        state, rng = restore_checkpoint(ckpt, rank, map_location=device)
        gan.load_state_dict(state)
        counters.update(state["counters"])
        data_pos.update(state["data"])
        history = list(state.get("history", []))
        if rng is not None:
            restore_rng(rng)
        if rank == 0:
            print(f"[facegen] resumed from checkpoint at {counters.images_seen} images", flush=True)
    elif tcfg.init_from:  # warm start of a new run (facegen retrain): weights + counters, new data
        counters.update(warm_start(gan, storage, tcfg.init_from, device))
        counters.train_s = 0.0  # a new run: the source's images go on, its clock does not
        if rank == 0:
            print(f"[facegen] warm start from {tcfg.init_from} at {counters.images_seen} images", flush=True)
    gan.sync_initial_state()

    # ------------------------------------------------------------------ data, samples, evaluation
    schedule = ProgressiveSchedule(tcfg, cfg.model, num_workers=world)
    feeder = ShardFeeder(
        ray.train.get_dataset_shard("train"),
        chunk=tcfg.data_chunk,
        seed=tcfg.seed,
        rank=rank,
        shuffle_buffer=tcfg.shuffle_buffer,
        epoch=data_pos["epoch"],
        rows=data_pos["rows"],
        cache=bool(config.get("data_in_memory")),
    )
    sample_z, sample_c = fixed_latents(cfg, device)
    evaluator = None  # FID of G_ema at eval points, for Ray Tune (train.eval_every_images, eval_at_end; off by default)
    if (tcfg.eval_every_images or tcfg.eval_at_end) and rank == 0:
        evaluator = PeriodicEvaluator(cfg, storage, config["dataset_uri"], device)

    # ------------------------------------------------------------------ checkpoint (every rank writes its part)
    def upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
        """Ray Train's upload step, done crash-safely (checkpoint.upload_checkpoint)."""
        sc = ray.train.get_context().get_storage()
        check = getattr(sc, "_check_validation_file", None)  # what Ray's own upload checks first: the
        if check is not None:  # run folder is reachable from this node (not another node's local disk)
            check()
        fs, dest = sc.storage_filesystem, sc.build_checkpoint_path_from_name(dir_name)
        upload_checkpoint(checkpoint.path, fs, dest, faults.upload_pause(counters.images_seen, dest))
        return ray.train.Checkpoint(path=dest, filesystem=fs)

    def write_checkpoint(point: SchedulePoint, final: bool) -> None:
        """Every rank writes its part (RNG); rank 0 adds the model state, grid and curves."""
        state = meta = None
        if rank == 0:
            state = {
                **gan.state_dict(),
                "counters": counters.as_dict(),
                "data": feeder.position,
                "stage": point.stage,
                "alpha": point.alpha,
                "history": history,
                "config": cfg.model_dump(mode="json"),
                "world_size": world,
            }
            meta = {
                **counters.as_dict(),
                "stage": point.stage,
                "alpha": point.alpha,
                "resolution": point.resolution,
                "world_size": world,
                "final": final,
                "config": cfg.model_dump(mode="json"),
                "g_ema_digest": module_digest(gan.G_ema),
            }
            rep.write_sample_grid(storage, run_uri, gan.samples(sample_z, sample_c), counters.images_seen)
            if history:
                rep.write_loss_curves(storage, run_uri, history)
        with tempfile.TemporaryDirectory(prefix="facegen-ckpt-") as tmp:
            save_checkpoint(tmp, rank, state, meta)
            metrics = {
                **(history[-1] if history else {}),
                **counters.as_dict(),
                "checkpoint": True,
                "final": final,
                **pg_tag,
            }
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint-{counters.images_seen:012d}",
                checkpoint_upload_fn=upload,
            )
        if rank == 0:
            training_metrics().checkpoint(tcfg.run_name, rank)  # Prometheus (never raises)

    def history_entry(point: SchedulePoint, window: LogWindow, due: Due) -> dict[str, Any]:
        """The log line / report of this point: schedule, losses, throughput; FID when due."""
        seen = counters.images_seen
        losses = window.entry(time.perf_counter(), seen)
        entry = {
            "images_seen": seen,
            "stage": point.stage,
            "alpha": round(point.alpha, 6),
            "resolution": point.resolution,
            "global_batch": point.global_batch,
            "d_loss": losses["d_loss"],
            "g_loss": losses["g_loss"],
            "img_per_s": losses["img_per_s"],
            "data_wait": losses["data_wait"],
            "checkpoint_s": losses["checkpoint_s"],
            "threads": threads,
            "d_steps": counters.d_steps,
            "g_steps": counters.g_steps,
            "train_s": round(counters.train_s, 3),
            "resumed_train_s": round(resumed_s, 3),  # for Tune's CPU-minutes of a resumed trial
            **gan.reg_stats,
        }
        if evaluator is not None and due.evaluate:
            entry.update(evaluator(gan.G_ema))  # rank 0 only: "fid" goes out with this report
            print(
                f"[facegen] {seen} img: FID {entry['fid']:.2f} ({entry['eval_num_gen']} generated vs "
                f"{entry['eval_num_real']} real, {entry['eval_s']:.1f}s)",
                flush=True,
            )
        return entry

    budget_s = tcfg.max_minutes * 60.0 if tcfg.max_minutes else None
    loop_t0 = time.perf_counter()
    resumed_s = counters.train_s  # the loop time of the processes before this one (0 on a fresh run)

    def clock() -> None:
        counters.train_s = resumed_s + (time.perf_counter() - loop_t0)

    def over_budget() -> bool:
        """Any rank over train.max_minutes stops all (one tiny all-reduce)."""
        return any_rank(time.perf_counter() - loop_t0 >= budget_s, world, device)

    # ------------------------------------------------------------------ the loop
    last_ckpt = started_at = counters.images_seen
    window = LogWindow(started=time.perf_counter(), images_at_start=counters.images_seen)
    point = schedule.at(counters.images_seen)
    stopped_by_budget = False
    while not point.done:
        # ---- the steps
        gan.apply(point)
        run_iteration(gan, feeder, point, counters, window, cfg, device)

        # ---- what is due: log line, evaluation, checkpoint, the end
        next_point = schedule.at(counters.images_seen)
        due = what_is_due(tcfg, counters, point, next_point, gan.n_critic, over_budget if budget_s else None)
        if due.final and not next_point.done:
            stopped_by_budget = True
            next_point = dataclasses.replace(next_point, done=True)
            print(
                f"[facegen] train.max_minutes={tcfg.max_minutes:g} reached at {counters.images_seen} images: "
                "final checkpoint and export",
                flush=True,
            )

        # ---- writing it
        if due.report:
            clock()
            entry = history_entry(point, window, due)
            history.append(entry)
            training_metrics().progress(tcfg.run_name, rank, entry)  # Prometheus gauges, tag rank (never raises)
            if rank == 0:
                print(rep.progress_line(entry), flush=True)
            ckpt_s = 0.0
            if due.write_checkpoint:
                t_ckpt = time.perf_counter()
                clock()  # after an evaluation in history_entry
                write_checkpoint(point, final=due.final)
                last_ckpt = counters.images_seen
                ckpt_s = time.perf_counter() - t_ckpt
            else:
                ray.train.report({**entry, **pg_tag})
            window = LogWindow(started=time.perf_counter(), images_at_start=counters.images_seen, checkpoint_s=ckpt_s)

        faults.after_iteration(counters.images_seen, last_ckpt)  # crash tests only
        point = next_point

    feeder.close()  # the prefetch thread (data_position below is what was handed out)

    # ------------------------------------------------------------------ summary
    # for the driver (rank 0's return value): every rank's step counts and weight digests
    summary = {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": node_ip,
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        **counters.as_dict(),
        "started_at": started_at,
        "data_position": feeder.position,
        "stopped_by_budget": stopped_by_budget,
        "g_digest": module_digest(gan.G),
        "d_digest": module_digest(gan.D),
        "g_ema_digest": module_digest(gan.G_ema),
    }
    w = world_size()
    gathered: list[Any] = [None] * w
    if w > 1:
        dist.all_gather_object(gathered, summary)
    else:
        gathered = [summary]
    if rank == 0:
        return {"workers": gathered, "history": history, "counters": counters.as_dict()}
    return None
