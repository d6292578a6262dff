"""The reference set of an evaluation: which real images of a dataset version (distinct by
sha256, a seeded subset), their labels, and their Inception features, cached in storage next
to the dataset's manifest. Two paths select the same reals and give the same features:
in-process, and Ray Data map_batches over the shards with a pool of Inception actors.
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

from facegen_ray.config import EvalConfig
from facegen_ray.data.ingest import worker_filesystem, worker_filesystem_path
from facegen_ray.data.shards import decode_image, holdout_uris, read_manifest, shard_uris
from facegen_ray.errors import UserError
from facegen_ray.metrics.fid import feature_stats
from facegen_ray.metrics.inception import EXTRACTOR_ID, InceptionExtractor
from facegen_ray.models.conditioning import age_to_bucket
from facegen_ray.storage import Layout, Storage

# Imported where used, not here: ray (only with use_ray), tqdm (optional: a log line without it).

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
