"""Evaluation orchestration: reference features of a dataset version (cached in storage next
to its manifest), features of a generator's samples, and the metrics on top of them.

Two execution paths share the same functions: in-process (tests, the promotion gate, small
runs) and Ray (reals via Ray Data map_batches over the shards with a pool of Inception actors;
generated images from actors that each hold the generator and the Inception).

Over 400 lines: both paths live side by side on purpose, so that they visibly select the same
reals, seeds and features (the gate and periodic FID rely on the two agreeing).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from facegen_ray.config import EvalConfig
from facegen_ray.data.ingest import worker_filesystem, worker_filesystem_path
from facegen_ray.data.shards import decode_image, holdout_uris, read_manifest, shard_uris
from facegen_ray.errors import UserError
from facegen_ray.metrics.conditional import attribute_accuracy, conditional_fid
from facegen_ray.metrics.diversity import diversity_report
from facegen_ray.metrics.fid import feature_stats, fid_to_stats
from facegen_ray.metrics.inception import (
    EXTRACTOR_ID,
    IS_UNAVAILABLE_REASON,
    InceptionExtractor,
    resolve_device,
    resolve_mode,
)
from facegen_ray.metrics.kid import kernel_inception_distance
from facegen_ray.metrics.memorisation import contact_sheet, memorisation_report
from facegen_ray.metrics.precision_recall import precision_recall
from facegen_ray.models.attributes import load_tagger
from facegen_ray.models.conditioning import age_to_bucket
from facegen_ray.models.export import load_model_dir
from facegen_ray.models.sampling import generate as sample_images
from facegen_ray.storage import Layout, Storage

# Imported where used, not here: ray (only with use_ray), matplotlib (only plot_sweep), tqdm
# (optional: a log line without it).

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar on stderr in a terminal (facegen_ray.progress); elsewhere (logs, CI, Ray
    workers) a log line every ~10% instead."""

    def __init__(self, total: int, desc: str):
        from facegen_ray import progress

        self.total, self.desc, self.n, self._next = total, desc, 0, 0.1
        self._bar = progress.bar(total=total, desc=desc, unit="img") if progress.enabled() else None

    def update(self, k: int) -> None:
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
        elif self.total and self.n / self.total >= self._next:
            log.info("%s: %d/%d images", self.desc, self.n, self.total)
            while self._next <= self.n / self.total:
                self._next += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------- real images


@dataclass
class RealSelection:
    """Which distinct shard rows form the reference set (same rule as read_images_uint8)."""

    manifest: dict[str, Any]
    shards: list[str]
    rows: list[tuple[int, int]]  # (shard index, row index), in file order
    hashes: list[str]


def select_reals(
    storage: Storage, data_uri: str, num_real: int | None, seed: int, split: str = "train"
) -> RealSelection:
    """Distinct images (by sha256) of the dataset version; a seeded subset of num_real of them.
    split "holdout": the held-out rows (`facegen prepare --holdout-fraction`) instead."""
    manifest = read_manifest(storage, data_uri)
    if split == "holdout":
        uris = holdout_uris(manifest)
        if not uris:
            raise UserError(
                f"dataset {data_uri} has no held-out split: prepare it with "
                "`facegen prepare SOURCE DEST --holdout-fraction 0.05` (memorisation needs one)"
            )
    else:
        uris = shard_uris(manifest)
    if not uris or int(manifest.get("num_images") or 0) <= 0:
        raise UserError(f"dataset {data_uri} is empty: run `facegen prepare` on a source with faces")
    fs, _ = worker_filesystem(storage, uris[0])
    seen: set[str] = set()
    where: list[tuple[int, int]] = []
    hashes: list[str] = []
    for i, u in enumerate(uris):
        for j, h in enumerate(
            pq.read_table(worker_filesystem_path(u), filesystem=fs, columns=["sha256"]).column("sha256").to_pylist()
        ):
            if h not in seen:
                seen.add(h)
                where.append((i, j))
                hashes.append(h)
    order = np.arange(len(where))
    if num_real is not None and num_real < len(where):
        order = np.sort(np.random.default_rng(seed).choice(len(where), size=int(num_real), replace=False))
    return RealSelection(manifest, uris, [where[k] for k in order], [hashes[k] for k in order])


