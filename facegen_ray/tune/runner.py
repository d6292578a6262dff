"""`facegen tune`: Ray Tune over Ray Train runs, ranked by FID (or KID) — lower is better.

How it is wired (Ray 2.60, Ray Train V2 — the default, RAY_TRAIN_V2_ENABLED unset = on):
Train V2's TorchTrainer is no longer a Tune Trainable, so `Tuner(trainer, param_space=
{"train_loop_config": ...})` (the V1 pattern) is not available. Ray's documented V2 pattern is
a Tune *function* trainable per trial that builds and fits a TorchTrainer, with a Train
callback forwarding the workers' reports to Tune (ray.tune.integration.ray_train.
TuneReportCallback). That is what `run_trial` does, through the same `trainer.fit` that
`facegen train` uses, so a trial is exactly a training run (same loop, checkpoints, fault
tolerance) whose rank 0 also reports FID at `train.eval_every_images` points and at the end
(train/periodic_eval.py). `MetricReportCallback` forwards only the reports that carry the
metric, so the trial's Tune results are its evaluation points (images_seen is the time axis,
which ASHA uses to stop bad trials early).

Resources: the trial function only drives the run, so it asks Tune for no CPU; the Train
workers reserve `train.num_workers` x (resources_per_worker or 1 CPU [+1 GPU]) in their own
placement group. Tune cannot see that, so the number of concurrent trials is capped
(max_concurrent_trials, by default what the cluster fits, keeping one CPU for Ray Data).

Storage (Layout.tune(name), local or s3://):
    <root>/tune/<name>/                 Tune experiment (state, one folder per trial)
    <root>/tune/<name>/sweep.json       the validated sweep + resolved base config
    <root>/tune/<name>/runs/<trial_id>/ each trial's training run (checkpoints, samples)
    <root>/tune/<name>/results.json     ranked trials (+ results.csv, best_config.yaml)
Re-running a sweep name that exists is an error unless --resume: then Tuner.restore continues
unfinished and errored trials (each trial's training run resumes from its last checkpoint).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from facegen_ray.errors import UserError
from facegen_ray.resources import HEAD_NODE_RESOURCE, resources_for
from facegen_ray.runtime import embedded, ensure_ray, require_shared
from facegen_ray.storage import Layout, Storage, StorageError, join
from facegen_ray.train.trainer import FORWARD_ENV, _run_storage, check_dataset, dataset_uri, fit, training_dataset
from facegen_ray.tune.callbacks import stop_tune_forwarding_credentials, trials_bar_callback
from facegen_ray.tune.results import EARLIER_KEY, summarize, trial_row, write_results
from facegen_ray.tune.spec import Sweep, param_space, start_points, trial_config

# Imported where used, not here: ray, metrics.evaluate (torch): in the functions that start trials;
# the driver's checks run without them.

log = logging.getLogger(__name__)

# What a trial's driver function asks Tune for: no CPU (its Train workers reserve theirs, and even
# a fractional CPU here would leave Ray Data's read tasks without a whole CPU on a small node);
# Tune refuses an all-zero request, so a token 1 MiB of the "memory" resource. Pinned to the head
# node (a token of its built-in resource): a trial's driver holds the Ray Train controller, so on a
# worker host that dies it would take the trial with it; on the head, a lost worker host costs
# the trial one Ray Train restart from its checkpoint (train.max_failures), like `facegen train`.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20, HEAD_NODE_RESOURCE: 0.001}
TRIAL_RETRIES = 1  # a trial restarted from its own checkpoint once when its driver fails
SWEEP_FILE = "sweep.json"
# what the trial driver keeps of a rank-0 report (the rest is per-step detail)
REPORT_KEYS = (  # "placement_group": removed by the driver when the trial ends (tune/placement.py)
    *("images_seen", "stage", "resolution", "alpha", "d_loss", "g_loss", "fid", "kid", "kid_std"),
    *("eval_num_gen", "eval_num_real", "eval_s", "final", "placement_group", "train_s"),
)


@dataclass
class TrialSetup:
    """What every trial needs besides its sampled params (shipped once via tune.with_parameters)."""

    base: dict[str, Any]
    paths: dict[str, list[str]]
    data_uri: str
    runs_uri: str
    metric: str
    env: dict[str, str] = field(default_factory=dict)


def _report_callback(metric: str):
    """A Ray Train callback forwarding rank 0's reports that carry `metric` to the Tune trial."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    class MetricReportCallback(TuneReportCallback):
        def __init__(self, metric: str):
            super().__init__()
            self.metric = metric
            # the first report of this driver's run says how much loop time its checkpoint holds
            # (Ray Train restarts under this driver are in time_total_s already: kept from the first)
            self.earlier_s: float | None = None

        def after_report(self, run_context, metrics, checkpoint):
            rank0 = metrics[0] if metrics else {}
            if self.earlier_s is None and "resumed_train_s" in rank0:
                self.earlier_s = float(rank0["resumed_train_s"])
            if self.metric not in rank0:  # a loss log point or a checkpoint without an evaluation
                return
            out = {k: rank0[k] for k in REPORT_KEYS if k in rank0}
            out[EARLIER_KEY] = self.earlier_s or 0.0
            if checkpoint is not None:
                out[CHECKPOINT_PATH_KEY] = checkpoint.path
            self._training_actor_item_queue.put(out)

    return MetricReportCallback(metric)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: one training run with the sampled params (config["params"])."""
    from ray import tune

    for k, v in setup.env.items():  # endpoint, region, progress switch (never credentials: FORWARD_ENV)
        os.environ.setdefault(k, v)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(setup.base, setup.paths, dict(config["params"]), run_name=trial_id)
    storage = Storage(cfg.storage)
    from facegen_ray.progress import configure_ray_data

    configure_ray_data()  # FACEGEN_PROGRESS comes from the driver (setup.env): bars only if it has a terminal
    fit(
        cfg,
        storage,
        training_dataset(storage, setup.data_uri, cfg),
        runs_uri=setup.runs_uri,
        callbacks=[_report_callback(setup.metric)],
        show_bar=False,
    )


# ------------------------------------------------------------------ driver


def _validate_data(sweep: Sweep, storage: Storage) -> tuple[str, dict[str, Any]]:
    """Dataset present, non-empty and at least as large as every model resolution the sweep may use."""
    cfg = sweep.base_cfg
    data_uri = dataset_uri(cfg)
    res_dist = sweep.spec.search_space.get("model.resolution")
    res = int(res_dist.max_value()) if res_dist is not None and res_dist.max_value() else cfg.model.resolution
    return data_uri, check_dataset(storage, data_uri, res)


def trial_resources(sweep: Sweep) -> dict[str, float]:
    """What one trial's Train workers reserve (the largest num_workers the sweep may use)."""
    t = sweep.base_cfg.train
    nw_dist = sweep.spec.search_space.get("train.num_workers")
    workers = int(nw_dist.max_value()) if nw_dist is not None and nw_dist.max_value() else t.num_workers
    # names as Ray has them (case-sensitive: a custom "accel" or "accelerator_type:A100" is not
    # its upper-case spelling), exactly what the Train workers will ask for
    per = {k: float(v) for k, v in (t.resources_per_worker or {}).items()}
    cpu = per.pop("CPU", 1.0)
    gpu = per.pop("GPU", 1.0 if t.use_gpu else 0.0)
    out = {"CPU": cpu * workers, "GPU": gpu * workers}
    out.update({k: v * workers for k, v in per.items()})
    return out


