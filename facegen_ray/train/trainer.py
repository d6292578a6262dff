"""Driver side of `facegen train`: validate, wire Ray Train's TorchTrainer, export at the end.

    train(cfg) -> TrainOutcome
      1. validate on the driver, before any Ray Train machinery starts: storage writable,
         dataset present/non-empty/at least model.resolution, run folder compatible,
         GPUs present when asked for (UserError -> `facegen train` exits 2);
      2. TorchTrainer(train_loop_per_worker, ScalingConfig, RunConfig(storage_path=<root>/runs,
         name=run_name, CheckpointConfig(num_to_keep), FailureConfig: train/failures.py),
         datasets={"train": ...}); re-running the same run name resumes from the run's latest
         checkpoint (Ray Train V2 restores it from the run folder's snapshot);
      3. export G_ema of the final checkpoint to <root>/runs/<run>/model/ and register it.

Cluster use: `ray job submit --working-dir . -- facegen train --config configs/utkface-64.yaml
--root s3://bucket/prefix`; locally (no RAY_ADDRESS) an embedded Ray instance is started.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from facegen_ray import runtime
from facegen_ray.config import FacegenConfig
from facegen_ray.data.shards import read_manifest, read_training_dataset
from facegen_ray.errors import UserError
from facegen_ray.progress import configure_ray_data
from facegen_ray.registry import Registry
from facegen_ray.resources import resources_for
from facegen_ray.storage import (
    Layout,
    Storage,
    StorageError,
    fs_path_to_uri,
    is_remote,
    join,
    normalize,
)
from facegen_ray.storage_workers import worker_filesystem
from facegen_ray.train.faults import checkpoint_fault_from_env, worker_fault_from_env
from facegen_ray.train.progress_bar import training_bar
from facegen_ray.train.schedule import ProgressiveSchedule

# Imported where used, not here: ray, torch and the modules that load torch (models, train.loop,
# train.checkpoint, train.warm_start, data.feeder): the driver validates a run (and tune builds
# trial configs) without them.

log = logging.getLogger(__name__)

# non-secret storage settings handed to the train workers (a `ray job submit` driver's environment
# does not reach them). Credentials are never forwarded: they would be pickled into Tune's
# tuner.pkl in storage; every node resolves its own through the AWS chain (storage.s3_worker_options)
FORWARD_ENV = (
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "FACEGEN_S3_ENDPOINT_URL",
)
RUN_FILE = "run.json"


@dataclass
class TrainOutcome:
    """What a finished `train()` hands back (and the CLI prints)."""

    run_name: str
    run_uri: str
    images_seen: int
    checkpoint_path: str | None
    model_uri: str | None = None
    version: str | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def dataset_uri(cfg: FacegenConfig) -> str:
    return normalize(cfg.train.dataset) if cfg.train.dataset else Layout(cfg.storage.root).dataset("faces")


def _architecture(cfg: FacegenConfig) -> dict[str, Any]:
    """The parts of a config a checkpoint's weights depend on (must match to resume)."""
    return {"model": cfg.model.model_dump(mode="json"), "loss": cfg.loss.name}


def check_dataset(storage: Storage, ds_uri: str, resolution: int) -> dict[str, Any]:
    """The manifest of a dataset to train a `resolution` model on; UserError when it is missing,
    empty, or at a lower resolution."""
    manifest = read_manifest(storage, ds_uri)  # UserError when missing
    if int(manifest.get("num_images") or 0) <= 0:
        raise UserError(f"dataset {ds_uri} is empty (num_images = 0): run `facegen prepare` on a folder with faces")
    data_res = int(manifest.get("resolution") or 0)
    if data_res < resolution:
        raise UserError(
            f"model.resolution {resolution} is larger than the dataset's resolution {data_res} "
            f"({ds_uri}): prepare the data at --resolution {resolution} or lower model.resolution"
        )
    return manifest


