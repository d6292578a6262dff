"""`facegen prepare`: raw face images -> a new version of validated Parquet shards.

`prepare` runs these steps (the functions below, the row UDFs in prepare_rows.py):

    check_dest, plan (driver: list sources, --limit)         ingest.plan_sources
      -> process_sources: read + decode/validate/crop/resize/hash + quality filter, materialized
         (Ray Data; transforms.process_batch, quality.py: blurry, near-constant, too small)
      -> select_rows: count rejects, find duplicates, set the held-out faces aside (driver,
         metadata only)
      -> drop rejects + duplicates, split_holdout; tag unlabelled rows (optional, actor)
      -> plan_balance (weights or repeats), shard rows (Ray Data)
      -> write Parquet + manifests (shards.write_version), then the --report page
         (prepare_report.py)

Dedupe is a global step: the driver pulls the metadata columns (no image bytes: ~100 bytes a
row, so ~10 MB for 100k images) and keeps the first row per content hash in source-name
order. The processed images stay in Ray's object store between the two passes (spilled to
disk when larger than memory), so every file is decoded exactly once.

With --report PATH, the driver also pulls the images of a few dozen of the quality filter's
rejects (and of the kept faces just above each threshold) for report.py's contact sheets.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from facegen_ray.config import FacegenConfig
from facegen_ray.data import attributes as attrs
from facegen_ray.data import quality as qual
from facegen_ray.data.ingest import plan_sources, read_sources
from facegen_ray.data.prepare_report import (  # noqa: F401 - quality_line, report_png_uri: re-exported
    _report_tiles,
    quality_line,
    quality_summary,
    report_png_uri,
    write_report,
)
from facegen_ray.data.prepare_rows import _filter_rows, _rows_per_shard, _split_rows, _to_shard_rows
from facegen_ray.data.shards import in_holdout, write_version
from facegen_ray.data.transforms import REJECT_REASONS, process_batch
from facegen_ray.errors import UserError
from facegen_ray.runtime import ensure_ray, require_shared
from facegen_ray.storage import Layout, Storage, StorageError, normalize

# Imported where used, not here: ray: after ensure_ray() in prepare.

log = logging.getLogger(__name__)

META_COLUMNS = [
    "source",
    "sha256",
    "reject",
    "upscaled",
    "age",
    "gender",
    "race",
    "label_source",
    "nbytes",
    "crop",
    "contrast",
    "sharpness",
]


@dataclass
class PrepareResult:
    """What a prepare run wrote: the committed manifest and where it lives."""

    manifest: dict[str, Any]
    dataset_uri: str
    version_uri: str
    manifest_uri: str
    elapsed_s: float
    report_uri: str | None = None


def check_dest(storage: Storage, dest: str) -> None:
    """DEST is writable, before any Ray work."""
    try:
        storage.check_writable(dest)
    except StorageError as e:
        raise UserError(
            f"DEST {dest} is not writable ({e}); pick another DEST or fix its permissions/credentials"
        ) from None


def check_report_path(storage: Storage, report: str) -> None:
    """The --report folder is writable, before any Ray work."""
    try:
        storage.check_writable(report.rpartition("/")[0] or ".")
    except StorageError as e:
        raise UserError(f"--report {report} is not writable ({e}); pick another path") from None


def process_sources(storage: Storage, plan, dcfg, rules: qual.QualityRules):
    """Read, decode / validate / crop / resize / hash and score every file (Ray Data),
    materialized: the object store holds the processed images for the second pass."""
    return (
        read_sources(storage, plan)
        .map_batches(
            process_batch,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs=dict(
                resolution=dcfg.resolution,
                min_size=dcfg.min_size,
                image_format=dcfg.image_format,
                jpeg_quality=dcfg.jpeg_quality,
                png_compress_level=dcfg.png_compress_level,
                quality=rules,
            ),
        )
        .materialize()
    )


@dataclass
class Selection:
    """select_rows' outcome: what is kept, what was dropped and why."""

    rejected: dict[str, int]  # reason (incl. "duplicate") -> count
    kept: Any  # DataFrame (META_COLUMNS) of the unique accepted training rows, in source order
    duplicates: list[str]  # sources dropped as a later copy of an earlier row
    num_holdout: int


def select_rows(meta, holdout_fraction: float) -> Selection:
    """Driver, metadata only: count rejects, drop duplicates (first in source order
    wins), set the held-out faces aside (never balanced, tagged or counted as training rows)."""
    rejected = {r: 0 for r in REJECT_REASONS}
    for reason, n in meta["reject"].value_counts().items():
        rejected[str(reason)] = int(n)
    ok = meta[meta["reject"].isna()].sort_values("source")
    dup_mask = ok["sha256"].duplicated(keep="first")
    drop = ok.loc[dup_mask, "source"].tolist()
    rejected["duplicate"] = len(drop)
    ok = ok[~dup_mask]
    held_mask = ok["sha256"].map(lambda h: in_holdout(h, holdout_fraction)).astype(bool)
    return Selection(rejected, ok[~held_mask], drop, int(held_mask.sum()))