def reference_key(manifest: dict[str, Any], n_real: int, seed: int, split: str = "train") -> str:
    """Cache key: dataset version, resolution, sample count (+ subset seed), extractor id (+ split)."""
    key = f"v{manifest['version']}-r{manifest['resolution']}-n{n_real}-s{seed}-{EXTRACTOR_ID}"
    return key if split == "train" else f"{key}-{split}"


def read_selected_images(storage: Storage, sel: RealSelection, indices: Sequence[int]) -> np.ndarray:
    """uint8 [k,H,W,3]: the images of sel.rows[i] for i in indices (in that order)."""
    fs, _ = worker_filesystem(storage, sel.shards[0])
    cols: dict[int, Any] = {}
    out = []
    for k in indices:
        i, j = sel.rows[int(k)]
        if i not in cols:
            cols[i] = pq.read_table(worker_filesystem_path(sel.shards[i]), filesystem=fs, columns=["image"]).column(
                "image"
            )
        out.append(decode_image(cols[i][j].as_py()))
    return np.stack(out)


def data_labels(storage: Storage, sel: RealSelection, age_buckets: Sequence[int]) -> dict[str, np.ndarray]:
    """Labels of the selected reals: {"age" (bucket index), "gender", "race"}: int64 [n], -1 unknown."""
    fs, _ = worker_filesystem(storage, sel.shards[0])
    tables: dict[int, dict[str, list]] = {}
    out: dict[str, list[int]] = {"age": [], "gender": [], "race": []}
    for i, j in sel.rows:
        if i not in tables:
            t = pq.read_table(worker_filesystem_path(sel.shards[i]), filesystem=fs, columns=["age", "gender", "race"])
            tables[i] = {c: t.column(c).to_pylist() for c in ("age", "gender", "race")}
        a, g, r = (tables[i][c][j] for c in ("age", "gender", "race"))
        out["age"].append(age_to_bucket(a, age_buckets))
        out["gender"].append(-1 if g is None else int(g))
        out["race"].append(-1 if r is None else int(r))
    return {k: np.asarray(v, np.int64) for k, v in out.items()}


def _real_features_local(storage: Storage, sel: RealSelection, extractor: InceptionExtractor, batch: int) -> np.ndarray:
    fs, _ = worker_filesystem(storage, sel.shards[0])
    wanted: dict[int, list[int]] = {}
    for i, j in sel.rows:
        wanted.setdefault(i, []).append(j)
    feats: list[np.ndarray] = []
    bar = _Progress(len(sel.rows), "inception(real)")
    for i in sorted(wanted):
        col = pq.read_table(worker_filesystem_path(sel.shards[i]), filesystem=fs, columns=["image"]).column("image")
        rows = wanted[i]
        for s in range(0, len(rows), batch):
            imgs = np.stack([decode_image(col[j].as_py()) for j in rows[s : s + batch]])  # [B,H,W,3]
            feats.append(extractor(imgs))
            bar.update(len(imgs))
    bar.close()
    return np.concatenate(feats)


class _InceptionBatch:
    """Ray Data callable class: shard rows (image bytes, sha256) -> sha256 + features [B,2048],
    keeping only the selected hashes."""

    def __init__(self, extractor: InceptionExtractor, wanted: set[str]):
        self.extractor = extractor
        self.wanted = wanted

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = [k for k, h in enumerate(batch["sha256"]) if h in self.wanted]
        if not keep:
            return {"sha256": np.zeros(0, dtype=object), "features": np.zeros((0, 2048), np.float64)}
        imgs = np.stack([decode_image(batch["image"][k]) for k in keep])
        return {
            "sha256": np.asarray([batch["sha256"][k] for k in keep], dtype=object),
            "features": self.extractor(imgs),
        }