def validate(cfg: FacegenConfig, storage: Storage) -> dict[str, Any]:
    """Every check a user's input can fail, on the driver. Returns the dataset manifest."""
    layout = Layout(cfg.storage.root)
    try:
        storage.check_writable(layout.runs())
    except StorageError as e:
        raise UserError(f"cannot train: {e}. Check --root / storage.root and your credentials.") from None
    ds_uri = dataset_uri(cfg)
    manifest = check_dataset(storage, ds_uri, cfg.model.resolution)
    n = int(manifest["num_images"])
    if n < cfg.train.num_workers:
        raise UserError(f"dataset {ds_uri} has {n} images, fewer than train.num_workers ({cfg.train.num_workers})")
    run_file = join(layout.run(cfg.train.run_name), RUN_FILE)
    if storage.exists(run_file):
        prev = storage.read_json(run_file)
        if prev.get("architecture") != _architecture(cfg):
            raise UserError(
                f"run {cfg.train.run_name!r} already exists with a different model/loss config "
                f"({run_file}); resuming it would not load: pick another train.run_name"
            )
    if cfg.train.init_from:  # warm start source present and of the same architecture
        from facegen_ray.train.warm_start import check_init_from

        check_init_from(storage, normalize(cfg.train.init_from), cfg.model)
    return manifest


def _run_storage(storage: Storage, runs_uri: str):
    """(storage_path, storage_filesystem) for RunConfig. For s3:// a pyarrow S3FileSystem with the
    endpoint and region (Ray's own from_uri would miss a custom endpoint); it carries no
    credentials: Ray Train's controller and workers resolve theirs on their own node."""
    if not is_remote(runs_uri):
        return runs_uri, None
    fs, path = worker_filesystem(storage, runs_uri)
    return path, fs


def train(cfg: FacegenConfig, storage: Storage | None = None, *, export: bool | None = None) -> TrainOutcome:
    """Run (or resume) the training run `cfg.train.run_name`; see the module docstring."""
    storage = storage or Storage(cfg.storage)
    manifest = validate(cfg, storage)
    run_name = cfg.train.run_name
    ds_uri = dataset_uri(cfg)

    runtime.ensure_ray()

    # the train workers, Ray Train's controller and Ray Data tasks open these on their own nodes
    shared = {
        "storage.root": cfg.storage.root,
        "dataset": ds_uri,
        "train.init_from": cfg.train.init_from,
        "eval.inception_path": cfg.eval.inception_path if cfg.train.eval_every_images else None,
    }
    runtime.require_shared(shared)

    configure_ray_data()  # the dataset below (cached: executed here) and the Trainer carry this context

    # an autoscaling cluster may not have the GPU nodes yet: ask for them and wait (with a
    # progress line) up to train.resource_wait_s, instead of failing on what is there now
    bundles = [worker_resources(cfg)] * cfg.train.num_workers
    wait_s = 0.0 if runtime.embedded() else cfg.train.resource_wait_s  # an embedded Ray never grows
    with resources_for(bundles, wait_s, f"training run {run_name!r}"):
        # a one-node cluster passed the check above, but the nodes the wait brought have disks
        # of their own: checked again on the cluster the workers will run on
        runtime.require_shared(shared)
        return _train_on_cluster(cfg, storage, manifest, ds_uri, export)