def no_usable_images(sources: list[str], num_candidates: int, rejected: dict[str, int]) -> UserError:
    """The error when every file was rejected, naming the filter's settings when it took some."""
    detail = ", ".join(f"{k}={v}" for k, v in rejected.items() if v)
    hint = ""
    if any(rejected.get(r) for r in qual.QUALITY_REASONS):
        hint = (
            " (the quality filter's thresholds are data.max_upscale, data.min_contrast and data.min_sharpness; "
            "see `facegen prepare --report`)"
        )
    return UserError(
        f"no usable images in {', '.join(sources)}: all {num_candidates} files were rejected ({detail}){hint}"
    )


def split_holdout(ds, dcfg, num_holdout: int):
    """(training rows, held-out shard rows or None)."""
    if not num_holdout:
        return ds, None
    holdout_ds = ds.map_batches(
        _split_rows,
        fn_kwargs={"fraction": dcfg.holdout_fraction, "holdout": True},
        batch_format="pyarrow",
        batch_size=None,
    ).map_batches(
        _to_shard_rows,
        fn_kwargs={"weights": None, "repeats": None, "seed": dcfg.seed},
        batch_format="pyarrow",
        batch_size=None,
    )
    ds = ds.map_batches(
        _split_rows,
        fn_kwargs={"fraction": dcfg.holdout_fraction, "holdout": False},
        batch_format="pyarrow",
        batch_size=None,
    )
    return ds, holdout_ds


def plan_balance(ok, dcfg) -> tuple[dict[str, Any], dict[str, float] | None, dict[str, int] | None]:
    """data.balance over race x gender: (the manifest's "balance" section, per-group
    weights or None, per-source repeats or None)."""
    keys = [attrs.group_key(g, r) for g, r in zip(ok["gender"].tolist(), ok["race"].tolist())]
    before = attrs.group_counts(ok["gender"].tolist(), ok["race"].tolist())
    balance: dict[str, Any] = {"mode": dcfg.balance, "groups_before": before}
    weights = repeats = None
    if dcfg.balance == "reweight":
        weights = attrs.reweight(before)
        balance.update(weights={k: round(v, 6) for k, v in weights.items()}, groups_after=before)
    elif dcfg.balance == "resample":
        rep = attrs.resample_repeats(keys, seed=dcfg.seed)
        repeats = {s: int(k) for s, k in zip(ok["source"].tolist(), rep) if k != 1}
        after: dict[str, int] = {}
        for k, r in zip(keys, rep):
            after[k] = after.get(k, 0) + int(r)
        balance["groups_after"] = dict(sorted(after.items()))
    else:
        balance["groups_after"] = before
    return balance, weights, repeats