def _ray_gpu_share(cfg: EvalConfig) -> float:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    if cfg.device == "cpu" or gpus <= 0:
        return 0.0
    return 1.0 if gpus >= cfg.num_actors else gpus / cfg.num_actors


def _real_features_ray(storage: Storage, sel: RealSelection, cfg: EvalConfig) -> np.ndarray:
    import ray

    fs, _ = worker_filesystem(storage, sel.shards[0])
    ds = ray.data.read_parquet(
        [worker_filesystem_path(u) for u in sel.shards], filesystem=fs, columns=["image", "sha256"]
    )
    num_gpus = _ray_gpu_share(cfg)
    extractor = InceptionExtractor(
        cfg.inception_path, "cuda" if num_gpus else "cpu", cfg.batch_size, cfg.inception_mode, storage=storage
    )
    ds = ds.map_batches(
        _InceptionBatch,
        fn_constructor_args=(extractor, set(sel.hashes)),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        concurrency=cfg.num_actors,
        num_gpus=num_gpus or None,
    )
    by_hash: dict[str, np.ndarray] = {}
    bar = _Progress(len(sel.hashes), "inception(real, ray)")
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):
        for h, f in zip(b["sha256"], b["features"]):
            if h not in by_hash:
                by_hash[h] = f
                bar.update(1)
    bar.close()
    missing = [h for h in sel.hashes if h not in by_hash]
    if missing:
        raise RuntimeError(f"ray extraction lost {len(missing)} selected images")
    return np.stack([by_hash[h] for h in sel.hashes])


