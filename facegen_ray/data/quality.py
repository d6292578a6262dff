"""The data quality filter of `facegen prepare`: blurry, near-constant and low-resolution faces.

Three rules, checked in this order on every image that decoded and passed the size/mode checks
(the first one that fails is the reject reason; the thresholds are `data.*` config fields, and
setting one to 0 turns its rule off):

  low_resolution  the face is too small after the crop. prepare has no face detector: it
                  trusts each source to be a face chip (aligned and cropped, like UTKFace) and
                  keeps its centred square, so the face's size after the crop is that square's
                  side in source pixels. When it is below data.resolution / data.max_upscale,
                  the stored face would be mostly interpolated pixels.
  near_constant   the grey levels' standard deviation (0-255 scale) is below
                  data.min_contrast: a blank, black or single-colour frame.
  blurry          the variance of the Laplacian of the grey image is below data.min_sharpness.

Both measures are taken on the square crop brought to data.quality_size pixels (64 by default)
with Lanczos, whatever data.resolution is, so one threshold means the same at every dataset
resolution (the Laplacian's variance grows as an image is shrunk: UTKFace's median is ~32 at
200 px, ~640 at 64 px, ~2100 at 32 px). A crop smaller than quality_size is measured at its own
size rather than enlarged: enlarging would make every small source read as blurry, and a small
source is the low_resolution rule's business.

Grey = ITU-R 601 luma (Pillow's "L"); Laplacian = the 4-neighbour kernel [[0,1,0],[1,-4,1],[0,1,0]]
over the interior pixels (no padding), so a constant image scores exactly 0.

Defaults were read off the full UTKFace set (21,336 faces, 200x200; the figures are in
docs/quality.md): its sharpness at 64 px has 0.1th / 1st / 50th percentiles of ~41 / ~83 / ~640, and the
faces below ~40 are visibly smeared or not faces at all (a blank frame, an eye close-up), so
min_sharpness = 40 drops about 0.1% of it. Its lowest grey-level deviation is ~12 (dim,
low-contrast but real faces), so min_contrast = 8 rejects only frames with next to nothing in
them. max_upscale = 2 allows UTKFace up to 256 px (200 >= 256 / 2).

The demographic mix: `demographic_mix` compares the labelled groups (age bucket, gender, race)
of the images that entered the filter with those it kept, and flags a group the filter removed
disproportionately: its reject rate is more than data.disparity_ratio times the overall rate and
at least data.disparity_min_rejected of its images were rejected (the floor keeps one unlucky
image in a small group from raising a flag). The same test runs for each rule on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

QUALITY_REASONS = ("low_resolution", "near_constant", "blurry")

# what each rule measures: (score column, what the score is, config key of the threshold)
SCORES = {
    "low_resolution": ("crop", "side of the square crop, source pixels", "data.max_upscale"),
    "near_constant": ("contrast", "grey-level standard deviation (0-255)", "data.min_contrast"),
    "blurry": ("sharpness", "variance of the Laplacian", "data.min_sharpness"),
}


@dataclass(frozen=True)
class QualityRules:
    """The thresholds of the filter; a 0 turns its rule off."""

    resolution: int
    max_upscale: float = 2.0
    min_contrast: float = 8.0
    min_sharpness: float = 40.0
    quality_size: int = 64

    @classmethod
    def from_config(cls, dcfg: Any) -> QualityRules:
        return cls(
            resolution=int(dcfg.resolution),
            max_upscale=float(dcfg.max_upscale),
            min_contrast=float(dcfg.min_contrast),
            min_sharpness=float(dcfg.min_sharpness),
            quality_size=int(dcfg.quality_size),
        )

    @property
    def min_crop(self) -> int:
        """Smallest square crop (source pixels) the low_resolution rule accepts; 0 when off."""
        if not self.max_upscale:
            return 0
        return int(np.ceil(self.resolution / self.max_upscale - 1e-9))

    def threshold(self, reason: str) -> float:
        """The number a score is compared with (scores below it are rejected)."""
        return {
            "low_resolution": float(self.min_crop),
            "near_constant": self.min_contrast,
            "blurry": self.min_sharpness,
        }[reason]

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the filter."""
        return {
            "max_upscale": self.max_upscale,
            "min_crop": self.min_crop,
            "min_contrast": self.min_contrast,
            "min_sharpness": self.min_sharpness,
            "quality_size": self.quality_size,
            "rules": {
                r: f"{SCORES[r][1]} < {self.threshold(r):g}" + (" (off)" if not self.threshold(r) else "")
                for r in QUALITY_REASONS
            },
        }


@dataclass(frozen=True)
class Measures:
    """The filter's measurements of one square crop."""

    crop: int  # side of the square crop in source pixels
    contrast: float  # grey-level standard deviation, 0-255 scale
    sharpness: float  # variance of the 4-neighbour Laplacian of the grey image


def grey(img: Image.Image) -> np.ndarray:
    """RGB image -> float64 [H,W] ITU-R 601 luma on the 0-255 scale (Pillow's "L")."""
    return np.asarray(img.convert("L"), dtype=np.float64)


