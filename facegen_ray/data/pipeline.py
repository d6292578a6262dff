"""`facegen prepare`: raw face images -> a new version of validated Parquet shards.

    plan (driver: list sources, --limit)                    ingest.plan_sources
      -> read + decode/validate/crop/resize/hash (Ray Data)  ingest.read_sources, transforms.process_batch
      -> quality filter (quality.py: blurry, near-constant, too small after the crop)
      -> materialize; count rejects, find duplicates (driver, metadata only)
      -> drop rejects + duplicates; tag unlabelled rows (optional, actor)
      -> balance (weights or repeats), shard rows (Ray Data)
      -> write Parquet + manifests (shards.write_version)

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
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facegen_ray.config import FacegenConfig
from facegen_ray.data import attributes as attrs
from facegen_ray.data import quality as qual
from facegen_ray.data.ingest import plan_sources, read_sources
from facegen_ray.data.shards import in_holdout, shard_schema, write_version
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
REPORT_REJECTED = 24  # faces per rule on the report's sheets: rejected (evenly spaced ranks) ...
REPORT_KEPT = 12  # ... and kept, just above the threshold


@dataclass
class PrepareResult:
    """What a prepare run wrote: the committed manifest and where it lives."""

    manifest: dict[str, Any]
    dataset_uri: str
    version_uri: str
    manifest_uri: str
    elapsed_s: float
    report_uri: str | None = None


def _filter_rows(batch, *, drop: list[str]):
    """UDF: keep accepted rows whose source is not a duplicate."""
    mask = pc.is_null(batch.column("reject"))
    if drop:
        mask = pc.and_(mask, pc.invert(pc.is_in(batch.column("source"), value_set=pa.array(drop, type=pa.string()))))
    return batch.filter(mask)


def _to_shard_rows(batch, *, weights: dict[str, float] | None, repeats: dict[str, int] | None, seed: int):
    """UDF: processed rows -> SHARD_SCHEMA rows (origin "dataset"), with --balance applied:
    `weights` per race x gender group, or `repeats` per source (oversampled copies, shuffled
    within the batch so copies do not sit next to each other)."""
    n = batch.num_rows
    genders = batch.column("gender").to_pylist()
    races = batch.column("race").to_pylist()
    if weights:
        w = [weights.get(attrs.group_key(g, r), 1.0) for g, r in zip(genders, races)]
    else:
        w = [1.0] * n
    table = pa.table(
        {
            "image": batch.column("image"),
            "sha256": batch.column("sha256"),
            "source": batch.column("source"),
            "age": batch.column("age"),
            "gender": batch.column("gender"),
            "race": batch.column("race"),
            "origin": pa.array(["dataset"] * n, type=pa.string()),
            "weight": pa.array(w, type=pa.float32()),
            "label_source": batch.column("label_source"),
        },
        schema=shard_schema(),
    )
    if repeats:
        sources = batch.column("source").to_pylist()
        idx = np.repeat(np.arange(n), [repeats.get(s, 1) for s in sources])
        if len(idx) != n:
            # seed per batch from its first source, so a re-run gives the same order
            h = zlib.crc32(sources[0].encode()) if sources else 0
            idx = np.random.default_rng([seed, h]).permutation(idx)
            table = table.take(pa.array(idx))
    return table


def _split_rows(batch, *, fraction: float, holdout: bool):
    """UDF: the rows of the held-out split (holdout=True) or the others (shards.in_holdout)."""
    mask = [in_holdout(h, fraction) == holdout for h in batch.column("sha256").to_pylist()]
    return batch.filter(pa.array(mask, type=pa.bool_()))


def _select_sources(batch, *, sources: list[str]):
    """UDF: the rows whose source is in `sources` (source and image only)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_in(batch.column("source"), value_set=pa.array(sources, type=pa.string()))
    return batch.filter(mask).select(["source", "image"])


def _code(v: Any) -> str:
    return attrs.NULL if attrs._is_null(v) else str(int(v))