def trial_bundles(sweep: Sweep) -> list[dict[str, float]]:
    """One trial as the autoscaler must place it: a bundle per Train worker (each on some node)
    and one CPU for Ray Data; the same totals as trial_resources."""
    total = trial_resources(sweep)
    t = sweep.base_cfg.train
    nw_dist = sweep.spec.search_space.get("train.num_workers")
    workers = int(nw_dist.max_value()) if nw_dist is not None and nw_dist.max_value() else t.num_workers
    per = {k: v / workers for k, v in total.items() if v > 0}
    return [dict(per) for _ in range(workers)] + [{"CPU": 1.0}]


def concurrency(sweep: Sweep, cluster: dict[str, float]) -> int:
    """max_concurrent_trials: the sweep's value, else how many trials the cluster fits at once
    (one CPU stays free for Ray Data). UserError when not even one trial fits."""
    need = trial_resources(sweep)
    cpus = float(cluster.get("CPU", 0))
    spare = {"CPU": max(cpus - 1, 1.0) if cpus > 1 else cpus}
    fits = math.inf
    for k, v in need.items():
        if v <= 0:
            continue
        have = spare.get(k, float(cluster.get(k, 0)))
        if have < v:
            raise UserError(
                f"one trial needs {v:g} {k} (train.num_workers x per-worker resources) but the Ray cluster has "
                f"{float(cluster.get(k, 0)):g}: lower train.num_workers"
                + (" or set train.use_gpu=false" if k == "GPU" else "")
                + " (with --set)"
            )
        fits = min(fits, int(have // v))
    auto = max(1, int(fits)) if fits != math.inf else 1
    return int(sweep.spec.max_concurrent_trials or auto)


def _scheduler(sweep: Sweep):
    sched = sweep.spec.scheduler
    if sched is None or sched.type == "fifo":
        return None
    from facegen_ray.tune.asha import MarginASHAScheduler

    return MarginASHAScheduler(
        time_attr="images_seen",
        max_t=sweep.max_total_images(),
        grace_period=sched.grace_period_images or int(sweep.base_cfg.train.eval_every_images or 1),
        reduction_factor=sched.reduction_factor,
        brackets=sched.brackets,
        margin=sched.margin,
    )


def _sweep_record(sweep: Sweep) -> dict[str, Any]:
    return {"spec": sweep.spec.model_dump(mode="json"), "base": json.loads(json.dumps(sweep.base, default=str))}


def _prepare_experiment(sweep: Sweep, storage: Storage, exp_uri: str, resume: bool, fs) -> bool:
    """True when an existing experiment is to be restored. Errors for a name clash without
    --resume, or a sweep that changed since the experiment started."""
    from ray.tune import Tuner

    path, _ = _run_storage(storage, exp_uri)
    restorable = Tuner.can_restore(path, storage_filesystem=fs)
    sweep_file = join(exp_uri, SWEEP_FILE)
    if not restorable:
        if storage.exists(sweep_file) and not resume:
            raise UserError(
                f"sweep {sweep.name!r} was started before at {exp_uri} but has no restorable state yet: "
                f"pass --resume to start it again there, or use --name NEW"
            )
        return False
    if not resume:
        raise UserError(
            f"sweep {sweep.name!r} already exists at {exp_uri}: pass --resume to continue it "
            f"(or to re-print its results), or use --name NEW for a new sweep"
        )
    if storage.exists(sweep_file):
        prev = storage.read_json(sweep_file)
        if prev.get("spec", {}).get("search_space") != sweep.spec.model_dump(mode="json")["search_space"]:
            raise UserError(
                f"sweep {sweep.name!r} at {exp_uri} was started with a different search space; "
                f"resume it with the original sweep file or use --name NEW"
            )
    return True


def run_sweep(sweep: Sweep, storage: Storage | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Run (or --resume) the sweep; returns the summary that `facegen tune` prints as JSON.
    Writes results.json/results.csv/best_config.yaml below <root>/tune/<name>/."""
    storage = storage or Storage(sweep.base_cfg.storage)
    layout = Layout(sweep.base_cfg.storage.root)
    exp_uri = layout.tune(sweep.name)
    try:
        storage.check_writable(layout.tunes())
    except StorageError as e:
        raise UserError(f"cannot tune: {e}. Check --root / storage.root and your credentials.") from None
    data_uri, manifest = _validate_data(sweep, storage)

    storage_path, fs = _run_storage(storage, layout.tunes())
    restoring = _prepare_experiment(sweep, storage, exp_uri, resume, fs)  # name clash: error before Ray starts
    ensure_ray()
    shared = {"storage.root": layout.root, "data": data_uri, "eval.inception_path": sweep.base_cfg.eval.inception_path}
    require_shared(shared)

    from facegen_ray.progress import configure_ray_data

    configure_ray_data()
    # an autoscaling cluster may lack the trial's GPU nodes now: ask, wait up to
    # train.resource_wait_s (one trial's workers plus the CPU concurrency() keeps for Ray Data),
    # holding the request while the sweep runs
    with resources_for(
        trial_bundles(sweep),
        0.0 if embedded() else sweep.base_cfg.train.resource_wait_s,  # an embedded Ray never grows
        f"sweep {sweep.name!r} (one trial)",
    ):
        require_shared(shared)  # again: the nodes the wait brought have disks of their own
        grid, ref = _fit_sweep(sweep, storage, exp_uri, data_uri, manifest, restoring, storage_path, fs)
    cpus = trial_resources(sweep)["CPU"]
    rows = [trial_row(r, sweep, exp_uri, cpus) for r in grid]
    summary = summarize(
        rows,
        sweep,
        exp_uri,
        reference={k: ref[k] for k in ("uri", "key", "n_real", "cached")},
        num_gen=sweep.base_cfg.eval.num_gen,
    )
    write_results(storage, exp_uri, summary, sweep)
    return summary


def _fit_sweep(
    sweep: Sweep,
    storage: Storage,
    exp_uri: str,
    data_uri: str,
    manifest: dict[str, Any],
    restoring: bool,
    storage_path: str,
    fs,
):
    """The sweep on the cluster it waited for: (Tune's ResultGrid, the reference statistics' info)."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from facegen_ray.metrics.evaluate import reference_features
    from facegen_ray.tune.asha import RungState, carry_rung_state
    from facegen_ray.tune.placement import ReleasePlacementGroups, ensure_release_callback

    max_conc = concurrency(sweep, ray.cluster_resources())

    # the reference statistics once, here: trials then only read the cache (no race, no repeat)
    ecfg = sweep.base_cfg.eval
    _, ref = reference_features(storage, data_uri, ecfg, use_ray=bool(ecfg.num_real is None or ecfg.num_real > 2000))
    ref.pop("selection", None)
    storage.write_json(
        join(exp_uri, SWEEP_FILE),
        {
            **_sweep_record(sweep),
            "data": data_uri,
            "data_version": manifest.get("version"),
            "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )

    setup = TrialSetup(
        base=sweep.base,
        paths=sweep.paths,
        data_uri=data_uri,
        runs_uri=join(exp_uri, "runs"),
        metric=sweep.spec.metric,
        env={k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)},
    )
    from facegen_ray import progress

    setup.env[progress.ENV] = "1" if progress.enabled() else "0"
    stop_tune_forwarding_credentials()
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), TRIAL_DRIVER_RESOURCES)
    scheduler = _scheduler(sweep)
    run_config = tune.RunConfig(
        name=sweep.name,
        storage_path=storage_path,
        storage_filesystem=fs,
        # worker faults are Ray Train's (train.max_failures); one more try of a whole trial for what
        # fails outside it (its dataset's read tasks on a host that died)
        failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
        callbacks=[
            JsonLoggerCallback(),
            CSVLoggerCallback(),
            *filter(None, [trials_bar_callback(sweep.num_trials(), sweep.spec.metric)]),
            *([RungState(scheduler)] if scheduler is not None else []),  # rungs survive --resume
            ReleasePlacementGroups(),  # what a stopped trial's Ray Train run could not remove
        ],
        verbose=1,
    )
    print(
        f"[facegen] sweep {sweep.name}: {sweep.num_trials()} trials, up to {max_conc} at a time, "
        f"{sweep.spec.metric} on {ecfg.num_gen} generated vs {ref['n_real']} real images; experiment {exp_uri}",
        flush=True,
    )
    if restoring:
        path, _ = _run_storage(storage, exp_uri)
        tuner = tune.Tuner.restore(
            path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space(sweep.spec),
            storage_filesystem=fs,
        )
        carry_rung_state(tuner)
        ensure_release_callback(tuner)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(sweep.spec),
            tune_config=tune.TuneConfig(
                metric=sweep.spec.metric,
                mode="min",
                num_samples=sweep.spec.num_samples,
                scheduler=scheduler,
                time_budget_s=sweep.spec.time_budget_s,
                search_alg=BasicVariantGenerator(
                    points_to_evaluate=start_points(sweep.spec) or None,
                    random_state=sweep.spec.seed,
                    max_concurrent=max_conc,
                ),
                trial_dirname_creator=lambda trial: trial.trial_id,
                trial_name_creator=lambda trial: trial.trial_id,
            ),
            run_config=run_config,
        )
    return tuner.fit(), ref


__all__ = [
    "TrialSetup",
    "concurrency",
    "run_sweep",
    "run_trial",
    "trial_resources",
]
