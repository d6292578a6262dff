"""Feedback merge: a new dataset version = the base dataset's latest version + the generated
images users approved (what `facegen retrain` trains the candidate on).

    select   one pass over <root>/feedback/records: per image, approvals / rejections /
             ratings / feedback ids. An image is merged when it has >= retrain.min_approvals
             approvals AND strictly more approvals than rejections (a tie or a rejection majority
             excludes it: the rule of data.feedback.approved_images) AND, if
             retrain.min_rating is set, a mean rating >= it (unrated images pass).
    convert  each selected PNG -> the dataset's resolution and image format: equal size as is;
             smaller by a power-of-two factor -> nearest-neighbour upscale (the training loader's
             box downsampling gives the original pixels back exactly); larger by an integer
             factor -> box (area) downscale; anything else is skipped ("resolution").
             Rows: origin "feedback", source = the stored PNG's URI, weight =
             retrain.feedback_weight, labels = the attributes the image was generated for when
             the model was conditional (label_source "requested"), else null. Each image is
             written retrain.feedback_repeats times (oversampling: how often training sees it;
             the weight scales its share of D's real-loss terms, train.row_weights).
    brakes   opinions of quarantined raters do not count, an optional review list limits the
             images, and at most a capped number (images, share of the base) are merged:
             data/feedback_brakes.py. The manifest's feedback block lists per-rater contributions.
    dedupe   by sha256 of the stored pixels against every base row and among the feedback
             ("in_base" / "duplicate"), so re-running a merge never adds an image twice.
    write    base rows + feedback rows, shuffled (seeded), through shards.write_version: the
             same atomic version commit as `facegen prepare`. The base version is not touched.

The manifest is the base manifest (source, resolution, format, ...) with the counts of the new
version and a "feedback" block: base_version, base_path, reference (the prepared, real-only
version behind the base: the reals the promotion gate compares against), merged, rows, skipped
(reason -> count), image_ids, feedback_ids, min_approvals, min_rating, weight, repeats.

No approved image left after the rules -> NoApprovedFeedback (a UserError) and nothing written.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facegen_ray.config import FacegenConfig
from facegen_ray.data import attributes as attrs
from facegen_ray.data.feedback import FeedbackStore, approval_verdict, iter_feedback, summarize_records
from facegen_ray.data.feedback_brakes import Brakes, HeldBack, merge_cap, quarantine, rater_report
from facegen_ray.data.feedback_rows import LABEL_SOURCE, FeedbackImage, _convert, _labels, fit_resolution  # noqa: F401
from facegen_ray.data.ingest import worker_filesystem, worker_filesystem_path
from facegen_ray.data.shards import (
    _split_version,
    read_manifest,
    shard_schema,
    shard_uris,
    write_version,
)
from facegen_ray.errors import UserError
from facegen_ray.runtime import ensure_ray, require_shared
from facegen_ray.storage import Layout, Storage, normalize

# Imported where used, not here: ray, pandas: only the merge itself writes through Ray Data;
# selecting feedback and converting images run without them.

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "too_few_approvals",
    "rejected",
    "quarantined",
    "not_reviewed",
    "over_cap",
    "low_rating",
    "missing_image",
    "unreadable",
    "resolution",
    "in_base",
    "duplicate",
)


class NoApprovedFeedback(UserError):
    """No approved feedback image is left to merge (nothing was written)."""

    def __init__(self, message: str, skipped: dict[str, int]):
        super().__init__(message)
        self.skipped = skipped


@dataclass
class MergeResult:
    """What a merge wrote: the committed manifest of the new version and its counts."""

    manifest: dict[str, Any]
    dataset_uri: str
    version_uri: str
    base_version: int
    merged: int
    skipped: dict[str, int]
    elapsed_s: float


def reference_dataset(storage: Storage, dataset_uri: str) -> str:
    """The real-only dataset version behind `dataset_uri`: its manifest's feedback.reference
    for a merged version, else the version itself (a URI DEST/v<N>)."""
    m = read_manifest(storage, dataset_uri)
    fb = m.get("feedback")
    return normalize(fb["reference"]) if isinstance(fb, dict) and fb.get("reference") else m["path"]


# ------------------------------------------------------------------ selection


def select_feedback(
    storage: Storage,
    root: str,
    min_approvals: int = 1,
    min_rating: float | None = None,
    brakes: Brakes | None = None,
    report: dict[str, Any] | None = None,
) -> tuple[list[FeedbackImage], dict[str, int]]:
    """(approved images sorted by id, skipped reason -> count) over all feedback records; see
    the module docstring for the rule. With `brakes`, quarantined opinions do not count and a
    review list limits the images (data/feedback_brakes.py); `report` (a dict) receives the
    per-rater breakdown."""
    store = FeedbackStore(storage, root)
    skipped = {r: 0 for r in SKIP_REASONS}
    out: list[FeedbackImage] = []
    records = list(iter_feedback(storage, root))
    held = HeldBack()
    unbraked = summarize_records(records)
    summaries = unbraked
    if brakes is not None:
        kept, held = quarantine(records, brakes)
        summaries = summarize_records(kept)
    for iid, u in sorted(unbraked.items()):
        v = summaries.get(iid)
        verdict = approval_verdict(v, min_approvals) if v is not None else "quarantined"
        if verdict is not None and approval_verdict(u, min_approvals) is None:
            verdict = "quarantined"  # approved only with the held-back opinions
        if verdict is None and brakes is not None and brakes.review is not None and iid not in brakes.review:
            verdict = "not_reviewed"
        if verdict is not None:
            skipped[verdict] += 1
            continue
        mean = sum(v["ratings"]) / len(v["ratings"]) if v["ratings"] else None
        if min_rating is not None and mean is not None and mean < min_rating:
            skipped["low_rating"] += 1
            continue
        rec = store.get_image_record(iid)
        if rec is None:
            skipped["missing_image"] += 1
            continue
        out.append(
            FeedbackImage(
                iid,
                rec,
                store.image_uri(iid),
                v["approvals"],
                v["rejections"],
                mean,
                sorted(v["feedback_ids"]),
                sorted(v.get("sources", [])),
            )
        )
    if report is not None:
        report.update(rater_report(out, summaries, held))
    return out, skipped


def apply_cap(
    items: list[FeedbackImage],
    cap: int,
    skipped: dict[str, int],
    per_source: int | None = None,
    min_sources: int = 1,
) -> list[FeedbackImage]:
    """At most `cap` of the selected images, the most-approved first (ties: by image id), sorted
    by id; the rest count as skipped "over_cap" (they wait for the next retrain). With
    `per_source`, an image is taken only while at least `min_sources` of its approving sources
    have budget left; each of its approving sources is then charged one."""
    used: dict[str, int] = {}
    keep = []
    for it in sorted(items, key=lambda it: (-it.approvals, it.image_id)):
        if len(keep) >= cap:
            break
        if per_source is not None and it.sources:
            if sum(used.get(s, 0) < per_source for s in it.sources) < min(min_sources, len(it.sources)):
                continue
            for s in it.sources:
                used[s] = used.get(s, 0) + 1
        keep.append(it)
    skipped["over_cap"] += len(items) - len(keep)
    return sorted(keep, key=lambda it: it.image_id)


def brakes_of(rcfg) -> Brakes:
    """The merge's brakes from a RetrainConfig (the review list read from its file)."""
    review = None
    if rcfg.review:
        from facegen_ray.data.feedback_brakes import read_review

        review = frozenset(read_review(rcfg.review))
    return Brakes(rcfg.quarantine_new_rater_minutes, rcfg.quarantine_approvals_per_hour, review)