def quality_summary(meta, rules: qual.QualityRules, dcfg, age_buckets) -> dict[str, Any]:
    """The manifest's "quality" section from the processed rows' metadata (a DataFrame with
    META_COLUMNS): thresholds, reject counts, score percentiles and the demographic mix of the
    images that entered the filter (decoded, passed the size/mode checks) against those kept."""
    entered = meta[meta["reject"].isna() | meta["reject"].isin(qual.QUALITY_REASONS)]
    verdicts = [None if attrs._is_null(r) else str(r) for r in entered["reject"].tolist()]
    groups = {
        "age": [attrs.age_bucket_name(a, age_buckets) for a in entered["age"].tolist()],
        "gender": [_code(g) for g in entered["gender"].tolist()],
        "race": [_code(r) for r in entered["race"].tolist()],
    }
    unl = {attrs.NULL: "unlabelled"}
    names = {
        "age": unl,
        "gender": {**{str(k): v for k, v in attrs.GENDER_NAMES.items()}, **unl},
        "race": {**{str(k): v for k, v in attrs.RACE_NAMES.items()}, **unl},
    }
    mix = qual.demographic_mix(
        groups, verdicts, ratio=dcfg.disparity_ratio, min_rejected=dcfg.disparity_min_rejected, names=names
    )
    scores: dict[str, dict[str, float]] = {}
    for col in ("sharpness", "contrast"):
        v = entered[col].dropna().to_numpy(dtype=np.float64)
        if len(v):
            scores[col] = {"min": float(v.min()), **{f"p{p:g}": float(np.percentile(v, p)) for p in (0.1, 1, 5, 50)}}
    return {
        **rules.describe(),
        "thresholds": {r: rules.threshold(r) for r in qual.QUALITY_REASONS},
        "num_measured": int(len(entered)),
        "rejected": dict(mix["overall"]["by_reason"]),
        "scores": scores,
        "mix": mix,
    }


def _report_tiles(processed, meta, rules: qual.QualityRules) -> dict[str, tuple[list, list, int]]:
    """reason -> (rejected tiles at evenly spaced ranks, worst first; kept tiles just above
    the threshold; number rejected). Pulls only those rows' images to the driver."""
    from facegen_ray.data.report import Tile, pick_ranks

    plan: dict[str, tuple[list[tuple[str, float, bool]], int]] = {}  # reason -> ([(source, score, kept)], n)
    kept_rows = meta[meta["reject"].isna()]
    for reason in qual.QUALITY_REASONS:
        col = qual.SCORES[reason][0]
        rej = meta[meta["reject"] == reason].sort_values([col, "source"])
        if rej.empty:
            continue
        shown = rej.iloc[pick_ranks(len(rej), REPORT_REJECTED)]
        near = kept_rows[kept_rows[col] >= rules.threshold(reason)].sort_values([col, "source"]).head(REPORT_KEPT)
        plan[reason] = (
            [(s, float(v), False) for s, v in zip(shown["source"], shown[col])]
            + [(s, float(v), True) for s, v in zip(near["source"], near[col])],
            len(rej),
        )
    wanted = sorted({s for tiles, _ in plan.values() for s, _, _ in tiles})
    if not wanted:
        return {}
    got = processed.map_batches(
        _select_sources, fn_kwargs={"sources": wanted}, batch_format="pyarrow", batch_size=None
    ).take_all()
    images = {r["source"]: r["image"] for r in got}
    out = {}
    for reason, (tiles, n) in plan.items():
        made = [Tile(s, images[s], v, k) for s, v, k in tiles if images.get(s)]
        out[reason] = ([t for t in made if not t.kept], [t for t in made if t.kept], n)
    return out


def report_png_uri(uri: str) -> str:
    """The contact-sheet PNG next to a report: its name with the suffix replaced by .png."""
    head, _, name = uri.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    png = f"{head}/{stem}.png" if head else f"{stem}.png"
    return png[: -len(".png")] + ".sheets.png" if png == uri else png


def write_report(
    storage: Storage, uri: str, info: dict[str, Any], tiles: dict[str, tuple[list, list, int]], rules: qual.QualityRules
) -> str:
    """Write the HTML report to `uri` and all the contact sheets in one PNG next to it
    (uri with its suffix replaced by .png). Returns the PNG's URI."""
    from facegen_ray.data import report as rep

    sheets = {r: rep.reason_sheet(r, rej, kept, n, rules.threshold(r)) for r, (rej, kept, n) in tiles.items()}
    pngs = {r: rep.png_bytes(img) for r, img in sheets.items()}
    png_uri = report_png_uri(uri)
    if sheets:
        storage.write_bytes(png_uri, rep.png_bytes(rep.stack(list(sheets.values()), gap=8)))
    else:
        storage.write_bytes(png_uri, rep.png_bytes(rep.contact_sheet("quality filter: no image rejected", [])))
    storage.write_text(uri, rep.render_html(info, pngs))
    return png_uri


