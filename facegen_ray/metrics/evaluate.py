"""Evaluation orchestration: the metrics of a generator against a dataset version.

`evaluate_model` runs its steps in order: check the request, open the generator, the
reference features (metrics/reals.py, cached in storage next to the dataset's manifest), the
generated features (metrics/generated.py), then the metrics on top of them. Two execution paths
share the same functions: in-process (tests, the promotion gate, small runs) and Ray (reals
via Ray Data, generated images from actors); both select the same reals, seeds and features,
which the gate and periodic FID rely on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from facegen_ray.config import EvalConfig
from facegen_ray.errors import UserError
from facegen_ray.metrics.conditional import attribute_accuracy, conditional_fid
from facegen_ray.metrics.diversity import diversity_report
from facegen_ray.metrics.fid import feature_stats, fid_to_stats
from facegen_ray.metrics.generated import (
    GeneratedFeatureWorker,
    conditioning_for,
    generate_uint8,
    generated_features,
)
from facegen_ray.metrics.inception import EXTRACTOR_ID, IS_UNAVAILABLE_REASON, InceptionExtractor, resolve_mode
from facegen_ray.metrics.kid import kernel_inception_distance
from facegen_ray.metrics.memorisation import contact_sheet, memorisation_report
from facegen_ray.metrics.precision_recall import precision_recall
from facegen_ray.metrics.reals import (
    RealSelection,
    _Progress,  # noqa: F401 - re-exported (tests)
    _ray_gpu_share,
    data_labels,
    read_selected_images,
    reference_features,
    reference_key,
    select_reals,
)
from facegen_ray.metrics.sweep_plot import plot_sweep
from facegen_ray.models.attributes import load_tagger
from facegen_ray.models.export import load_model_dir
from facegen_ray.storage import Storage

# Imported where used, not here: ray (only with use_ray).

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- metrics

# Names --metrics accepts (EvalConfig.metrics): the first four from the features alone.
FEATURE_METRICS = ("fid", "kid", "pr", "is")
METRICS = (*FEATURE_METRICS, "diversity", "memorisation", "cfid", "attr_acc")


def compute_metrics(
    gen: np.ndarray,
    real: np.ndarray,
    metrics: Sequence[str],
    cfg: EvalConfig,
    real_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metric values from generated [N,2048] and real [M,2048] features."""
    out: dict[str, Any] = {"num_gen": int(len(gen)), "num_real": int(len(real))}
    if "fid" in metrics:
        mu_r, s_r = real_stats if real_stats is not None else feature_stats(real)
        out["fid"] = fid_to_stats(gen, mu_r, s_r)
    if "kid" in metrics:
        out["kid"] = kernel_inception_distance(gen, real, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    if "pr" in metrics:
        pr = precision_recall(gen, real, cfg.pr_k)
        out["precision"], out["recall"] = pr["precision"], pr["recall"]
        out["pr_k"] = cfg.pr_k
    if "is" in metrics:
        out["is"] = {"unavailable": IS_UNAVAILABLE_REASON}
    return out


@dataclass
class _Run:
    """What the steps of one evaluate_model call share."""

    storage: Storage
    model_uri: str
    data_uri: str
    cfg: EvalConfig
    metrics: list[str]
    use_ray: bool
    G: torch.nn.Module
    model_cfg: Any
    meta: dict[str, Any]
    local: GeneratedFeatureWorker | None  # in-process: the generator and the Inception
    tagger: Any = None
    actors: list | None = None  # Ray: the generated-feature actors
    num_gpus: float = 0.0

    @property
    def extractor(self) -> InceptionExtractor | None:
        return self.local.extractor if self.local else None


def check_metrics_request(metrics: Sequence[str], attribute_model: str | None) -> list[str]:
    """Step 1: the metric names are known, and those that read attributes have a classifier."""
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise UserError(f"unknown metrics {unknown}; choose from {','.join(METRICS)}")
    for name in ("diversity", "attr_acc"):
        if name in metrics and not attribute_model:
            raise UserError(
                f"the {name} metric needs --attribute-model URI (train one with `facegen attributes train`)"
            )
    return metrics


def open_generator(
    storage: Storage, model_uri: str, data_uri: str, cfg: EvalConfig, metrics: list[str], use_ray: bool
) -> _Run:
    """Step 2: the generator (in-process: with the Inception beside it), refusing conditional
    metrics on an unconditional model."""
    local = (
        GeneratedFeatureWorker(storage, model_uri, cfg.inception_path, cfg.device, cfg.batch_size, cfg.inception_mode)
        if not use_ray
        else None
    )
    G, model_cfg, meta = (local.G, local.model_cfg, local.metadata) if local else load_model_dir(storage, model_uri)
    conditional_only = [m for m in metrics if m in ("cfid", "attr_acc")]
    if conditional_only and not getattr(G, "conditional", False):
        raise UserError(
            f"{' and '.join(conditional_only)} measure conditional generators (model.conditional: true); "
            f"{model_uri} is unconditional: drop {','.join(conditional_only)} from --metrics"
        )
    return _Run(storage, model_uri, data_uri, cfg, metrics, use_ray, G, model_cfg, meta, local)


def start_actors(run: _Run) -> None:
    """Step 4 (Ray only): the actors that generate images and extract their features."""
    import ray

    cfg = run.cfg
    run.num_gpus = _ray_gpu_share(cfg)
    Remote = ray.remote(num_cpus=1, num_gpus=run.num_gpus)(GeneratedFeatureWorker)
    run.actors = [
        Remote.remote(
            run.storage,
            run.model_uri,
            cfg.inception_path,
            "cuda" if run.num_gpus else "cpu",
            cfg.batch_size,
            cfg.inception_mode,
        )
        for _ in range(cfg.num_actors)
    ]


def stop_actors(run: _Run) -> None:
    if run.actors:
        import ray

        for a in run.actors:
            ray.kill(a)


def result_header(run: _Run, info: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """What was measured: model, data and reference versions, seeds, extractor."""
    cfg = run.cfg
    return {
        "model": run.model_uri,
        "model_version": run.meta.get("version"),
        "data": run.data_uri,
        "data_version": info["version"],
        "resolution": info["resolution"],
        "truncation": cfg.truncation,
        "seeds": [seeds[0], seeds[-1]],
        "reference": {k: info[k] for k in ("uri", "key", "cached")},
        "extractor": EXTRACTOR_ID,
        "inception_mode": cfg.inception_mode,
        # what "auto" became for the generated images (local: this process; Ray: as an actor on
        # this node would decide; actors elsewhere decide for themselves, with the same features)
        "inception_runs": run.local.extractor.runs
        if run.local
        else resolve_mode(cfg.inception_mode, "cuda" if run.num_gpus else "cpu"),
    }


def labelled_metrics(
    run: _Run,
    result: dict[str, Any],
    gen: np.ndarray,
    imgs: np.ndarray | None,
    real: np.ndarray,
    labels: dict[str, np.ndarray] | None,
    seeds: list[int],
    c: torch.Tensor | None,
    sheet_uri: str | None,
) -> None:
    """Step 6: the metrics beyond the features alone: cfid, attr_acc, memorisation, diversity."""
    metrics, cfg, buckets = run.metrics, run.cfg, run.model_cfg.age_buckets
    if "cfid" in metrics:
        result["cfid"] = conditional_fid(gen, c.numpy(), real, labels, buckets, cfg.cfid_min_images)
        log.info(
            "cfid: mean %s over %d group(s), %d skipped (too few images)",
            _num(result["cfid"]["mean"]),
            result["cfid"]["groups_computed"],
            result["cfid"]["groups_skipped"],
        )
    if "attr_acc" in metrics:
        acc = result["attr_acc"] = _attribute_accuracy(run.tagger, imgs, c.numpy(), buckets)
        log.info(
            "attr_acc: overall %s (age %s, gender %s, race %s)",
            _num(acc["overall"]["accuracy"]),
            *(_num(acc[k]["accuracy"]) for k in ("age", "gender", "race")),
        )
    if "memorisation" in metrics:
        result["memorisation"] = _memorisation(
            run.storage, run.data_uri, cfg, run.G, seeds, c, gen, run.use_ray, run.extractor, sheet_uri
        )
    if "diversity" in metrics:
        result["diversity"] = diversity_report(run.tagger, imgs, labels)


def truncation_sweep(
    run: _Run,
    sweep: Sequence[float],
    seeds: list[int],
    c: torch.Tensor | None,
    real: np.ndarray,
    mu_sigma: tuple[np.ndarray, np.ndarray] | None,
) -> list[dict[str, Any]]:
    """Step 7: FID and precision/recall at each ψ, on the same seeds and reals."""
    rows = []
    for psi in sweep:
        g, _ = generated_features(seeds, float(psi), run.cfg, c=c, actors=run.actors, local=run.local)
        row = {"truncation": float(psi)}
        row.update(compute_metrics(g, real, ["fid", "pr"], run.cfg, mu_sigma))
        rows.append(row)
    return rows


def evaluate_model(
    storage: Storage,
    model_uri: str,
    data_uri: str,
    cfg: EvalConfig,
    *,
    metrics: Sequence[str] | None = None,
    sweep: Sequence[float] | None = None,
    attribute_model: str | None = None,
    use_ray: bool = False,
    sheet_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluate the generator in `model_uri` against the dataset at `data_uri`.

    metrics ⊆ METRICS; with `sweep`, also FID and precision/recall for each ψ (under "sweep").
    cfid / attr_acc (metrics/conditional.py) need a conditional model; attr_acc and diversity
    need `attribute_model`. Returns a JSON-able dict (n_gen/n_real with the metrics).
    """
    metrics = check_metrics_request(metrics or cfg.metrics, attribute_model)
    t0 = time.time()
    run = open_generator(storage, model_uri, data_uri, cfg, metrics, use_ray)
    if "diversity" in metrics or "attr_acc" in metrics:
        run.tagger = load_tagger(storage, attribute_model)

    # step 3: the reals, and their labels where a metric or the conditioning reads them
    real, info = reference_features(storage, data_uri, cfg, use_ray=use_ray, extractor=run.extractor)
    sel: RealSelection = info.pop("selection")
    wants_labels = run.tagger is not None or getattr(run.G, "conditional", False)
    labels = data_labels(storage, sel, run.model_cfg.age_buckets) if wants_labels else None
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_gen))
    c = conditioning_for(run.G, labels, len(seeds), cfg.seed)

    if use_ray:
        start_actors(run)
    try:
        # step 5: the generated features, and the metrics on features alone
        gen, imgs = generated_features(
            seeds, cfg.truncation, cfg, c=c, keep_images=run.tagger is not None, actors=run.actors, local=run.local
        )
        mu_sigma = feature_stats(real) if "fid" in metrics else None
        result = result_header(run, info, seeds)
        result.update(compute_metrics(gen, real, [m for m in metrics if m in FEATURE_METRICS], cfg, mu_sigma))
        labelled_metrics(run, result, gen, imgs, real, labels, seeds, c, sheet_uri)
        if sweep:
            result["sweep"] = truncation_sweep(run, sweep, seeds, c, real, mu_sigma)
    finally:
        stop_actors(run)
    result["elapsed_s"] = round(time.time() - t0, 2)
    return result


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.4g}"


def _attribute_accuracy(tagger, imgs: np.ndarray, c: np.ndarray, age_buckets: Sequence[int]) -> dict[str, Any]:
    """The classifier on the generated faces vs the conditions they were asked for. Its age head
    is read only when it buckets ages as the model does."""
    skip = {}
    if list(tagger.age_buckets) != list(age_buckets):
        skip["age"] = (
            f"the attribute model's age buckets {list(tagger.age_buckets)} differ from the generator's "
            f"{list(age_buckets)}"
        )
    return attribute_accuracy(tagger.predict_buckets(imgs), c, skip, tagger.meta.get("held_out"))


def _memorisation(
    storage: Storage,
    data_uri: str,
    cfg: EvalConfig,
    G: torch.nn.Module,
    seeds: list[int],
    c: torch.Tensor | None,
    gen: np.ndarray,
    use_ray: bool,
    extractor: InceptionExtractor | None,
    sheet_uri: str | None,
) -> dict[str, Any]:
    """Nearest-training-neighbour distances of the generated faces vs held-out reals; the
    contact sheet of the closest pairs goes to sheet_uri (see metrics/memorisation.py)."""
    tcfg = EvalConfig.model_validate({**cfg.model_dump(), "num_real": cfg.memorisation_num_train})  # validated
    train, tinfo = reference_features(storage, data_uri, tcfg, use_ray=use_ray, extractor=extractor)
    hold, _ = reference_features(storage, data_uri, cfg, use_ray=use_ray, extractor=extractor, split="holdout")
    rep = memorisation_report(gen, train, hold, percentile=cfg.memorisation_percentile, worst=cfg.memorisation_sheet)
    pairs = rep.pop("_pairs")
    rep["closest"] = [
        {
            "seed": seeds[g],
            "train_sha256": tinfo["selection"].hashes[t],
            "distance": d,
            "suspected": d < rep["threshold"],
        }
        for g, t, d in pairs
    ]
    if sheet_uri and pairs:
        gi = [g for g, _, _ in pairs]
        gimgs = generate_uint8(
            G,
            [seeds[g] for g in gi],
            cfg.truncation,
            c=c[gi] if c is not None else None,
            batch_size=cfg.batch_size,
            device="cpu" if extractor is None else extractor.device,
        )
        timgs = read_selected_images(storage, tinfo["selection"], [t for _, t, _ in pairs])
        storage.write_bytes(
            sheet_uri, contact_sheet([(g, t, d, d < rep["threshold"]) for g, t, (_, _, d) in zip(gimgs, timgs, pairs)])
        )
        rep["contact_sheet"] = sheet_uri
    return rep


__all__ = [
    "select_reals",
    "reference_key",
    "reference_features",
    "data_labels",
    "generate_uint8",
    "GeneratedFeatureWorker",
    "generated_features",
    "compute_metrics",
    "evaluate_model",
    "plot_sweep",
    "METRICS",
    "FEATURE_METRICS",
]