# ------------------------------------------------------------------ conversion


def _base_metadata(storage: Storage, manifest: dict[str, Any]):
    """Metadata columns of every base row (no image bytes), as a pandas DataFrame."""
    uris = shard_uris(manifest)
    fs, _ = worker_filesystem(storage, uris[0])
    cols = ["sha256", "age", "gender", "race", "label_source", "origin"]
    tables = [pq.read_table(worker_filesystem_path(u), filesystem=fs, columns=cols) for u in uris]
    return pa.concat_tables(tables).to_pandas()


# ------------------------------------------------------------------ the merge


def merge_feedback(
    cfg: FacegenConfig, base: str, *, storage: Storage | None = None, feedback_root: str | None = None
) -> MergeResult:
    """Write base (its latest version, or the version named by a DEST/v<N> URI) + approved
    feedback images as the next version of the base dataset. NoApprovedFeedback when no new
    approved image is left (nothing written); UserError for a missing/empty base."""
    t0 = time.perf_counter()
    storage = storage or Storage(cfg.storage)
    rcfg = cfg.retrain
    feedback_root = feedback_root or cfg.storage.root
    manifest = read_manifest(storage, base)  # UserError when missing
    if int(manifest.get("num_images") or 0) <= 0 or not manifest.get("files"):
        raise UserError(f"base dataset {base} is empty: run `facegen prepare` first")
    dest, _ = _split_version(normalize(base))
    reference = reference_dataset(storage, manifest["path"])

    raters: dict[str, Any] = {}
    items, skipped = select_feedback(
        storage, feedback_root, rcfg.min_approvals, rcfg.min_rating, brakes_of(rcfg), raters
    )
    cap = merge_cap(int(manifest["num_images"]), rcfg.max_feedback_images, rcfg.max_feedback_share)
    items = apply_cap(items, cap, skipped, rcfg.max_feedback_images_per_source, rcfg.min_approvals)
    meta = _base_metadata(storage, manifest)
    rows, used = _convert(storage, items, manifest, set(meta["sha256"].tolist()), skipped, rcfg.feedback_weight)
    if not rows:
        detail = ", ".join(f"{k}={v}" for k, v in skipped.items() if v) or "no feedback records at all"
        raise NoApprovedFeedback(
            f"no new approved feedback images to merge into {manifest['path']} ({detail}; rule: >= "
            f"{rcfg.min_approvals} approval(s) and more approvals than rejections). Collect approvals on the "
            f"feedback page, lower retrain.min_approvals, or pass --allow-empty to retrain on the base data only",
            skipped,
        )
    fb_table = pa.Table.from_pylist(rows * rcfg.feedback_repeats, schema=shard_schema())

    ensure_ray()
    import ray

    uris = shard_uris(manifest)
    require_shared({"dataset": uris[0] if uris else None, "feedback": feedback_root})
    fs, _ = worker_filesystem(storage, uris[0])
    base_ds = ray.data.read_parquet([worker_filesystem_path(u) for u in uris], filesystem=fs, schema=shard_schema())
    num_rows = int(manifest["num_images"]) + fb_table.num_rows
    rows_per_shard = int(manifest.get("rows_per_shard") or cfg.data.shard_rows)
    ds = base_ds.union(ray.data.from_arrow(fb_table)).random_shuffle(seed=cfg.data.seed)
    num_shards = max(1, math.ceil(num_rows / rows_per_shard))
    ds = ds.repartition(num_shards)

    fb_meta = [
        {"age": r["age"], "gender": r["gender"], "race": r["race"], "label_source": r["label_source"]} for r in rows
    ] * rcfg.feedback_repeats
    import pandas as pd

    all_meta = pd.concat([meta[["age", "gender", "race", "label_source"]], pd.DataFrame(fb_meta)], ignore_index=True)
    new_manifest = {
        k: v
        for k, v in manifest.items()
        if k not in ("path", "files", "version", "num_images", "num_shards", "format", "feedback")
    }
    base_unique = int(manifest.get("num_unique_images") or meta["sha256"].nunique())
    new_manifest.update(
        {
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "source": list(manifest.get("source") or []) + [Layout(feedback_root).feedback()],
            "num_unique_images": base_unique + len(rows),
            "attributes": attrs.attribute_counts(all_meta, cfg.model.age_buckets),
            "rows_per_shard": rows_per_shard,
            "parent": {"version": int(manifest["version"]), "path": manifest["path"]},
            "feedback": {
                "base_version": int(manifest["version"]),
                "base_path": manifest["path"],
                "reference": reference,
                "merged": len(rows),
                "rows": fb_table.num_rows,
                "base_feedback_rows": int((meta["origin"] == "feedback").sum()),
                "skipped": skipped,
                "image_ids": [u.image_id for u in used],
                "feedback_ids": sorted(fid for u in used for fid in u.feedback_ids),
                "min_approvals": rcfg.min_approvals,
                "min_rating": rcfg.min_rating,
                "weight": rcfg.feedback_weight,
                "repeats": rcfg.feedback_repeats,
                "cap": cap,
                "raters": raters,
                "feedback_root": Layout(feedback_root).feedback(),
            },
        }
    )
    written = write_version(storage, dest, ds, new_manifest, rows_per_shard, expected_rows=num_rows)
    log.info(
        "feedback merge: %d images (%d rows) + %d base rows -> %s",
        len(rows),
        fb_table.num_rows,
        manifest["num_images"],
        written["path"],
    )
    return MergeResult(
        manifest=written,
        dataset_uri=dest,
        version_uri=written["path"],
        base_version=int(manifest["version"]),
        merged=len(rows),
        skipped=skipped,
        elapsed_s=time.perf_counter() - t0,
    )


def summary(result: MergeResult) -> str:
    """One human line, e.g. "merged 3 approved image(s) (3 rows) with base v1 -> .../faces/v2
    (99 rows; skipped: rejected=1)"."""
    fb = result.manifest["feedback"]
    skipped = ", ".join(f"{k}={v}" for k, v in result.skipped.items() if v)
    return (
        f"merged {result.merged} approved image(s) ({fb['rows']} rows) with base "
        f"v{result.base_version} -> {result.version_uri} ({result.manifest['num_images']} rows"
        f"{'; skipped: ' + skipped if skipped else ''})"
    )


__all__ = [
    "apply_cap",
    "merge_feedback",
    "select_feedback",
    "fit_resolution",
    "reference_dataset",
    "MergeResult",
    "NoApprovedFeedback",
    "FeedbackImage",
    "SKIP_REASONS",
    "summary",
]