def _rows_per_shard(cfg_rows: int, target_mb: float, mean_bytes: float) -> int:
    """Rows per shard: data.shard_rows, fewer if that would exceed ~data.shard_target_mb."""
    by_size = int(target_mb * 2**20 / max(mean_bytes, 1.0))
    return max(1, min(cfg_rows, by_size))


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
    try:
        storage.check_writable(dest)
    except StorageError as e:
        raise UserError(
            f"DEST {dest} is not writable ({e}); pick another DEST or fix its permissions/credentials"
        ) from None
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
        report = normalize(report)
        try:
            storage.check_writable(report.rpartition("/")[0] or ".")
        except StorageError as e:
            raise UserError(f"--report {report} is not writable ({e}); pick another path") from None

    ensure_ray()
    import ray  # noqa: F401  (initialised above)

    # Ray Data tasks on any node read the sources and write DEST: before reading anything
    require_shared({**{f"SOURCE {s}": s for s in sources}, "DEST": dest, "--report": report or None})

    from facegen_ray.progress import configure_ray_data

    configure_ray_data()
    rules = qual.QualityRules.from_config(dcfg)
    processed = (
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

    # rejects, then duplicates (first in source order wins)
    rejected = {r: 0 for r in REJECT_REASONS}
    for reason, n in meta["reject"].value_counts().items():
        rejected[str(reason)] = int(n)
    ok = meta[meta["reject"].isna()].sort_values("source")
    dup_mask = ok["sha256"].duplicated(keep="first")
    drop = ok.loc[dup_mask, "source"].tolist()
    rejected["duplicate"] = len(drop)
    ok = ok[~dup_mask]

    held_mask = ok["sha256"].map(lambda h: in_holdout(h, dcfg.holdout_fraction)).astype(bool)
    num_holdout = int(held_mask.sum())
    ok = ok[~held_mask]  # held-out faces are never balanced, tagged into training or counted as training rows
    num_rejected = sum(rejected.values())
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if ok.empty:
        detail = ", ".join(f"{k}={v}" for k, v in rejected.items() if v)
        _report(None, rejected, created)
        hint = ""
        if any(rejected.get(r) for r in qual.QUALITY_REASONS):
            hint = (
                " (the quality filter's thresholds are data.max_upscale, data.min_contrast and data.min_sharpness; "
                "see `facegen prepare --report`)"
            )
        raise UserError(
            f"no usable images in {', '.join(sources)}: all {plan.num_candidates} files were rejected ({detail}){hint}"
        )

    ds = processed.map_batches(_filter_rows, fn_kwargs={"drop": drop}, batch_format="pyarrow", batch_size=None)
    holdout_ds = None
    if num_holdout:
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
    if tagger is not None:
        ds = ds.map_batches(
            attrs.TagNullLabels, fn_constructor_args=(tagger,), batch_format="pyarrow", batch_size=64, concurrency=1
        ).materialize()
        ok = ds.select_columns(META_COLUMNS).to_pandas()

    # balance over race x gender
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

    # attribute counts of the rows as written (resampled copies included)
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

    manifest = {
        "source": [normalize(s) for s in sources],
        "created": created,
        "resolution": dcfg.resolution,
        "image_format": dcfg.image_format,
        "num_candidates": plan.num_candidates,
        "num_found": plan.num_found,
        "num_ignored": plan.num_ignored,
        "num_unique_images": int(len(ok)),
        "num_rejected": num_rejected,
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
            "num_images": num_holdout,
            "files": [],
            "rule": "int(sha256[:8], 16) / 2**32 < fraction; held-out rows are never trained on",
        },
    }
    manifest = write_version(storage, dest, ds, manifest, rows_per_shard, expected_rows=num_rows, holdout=holdout_ds)
    _report(manifest["path"], rejected, created)
    elapsed = time.perf_counter() - t0

    return PrepareResult(
        manifest=manifest,
        dataset_uri=dest,
        version_uri=manifest["path"],
        manifest_uri=Layout.manifest(dest),
        elapsed_s=elapsed,
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


def quality_line(manifest: dict[str, Any]) -> str:
    """One human line about the quality filter, e.g. "quality filter: 21 of 21336 rejected
    (blurry=21); no demographic group removed disproportionately" or, with flags, "...;
    DISPROPORTIONATE: race=black blurry 3.1x the overall rate"."""
    q = manifest["quality"]
    n = q["mix"]["overall"]
    rej = ", ".join(f"{k}={v}" for k, v in q["rejected"].items() if v)
    head = f"quality filter: {n['rejected']} of {n['before']} rejected{f' ({rej})' if rej else ''}"
    flags = q["mix"]["flags"]
    if not flags:
        return f"{head}; no demographic group removed disproportionately"
    return f"{head}; DISPROPORTIONATE: " + ", ".join(
        f"{f['attribute']}={f['name']} {f['reason']} {f['times']:.1f}x the overall rate" for f in flags
    )
