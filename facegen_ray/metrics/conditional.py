"""Metrics of conditional generators (model.conditional: true): does asking for an attribute
give faces of that attribute, and do they look like that group's real faces?

- Per-group FID and CFID. A group is one value of one conditioning attribute: each age bucket
  (ModelConfig.age_buckets), each gender, each race (UTKFace codes, models/conditioning.py).
  Its generated images are those whose requested condition has that value (evaluation draws
  the condition rows from the reals' labels, so within a group the other two attributes
  follow that group's real mix); its reals are the reals labelled with that value. FID of the
  two feature sets; CFID = the mean of the groups' FIDs (every computed group weighs the
  same, so age with its 8 buckets counts for more groups than gender with 2).
  A group with fewer than `min_images` reals or generated images (eval.cfid_min_images) is
  skipped with the reason and no number: FID needs 2+ rows for a covariance at all, and a
  handful of rows in 2048-d estimates little but noise. Like every FID here it is biased
  upwards at small N: compare per-group FIDs and CFID only between evaluations with the same
  counts (same seeds, reals and labels give the same per-group counts, as in the gate).
- Attribute accuracy: the attribute classifier (models/attributes.py) on the generated faces;
  the share of requested (known, >= 0) attribute values it reads back, per attribute and over
  all (attribute, image) requests. Bounded by the classifier's own held-out accuracy, which is
  reported with it.

Pure numpy on features, codes and predictions: evaluation (metrics/evaluate.py) gathers those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from facegen_ray.data.attributes import GENDER_NAMES, RACE_NAMES, age_bucket_names
from facegen_ray.metrics.fid import feature_stats, fid_to_stats

ATTRIBUTES = ("age", "gender", "race")  # column order of a condition row c = [age_bucket, gender, race]
DEFAULT_MIN_IMAGES = 10


def attribute_groups(age_buckets: Sequence[int]) -> list[tuple[str, int, str]]:
    """(attribute, code, name) of every value a conditional model is conditioned on."""
    return (
        [("age", i, n) for i, n in enumerate(age_bucket_names(age_buckets))]
        + [("gender", k, v) for k, v in GENDER_NAMES.items()]
        + [("race", k, v) for k, v in RACE_NAMES.items()]
    )


def _codes(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.int64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"condition codes must be [N,3] (age_bucket, gender, race), got {c.shape}")
    return c


def conditional_fid(
    gen: np.ndarray,
    gen_c: np.ndarray,
    real: np.ndarray,
    real_labels: Mapping[str, np.ndarray],
    age_buckets: Sequence[int],
    min_images: int = DEFAULT_MIN_IMAGES,
) -> dict[str, Any]:
    """Per-group FID and their mean (CFID).

    gen [N,D] features of generated images requested with condition codes gen_c [N,3];
    real [M,D] features of reals labelled real_labels {"age" (bucket index), "gender", "race":
    int [M], -1 unknown}. Returns {"mean" (None when no group could be computed, with
    "reason"), "groups_computed", "groups_skipped", "min_images", "groups": [{"group" e.g.
    "gender=1", "attribute", "code", "name", "n_gen", "n_real", "fid" | None, ["skipped": why]}]}.
    """
    if min_images < 2:
        raise ValueError(f"min_images must be >= 2 (FID needs a covariance), got {min_images}")
    gen, real, gen_c = np.asarray(gen, np.float64), np.asarray(real, np.float64), _codes(gen_c)
    if len(gen) != len(gen_c):
        raise ValueError(f"{len(gen)} generated feature rows but {len(gen_c)} condition rows")
    groups: list[dict[str, Any]] = []
    for attr, code, name in attribute_groups(age_buckets):
        col = ATTRIBUTES.index(attr)
        labels = np.asarray(real_labels[attr], np.int64)
        if len(labels) != len(real):
            raise ValueError(f"{len(real)} real feature rows but {len(labels)} {attr} labels")
        g, r = gen[gen_c[:, col] == code], real[labels == code]
        row: dict[str, Any] = {
            "group": f"{attr}={code}",
            "attribute": attr,
            "code": code,
            "name": name,
            "n_gen": int(len(g)),
            "n_real": int(len(r)),
            "fid": None,
        }
        if min(len(r), len(g)) < min_images:
            row["skipped"] = (
                f"too few images: {len(r)} real, {len(g)} generated (each needs eval.cfid_min_images = {min_images})"
            )
        else:
            row["fid"] = fid_to_stats(g, *feature_stats(r))
        groups.append(row)
    fids = [g["fid"] for g in groups if g["fid"] is not None]
    out: dict[str, Any] = {
        "mean": float(np.mean(fids)) if fids else None,
        "groups_computed": len(fids),
        "groups_skipped": len(groups) - len(fids),
        "min_images": int(min_images),
        "groups": groups,
    }
    if not fids:
        out["reason"] = (
            f"no group has {min_images}+ reals and {min_images}+ generated images: use more images "
            "(--num-gen, --num-real), labelled data, or a lower eval.cfid_min_images"
        )
    return out


def attribute_accuracy(
    pred: Mapping[str, np.ndarray], requested: np.ndarray, skip: Mapping[str, str] | None = None, held_out: Any = None
) -> dict[str, Any]:
    """Agreement of the classifier's predictions with the requested condition.

    pred {"age" (bucket index), "gender", "race": int [N]} (AttributeTagger.predict_buckets);
    requested [N,3] codes (-1 = not requested: not counted). `skip` {attribute: reason} leaves
    an attribute out (e.g. the classifier's age buckets differ from the model's). Returns
    {"n_gen", "overall": {"accuracy", "n"}, "age"/"gender"/"race": {"accuracy", "n"} or
    {"skipped"}, "classifier_held_out"}; an accuracy is None when nothing was requested.
    """
    requested = _codes(requested)
    skip = dict(skip or {})
    out: dict[str, Any] = {"n_gen": int(len(requested))}
    hits = total = 0
    for col, attr in enumerate(ATTRIBUTES):
        if attr in skip:
            out[attr] = {"accuracy": None, "n": 0, "skipped": skip[attr]}
            continue
        p = np.asarray(pred[attr], np.int64)
        if len(p) != len(requested):
            raise ValueError(f"{len(p)} {attr} predictions for {len(requested)} generated images")
        known = requested[:, col] >= 0
        n, k = int(known.sum()), int((p[known] == requested[known, col]).sum())
        out[attr] = {"accuracy": k / n if n else None, "n": n}
        hits, total = hits + k, total + n
    out["overall"] = {"accuracy": hits / total if total else None, "n": total}
    out["classifier_held_out"] = held_out
    return out


__all__ = ["ATTRIBUTES", "DEFAULT_MIN_IMAGES", "attribute_groups", "conditional_fid", "attribute_accuracy"]