def _train_on_cluster(
    cfg: FacegenConfig, storage: Storage, manifest: dict[str, Any], ds_uri: str, export: bool | None
) -> TrainOutcome:
    run_name = cfg.train.run_name
    run_uri = Layout(cfg.storage.root).run(run_name)
    storage.write_json(
        join(run_uri, RUN_FILE),
        {
            "run": run_name,
            "architecture": _architecture(cfg),
            "dataset": ds_uri,
            "dataset_version": manifest.get("version"),
            "config": cfg.model_dump(mode="json"),
            "schedule": ProgressiveSchedule(cfg.train, cfg.model).describe(),
            "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )

    result = fit(cfg, storage, training_dataset(storage, ds_uri, cfg))
    ret = result.return_value or {}
    counters = ret.get("counters", {})
    outcome = TrainOutcome(
        run_name=run_name,
        run_uri=run_uri,
        images_seen=int(counters.get("images_seen", (result.metrics or {}).get("images_seen", 0))),
        checkpoint_path=fs_path_to_uri(result.checkpoint.path, run_uri) if result.checkpoint else None,
        workers=list(ret.get("workers", [])),
        history=list(ret.get("history", [])),
    )
    if (cfg.train.export if export is None else export) and result.checkpoint is not None:
        outcome.model_uri, outcome.version = export_checkpoint(cfg, storage, result.checkpoint, run_name)
    return outcome


def decoded_bytes(cfg: FacegenConfig, rows: int) -> int:
    """Approximate size of `rows` decoded training rows: float32 image + labels and weight."""
    return rows * (3 * cfg.model.resolution**2 * 4 + 32)


def caches_dataset(cfg: FacegenConfig, rows: int) -> bool:
    """Whether training_dataset materializes a dataset of `rows` rows (train.cache_dataset_bytes)."""
    limit = cfg.train.cache_dataset_bytes
    return bool(limit) and decoded_bytes(cfg, rows) <= limit


def training_dataset(storage: Storage, ds_uri: str, cfg: FacegenConfig):
    """The Ray Dataset the workers read: the columns the loop uses, at the model's resolution.

    Every epoch re-runs a Ray Data pipeline from its source. When the decoded dataset fits
    train.cache_dataset_bytes, it is materialized once into the object store, so an epoch
    reads blocks that are already decoded instead of re-reading and re-decoding the Parquet
    shards (the order of rows is the same either way, so exact resume is unaffected), and each
    worker keeps its shard in memory after epoch 0 (data.feeder.ShardFeeder(cache=True))."""
    from facegen_ray.data.feeder import DATA_COLUMNS

    ds = read_training_dataset(storage, ds_uri, resolution=cfg.model.resolution).select_columns(DATA_COLUMNS)
    rows = int(read_manifest(storage, ds_uri).get("num_images") or 0)
    decoded = decoded_bytes(cfg, rows)
    if caches_dataset(cfg, rows):
        t0 = time.perf_counter()
        ds = ds.materialize()
        print(
            f"[facegen] dataset cached in the object store: {rows} rows, ~{decoded / 2**20:.0f} MB "
            f"({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
    return ds


def worker_resources(cfg: FacegenConfig) -> dict[str, float]:
    """What each train worker reserves; the worker runs torch on exactly that many CPU threads.

    train.resources_per_worker wins. Otherwise a run on an embedded Ray (facegen started it on
    this machine; no RAY_ADDRESS) gives each worker an equal share of the machine's cores (the
    embedded Ray has one logical CPU more, for Ray Data's tasks), and a run on a cluster takes
    Ray Train's default of one CPU per worker (plus one GPU with train.use_gpu)."""
    if cfg.train.resources_per_worker:
        return dict(cfg.train.resources_per_worker)
    if runtime.embedded():  # runtime.local_cpus through the module: tests replace it
        res: dict[str, float] = {"CPU": float(max(1, runtime.local_cpus() // cfg.train.num_workers))}
    else:
        res = {"CPU": 1.0}
    if cfg.train.use_gpu:
        res["GPU"] = 1.0
    return res


def torch_trainer_class():
    """Ray Train's TorchTrainer without its PlacementGroupCleaner callback.

    Ray 2.5x's Train adds a detached actor that polls the State API every second and removes
    the run's placement group as soon as the controller actor is not found. With the CPUs
    saturated the State API can answer without the (alive) controller, and the cleaner then
    destroys a healthy worker group ("Destroying worker since its placement group was
    removed"; seen on the 2-core CI machine). The driver owns the controller here, and Ray
    removes a job's placement groups when the job ends, so nothing leaks without it.
    """
    from ray.train.torch import TorchTrainer

    if not hasattr(TorchTrainer, "_create_default_callbacks"):  # private in Ray: other versions
        return TorchTrainer

    class FacegenTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return FacegenTorchTrainer


def fit(
    cfg: FacegenConfig,
    storage: Storage,
    dataset,
    *,
    runs_uri: str | None = None,
    callbacks: list[Any] | None = None,
    show_bar: bool = True,
) -> Any:
    """Wire and run the TorchTrainer on a Ray Dataset with columns image/age/gender/race/weight.
    Returns Ray Train's Result; raises RuntimeError when the run failed for good.

    runs_uri: folder holding the run (default <root>/runs; `facegen tune` puts each trial's run
    below its experiment); callbacks: Ray Train UserCallbacks (Tune's report forwarding);
    show_bar: draw the images-seen bar when this process's stderr is a terminal (tune's trials
    run in actors: off). Ray Data's bars follow facegen_ray.progress either way (the Trainer
    hands this process's DataContext to the workers)."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.data.dataset import MaterializedDataset
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig

    from facegen_ray.train.failures import explain, failure_config
    from facegen_ray.train.gloo import torch_config
    from facegen_ray.train.loop import train_loop_per_worker

    layout = Layout(cfg.storage.root)
    run_name = cfg.train.run_name
    run_uri = join(runs_uri, run_name) if runs_uri else layout.run(run_name)
    storage_path, storage_fs = _run_storage(storage, runs_uri or layout.runs())
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # progress lines go to stdout once, not twice
    resources = worker_resources(cfg)
    from facegen_ray.progress import configure_ray_data

    configure_ray_data()  # before the Trainer captures the DataContext
    bar_callbacks, bar = training_bar(cfg) if show_bar else ([], contextlib.nullcontext())
    trainer = torch_trainer_class()(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "run_uri": run_uri,
            "dataset_uri": dataset_uri(cfg),
            "threads": max(1, int(resources.get("CPU", 1))),
            "fault": worker_fault_from_env(),
            "checkpoint_fault": checkpoint_fault_from_env(),
            # a dataset that fits the object store (training_dataset materialized it) also fits
            # the workers' memory: epochs >= 1 are served from there (data.feeder.ShardFeeder)
            "data_in_memory": isinstance(dataset, MaterializedDataset),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=failure_config(cfg.train),  # controller retries bounded (train/failures.py)
            worker_runtime_env={"env_vars": env},
            callbacks=list(callbacks or []) + bar_callbacks,
        ),
        datasets={"train": dataset},
        torch_config=torch_config(),  # gloo on the node's own address (train/gloo.py)
        # preserve_order: deterministic split across workers (exact resume; see loop.py)
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    try:
        with bar:
            result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(explain(run_name, cfg.train, e)) from e
    return result


def export_checkpoint(cfg: FacegenConfig, storage: Storage, checkpoint, run_name: str) -> tuple[str, str]:
    """G_ema of a Ray Train checkpoint -> <root>/runs/<run>/model/ -> registry version."""
    import torch

    from facegen_ray.models.export import MODEL_FILE, save_model_dir
    from facegen_ray.train.checkpoint import load_g_ema

    with checkpoint.as_directory() as d:
        G_ema, state = load_g_ema(d, cfg.model)
    counters = state["counters"]
    layout = Layout(cfg.storage.root)
    model_uri = join(layout.run(run_name), "model")
    registry = Registry(storage, cfg.storage.root)
    marker = join(model_uri, MODEL_FILE)
    if storage.exists(marker):  # re-run of a finished run: same weights -> same version
        prev = storage.read_json(marker).get("metadata", {})
        known = registry.versions()
        if prev.get("images_seen") == int(counters["images_seen"]) and prev.get("version") in known:
            return known[prev["version"]]["uri"], prev["version"]
    version = registry.next_version()
    metadata = {
        "version": version,
        "run": run_name,
        "images_seen": int(counters["images_seen"]),
        "resolution": int(cfg.model.resolution),
        "stage": int(state["stage"]),
        "alpha": float(state["alpha"]),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "conditional": bool(cfg.model.conditional),
        "loss": cfg.loss.name,
        "dataset": dataset_uri(cfg),
        "torch": torch.__version__,
    }
    save_model_dir(storage, model_uri, G_ema, cfg.model, metadata)
    version = registry.register(model_uri, version, source=run_name)
    return layout.model(version), version
