"""What `facegen prepare` reports about the quality filter: the manifest's "quality" section
(thresholds, reject counts, score percentiles, the demographic mix before and after), the
one-line summary the CLI prints, and the `--report` page with its contact sheets (report.py
draws them; this module picks the faces and pulls only their images to the driver).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facegen_ray.data import attributes as attrs
from facegen_ray.data import quality as qual
from facegen_ray.storage import Storage

REPORT_REJECTED = 24  # faces per rule on the report's sheets: rejected (evenly spaced ranks) ...
REPORT_KEPT = 12  # ... and kept, just above the threshold


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