def laplacian_variance(g: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels of a grey image [H,W]."""
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def measure(crop: Image.Image, quality_size: int = 64) -> Measures:
    """Measure a square crop at quality_size pixels (at its own size when smaller)."""
    side = crop.size[0]
    img = crop.resize((quality_size, quality_size), Image.Resampling.LANCZOS) if side > quality_size else crop
    g = grey(img)
    return Measures(crop=int(side), contrast=float(g.std()), sharpness=laplacian_variance(g))


def judge(m: Measures, rules: QualityRules) -> str | None:
    """The first rule the measurements fail (QUALITY_REASONS order), or None."""
    if rules.min_crop and m.crop < rules.min_crop:
        return "low_resolution"
    if rules.min_contrast and m.contrast < rules.min_contrast:
        return "near_constant"
    if rules.min_sharpness and m.sharpness < rules.min_sharpness:
        return "blurry"
    return None


def score(reason: str, row: Any) -> float:
    """A row's score for a rule (its column in the processed rows: crop, contrast or sharpness)."""
    return float(row[SCORES[reason][0]])


# ---------------------------------------------------------------- demographic mix


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


def demographic_mix(
    groups: dict[str, Sequence[str]],
    rejects: Sequence[str | None],
    *,
    reasons: Sequence[str] = QUALITY_REASONS,
    ratio: float = 2.0,
    min_rejected: int = 5,
    names: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The filter's effect on each labelled group.

    groups: attribute -> the group of every image that entered the filter (e.g. {"race":
    ["0", "2", "null", ...], "gender": [...], "age": ["20-29", ...]}); rejects: the filter's
    verdict per image (a reason in `reasons`, or None when kept). names: attribute -> code ->
    readable name (UTKFace's "0" -> "white").

    Returns {"overall": {before, after, rejected, reject_rate, by_reason}, "attributes":
    {attr: [{group, name, before, after, share_before, share_after, rejected, reject_rate,
    by_reason, flagged}]}, "flags": [{attribute, group, name, reason ("any" or one rule),
    rejected, before, reject_rate, overall_rate, times}], "rule": text}. A group is flagged when
    its reject rate > ratio x the overall rate and it lost >= min_rejected images; the test runs
    on all rules together ("any") and on each rule on its own.
    """
    rejects = list(rejects)
    n = len(rejects)
    kept = [r is None for r in rejects]
    by_reason_all = {r: sum(1 for x in rejects if x == r) for r in reasons}
    total_rej = sum(by_reason_all.values())
    overall = {
        "before": n,
        "after": n - total_rej,
        "rejected": total_rej,
        "reject_rate": _rate(total_rej, n),
        "by_reason": by_reason_all,
    }
    out_attrs: dict[str, list[dict[str, Any]]] = {}
    flags: list[dict[str, Any]] = []
    for attr, values in groups.items():
        values = [str(v) for v in values]
        if len(values) != n:
            raise ValueError(f"{attr}: {len(values)} group values for {n} images")
        rows = []
        for g in sorted(set(values), key=_group_order):
            idx = [i for i, v in enumerate(values) if v == g]
            before = len(idx)
            after = sum(1 for i in idx if kept[i])
            by_reason = {r: sum(1 for i in idx if rejects[i] == r) for r in reasons}
            rej = before - after
            row = {
                "group": g,
                "name": (names or {}).get(attr, {}).get(g, g),
                "before": before,
                "after": after,
                "share_before": _rate(before, n),
                "share_after": _rate(after, overall["after"]),
                "rejected": rej,
                "reject_rate": _rate(rej, before),
                "by_reason": by_reason,
                "flagged": [],
            }
            for reason, k, base in [("any", rej, total_rej), *((r, by_reason[r], by_reason_all[r]) for r in reasons)]:
                rate, overall_rate = _rate(k, before), _rate(base, n)
                if base and k >= min_rejected and rate > ratio * overall_rate:
                    row["flagged"].append(reason)
                    flags.append(
                        {
                            "attribute": attr,
                            "group": g,
                            "name": row["name"],
                            "reason": reason,
                            "rejected": k,
                            "before": before,
                            "reject_rate": rate,
                            "overall_rate": overall_rate,
                            "times": rate / overall_rate,
                        }
                    )
            rows.append(row)
        out_attrs[attr] = rows
    rule = (
        f"a group is flagged when the filter rejects more than {ratio:g}x the overall share of its images "
        f"and at least {min_rejected} of them (all rules together, and each rule on its own)"
    )
    return {
        "overall": overall,
        "attributes": out_attrs,
        "flags": flags,
        "rule": rule,
        "ratio": ratio,
        "min_rejected": min_rejected,
    }


def _group_order(g: str):
    """Numeric codes in numeric order, age buckets by their lower bound, "null" last."""
    if g == "null":
        return (2, 0, g)
    head = g.split("-")[0].rstrip("+")
    return (0, int(head), g) if head.isdigit() else (1, 0, g)