def prepare(
    cfg: FacegenConfig,
    sources: list[str] | str,
    dest: str,
    *,
    storage: Storage | None = None,
    attribute_model: str | None = None,
    report: str | None = None,
) -> PrepareResult:
    """Prepare SOURCE(s) into the next version of DEST; see the module docstring.

    report: also write report.py's HTML page there (and its contact sheets next to it); it is
    written even when no image is usable, so the thresholds that rejected them can be checked.
    UserError for a missing/empty source, an unwritable DEST, or no usable image at all.
    """
    t0 = time.perf_counter()
    dcfg = cfg.data
    storage = storage or Storage(cfg.storage)
    sources = [sources] if isinstance(sources, str) else list(sources)
    dest = normalize(dest)
    report = normalize(report) if report else None
    check_dest(storage, dest)
    plan = plan_sources(storage, sources, limit=dcfg.limit, seed=dcfg.seed)
    # load the classifier on the driver: a missing module or bad URI fails before any Ray work
    tagger = attrs.load_tagger_fn()(storage, attribute_model) if attribute_model else None
    log.info(
        "prepare: %d image files from %d source(s) (%d found, %d non-image ignored)",
        plan.num_candidates,
        len(sources),
        plan.num_found,
        plan.num_ignored,
    )
    if report:
        check_report_path(storage, report)

    ensure_ray()
    import ray  # noqa: F401  (initialised above)

    # Ray Data tasks on any node read the sources and write DEST: before reading anything
    require_shared({**{f"SOURCE {s}": s for s in sources}, "DEST": dest, "--report": report or None})

    from facegen_ray.progress import configure_ray_data

    configure_ray_data()
    rules = qual.QualityRules.from_config(dcfg)
    processed = process_sources(storage, plan, dcfg, rules)
    meta = processed.select_columns(META_COLUMNS).to_pandas()
    quality = quality_summary(meta, rules, dcfg, cfg.model.age_buckets)

    def _report(version_uri: str | None, rejected: dict[str, int], created: str) -> str | None:
        if not report:
            return None
        info = {
            "sources": [normalize(s) for s in sources],
            "resolution": dcfg.resolution,
            "version_uri": version_uri,
            "created": created,
            "num_candidates": plan.num_candidates,
            "rejected": rejected,
            "quality": quality,
        }
        png = write_report(storage, report, info, _report_tiles(processed, meta, rules), rules)
        log.info("prepare: report %s (contact sheets %s)", report, png)
        return png

    picked = select_rows(meta, dcfg.holdout_fraction)
    rejected, ok = picked.rejected, picked.kept
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if ok.empty:
        _report(None, rejected, created)
        raise no_usable_images(sources, plan.num_candidates, rejected)

    ds = processed.map_batches(
        _filter_rows, fn_kwargs={"drop": picked.duplicates}, batch_format="pyarrow", batch_size=None
    )
    ds, holdout_ds = split_holdout(ds, dcfg, picked.num_holdout)
    if tagger is not None:
        ds = ds.map_batches(
            attrs.TagNullLabels, fn_constructor_args=(tagger,), batch_format="pyarrow", batch_size=64, concurrency=1
        ).materialize()
        ok = ds.select_columns(META_COLUMNS).to_pandas()
    balance, weights, repeats = plan_balance(ok, dcfg)

    # shard rows; attribute counts of the rows as written (resampled copies included)
    written = ok.loc[ok.index.repeat([repeats.get(s, 1) for s in ok["source"]])] if repeats else ok
    num_rows = len(written)
    rows_per_shard = _rows_per_shard(dcfg.shard_rows, dcfg.shard_target_mb, float(ok["nbytes"].mean()))
    num_shards = max(1, math.ceil(num_rows / rows_per_shard))
    ds = ds.map_batches(
        _to_shard_rows,
        fn_kwargs={"weights": weights, "repeats": repeats, "seed": dcfg.seed},
        batch_format="pyarrow",
        batch_size=None,
    )
    if num_shards > 1:
        ds = ds.repartition(num_shards)

    # write the shards and the manifest, then the report
    manifest = {
        "source": [normalize(s) for s in sources],
        "created": created,
        "resolution": dcfg.resolution,
        "image_format": dcfg.image_format,
        "num_candidates": plan.num_candidates,
        "num_found": plan.num_found,
        "num_ignored": plan.num_ignored,
        "num_unique_images": int(len(ok)),
        "num_rejected": sum(rejected.values()),
        "rejected": rejected,
        "num_upscaled": int(ok["upscaled"].sum()),
        "attributes": attrs.attribute_counts(written, cfg.model.age_buckets),
        "attribute_names": attrs.attribute_names(cfg.model.age_buckets),
        "attribute_model": attribute_model,
        "balance": balance,
        "limit": dcfg.limit,
        "min_size": dcfg.min_size,
        "quality": quality,
        "seed": dcfg.seed,
        "rows_per_shard": rows_per_shard,
        "dedupe": "sha256 of the stored RGB pixels (uint8 [R,R,3]); first in source order kept",
        "holdout": {
            "fraction": dcfg.holdout_fraction,
            "num_images": picked.num_holdout,
            "files": [],
            "rule": "int(sha256[:8], 16) / 2**32 < fraction; held-out rows are never trained on",
        },
    }
    manifest = write_version(storage, dest, ds, manifest, rows_per_shard, expected_rows=num_rows, holdout=holdout_ds)
    _report(manifest["path"], rejected, created)
    return PrepareResult(
        manifest=manifest,
        dataset_uri=dest,
        version_uri=manifest["path"],
        manifest_uri=Layout.manifest(dest),
        elapsed_s=time.perf_counter() - t0,
        report_uri=report,
    )


def summary(result: PrepareResult) -> str:
    """One human line, e.g. "prepared 400 images (2 rejected: unreadable=1, too_small=1) at
    64x64 -> /data/faces/v1 (1 shard)"."""
    m = result.manifest
    rej = ", ".join(f"{k}={v}" for k, v in m["rejected"].items() if v)
    shards = m["num_shards"]
    extra = (
        f"; {m['num_unique_images']} distinct, balance={m['balance']['mode']}" if m["balance"]["mode"] != "none" else ""
    )
    return (
        f"prepared {m['num_images']} images ({m['num_rejected']} rejected{': ' + rej if rej else ''}{extra}) "
        f"at {m['resolution']}x{m['resolution']} -> {result.version_uri} ({shards} shard{'s' if shards != 1 else ''})"
    )