def reference_features(
    storage: Storage,
    data_uri: str,
    cfg: EvalConfig,
    *,
    use_ray: bool = False,
    extractor: InceptionExtractor | None = None,
    split: str = "train",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features [n_real,2048] (float64 of stored float32) of the dataset version's reals, cached
    at Layout.reference_stats(version, key) together with their mean/covariance.

    Returns (features, info) where info has n_real, key, uri, cached (bool), version, resolution.
    """
    sel = select_reals(storage, data_uri, cfg.num_real if split == "train" else None, cfg.seed, split)
    manifest = sel.manifest
    key = reference_key(manifest, len(sel.rows), cfg.seed, split)
    uri = Layout.reference_stats(manifest["path"], key)
    info = {
        "n_real": len(sel.rows),
        "key": key,
        "uri": uri,
        "version": manifest["version"],
        "resolution": manifest["resolution"],
        "selection": sel,
    }
    if storage.exists(uri):
        with np.load(io.BytesIO(storage.read_bytes(uri))) as z:
            feats = z["features"].astype(np.float64)
        if len(feats) == len(sel.rows):
            log.info("reference statistics: cache hit %s", uri)
            return feats, {**info, "cached": True}
        log.warning("reference statistics %s hold %d rows, expected %d: recomputing", uri, len(feats), len(sel.rows))
    t0 = time.time()
    if use_ray:
        feats = _real_features_ray(storage, sel, cfg)
    else:
        extractor = extractor or InceptionExtractor(
            cfg.inception_path, cfg.device, cfg.batch_size, cfg.inception_mode, storage=storage
        )
        feats = _real_features_local(storage, sel, extractor, cfg.batch_size)
    feats = feats.astype(np.float32)
    mu, sigma = feature_stats(feats)
    buf = io.BytesIO()
    np.savez(buf, features=feats, mu=mu, sigma=sigma, n=np.int64(len(feats)))
    storage.write_bytes(uri, buf.getvalue())
    log.info("reference statistics: %d reals in %.1fs -> %s", len(feats), time.time() - t0, uri)
    return feats.astype(np.float64), {**info, "cached": False}


# ---------------------------------------------------------------- generated images


def generate_uint8(
    G: torch.nn.Module,
    seeds: Sequence[int],
    truncation: float,
    *,
    c: torch.Tensor | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Images for seeds with truncation ψ and const noise -> uint8 [N,R,R,3] — the same
    seed -> face mapping as serving (facegen_ray.models.sampling)."""
    if not len(seeds):
        return np.zeros((0, 0, 0, 3), np.uint8)
    return sample_images(G, list(seeds), truncation, c=c, device=device, batch_size=batch_size)


def conditioning_for(
    G: torch.nn.Module, labels: dict[str, np.ndarray] | None, n: int, seed: int
) -> torch.Tensor | None:
    """Conditional models: attribute rows drawn (seeded) from the data's labels, [n,3]; else None."""
    if not getattr(G, "conditional", False) or labels is None or len(labels["age"]) == 0:
        return None
    idx = np.random.default_rng(seed + 1).integers(0, len(labels["age"]), size=n)
    return torch.as_tensor(
        np.stack([labels["age"][idx], labels["gender"][idx], labels["race"][idx]], 1), dtype=torch.long
    )


class GeneratedFeatureWorker:
    """Holds a generator and the Inception; seeds -> (features [n,2048], uint8 images or None).
    Used directly in-process and as a Ray actor (ray.remote(GeneratedFeatureWorker))."""

    def __init__(
        self,
        storage: Storage,
        model_uri: str,
        inception_path: str | None,
        device: str,
        batch_size: int,
        inception_mode: str = "auto",
    ):
        self.device = resolve_device(device)
        self.G, self.model_cfg, self.metadata = load_model_dir(storage, model_uri, device=self.device)
        self.extractor = InceptionExtractor(inception_path, self.device, batch_size, inception_mode, storage=storage)
        self.batch_size = batch_size

    def run(
        self, seeds: Sequence[int], truncation: float, c: torch.Tensor | None = None, keep_images: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        imgs = generate_uint8(self.G, seeds, truncation, c=c, batch_size=self.batch_size, device=self.device)
        return self.extractor(imgs), (imgs if keep_images else None)


def generated_features(
    seeds: Sequence[int],
    truncation: float,
    cfg: EvalConfig,
    *,
    c: torch.Tensor | None = None,
    keep_images: bool = False,
    actors: list | None = None,
    local: GeneratedFeatureWorker | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of the generator's images for `seeds`, from Ray actors (when given) or `local`."""
    chunk = max(1, cfg.batch_size)
    parts = [list(seeds[i : i + chunk]) for i in range(0, len(seeds), chunk)]
    cs = [c[i : i + chunk] if c is not None else None for i in range(0, len(seeds), chunk)]
    bar = _Progress(len(seeds), f"inception(generated, psi={truncation})")
    results: list[tuple[np.ndarray, np.ndarray | None]] = []
    if actors:
        from ray.util import ActorPool

        pool = ActorPool(actors)
        for res in pool.map(lambda a, v: a.run.remote(v[0], truncation, v[1], keep_images), list(zip(parts, cs))):
            results.append(res)
            bar.update(len(res[0]))
    else:
        assert local is not None
        for p, cc in zip(parts, cs):
            results.append(local.run(p, truncation, cc, keep_images))
            bar.update(len(p))
    bar.close()
    feats = np.concatenate([r[0] for r in results])
    imgs = np.concatenate([r[1] for r in results]) if keep_images else None
    return feats, imgs


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
    metrics = list(metrics or cfg.metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise UserError(f"unknown metrics {unknown}; choose from {','.join(METRICS)}")
    tagger = None
    for name in ("diversity", "attr_acc"):
        if name in metrics and not attribute_model:
            raise UserError(
                f"the {name} metric needs --attribute-model URI (train one with `facegen attributes train`)"
            )
    t0 = time.time()
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
    if "diversity" in metrics or "attr_acc" in metrics:
        tagger = load_tagger(storage, attribute_model)
    real, info = reference_features(
        storage, data_uri, cfg, use_ray=use_ray, extractor=local.extractor if local else None
    )
    sel: RealSelection = info.pop("selection")

    labels = (
        data_labels(storage, sel, model_cfg.age_buckets)
        if (tagger is not None or getattr(G, "conditional", False))
        else None
    )
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_gen))
    c = conditioning_for(G, labels, len(seeds), cfg.seed)
    actors = None
    if use_ray:
        import ray

        num_gpus = _ray_gpu_share(cfg)
        Remote = ray.remote(num_cpus=1, num_gpus=num_gpus)(GeneratedFeatureWorker)
        actors = [
            Remote.remote(
                storage,
                model_uri,
                cfg.inception_path,
                "cuda" if num_gpus else "cpu",
                cfg.batch_size,
                cfg.inception_mode,
            )
            for _ in range(cfg.num_actors)
        ]
    try:
        gen, imgs = generated_features(
            seeds, cfg.truncation, cfg, c=c, keep_images=tagger is not None, actors=actors, local=local
        )
        mu_sigma = feature_stats(real) if "fid" in metrics else None
        result: dict[str, Any] = {
            "model": model_uri,
            "model_version": meta.get("version"),
            "data": data_uri,
            "data_version": info["version"],
            "resolution": info["resolution"],
            "truncation": cfg.truncation,
            "seeds": [seeds[0], seeds[-1]],
            "reference": {k: info[k] for k in ("uri", "key", "cached")},
            "extractor": EXTRACTOR_ID,
            "inception_mode": cfg.inception_mode,
            # what "auto" became for the generated images (local: this process; Ray: as an actor on
            # this node would decide; actors elsewhere decide for themselves, with the same features)
            "inception_runs": local.extractor.runs
            if local
            else resolve_mode(cfg.inception_mode, "cuda" if num_gpus else "cpu"),
        }
        result.update(compute_metrics(gen, real, [m for m in metrics if m in FEATURE_METRICS], cfg, mu_sigma))
        if "cfid" in metrics:
            result["cfid"] = conditional_fid(gen, c.numpy(), real, labels, model_cfg.age_buckets, cfg.cfid_min_images)
            log.info(
                "cfid: mean %s over %d group(s), %d skipped (too few images)",
                _num(result["cfid"]["mean"]),
                result["cfid"]["groups_computed"],
                result["cfid"]["groups_skipped"],
            )
        if "attr_acc" in metrics:
            acc = result["attr_acc"] = _attribute_accuracy(tagger, imgs, c.numpy(), model_cfg.age_buckets)
            log.info(
                "attr_acc: overall %s (age %s, gender %s, race %s)",
                _num(acc["overall"]["accuracy"]),
                *(_num(acc[k]["accuracy"]) for k in ("age", "gender", "race")),
            )
        if "memorisation" in metrics:
            result["memorisation"] = _memorisation(
                storage, data_uri, cfg, G, seeds, c, gen, use_ray, local.extractor if local else None, sheet_uri
            )
        if "diversity" in metrics:
            result["diversity"] = diversity_report(tagger, imgs, labels)
        if sweep:
            result["sweep"] = []
            for psi in sweep:
                g, _ = generated_features(seeds, float(psi), cfg, c=c, actors=actors, local=local)
                row = {"truncation": float(psi)}
                row.update(compute_metrics(g, real, ["fid", "pr"], cfg, mu_sigma))
                result["sweep"].append(row)
    finally:
        if actors:
            import ray

            for a in actors:
                ray.kill(a)
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


def plot_sweep(rows: Sequence[dict[str, Any]]) -> bytes:
    """PNG bytes: FID (left axis) and precision/recall (right axis) against ψ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psi = [r["truncation"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(psi, [r["fid"] for r in rows], "o-", color="tab:red", label="FID")
    ax.set_xlabel("truncation ψ")
    ax.set_ylabel("FID (lower is better)")
    ax2 = ax.twinx()
    ax2.plot(psi, [r["precision"] for r in rows], "s--", color="tab:blue", label="precision")
    ax2.plot(psi, [r["recall"] for r in rows], "^--", color="tab:green", label="recall")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("precision / recall")
    n = rows[0]["num_gen"] if rows else 0
    ax.set_title(f"truncation sweep ({n} generated)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


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
