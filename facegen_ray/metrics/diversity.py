"""Demographic mix of generated faces against the data: the attribute classifier's predicted
distribution per attribute vs the dataset's label distribution, as total-variation distance
(0 = same mix, 1 = disjoint). Reported with the classifier's held-out accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from facegen_ray.models.attributes import HEADS, AttributeTagger


def distribution(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of each class 0..C-1 among the known (>= 0) values, [C] (zeros when none known)."""
    v = np.asarray(values, np.int64)
    v = v[(v >= 0) & (v < num_classes)]
    counts = np.bincount(v, minlength=num_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """0.5 * sum |p - q|."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def diversity_report(
    tagger: AttributeTagger, generated: np.ndarray, data_labels: dict[str, np.ndarray]
) -> dict[str, Any]:
    """generated uint8 [N,H,W,3]; data_labels {"age" (bucket idx), "gender", "race": int64 [M]}."""
    pred = tagger.predict_buckets(generated)
    classes = tagger.meta["classes"]
    out: dict[str, Any] = {"n_gen": int(len(generated)), "classifier_held_out": tagger.meta.get("held_out")}
    for k in HEADS:
        c = int(classes[k])
        pg, pd = distribution(pred[k], c), distribution(data_labels[k], c)
        out[k] = {
            "tv_distance": total_variation(pg, pd) if pd.sum() else None,
            "generated": pg.round(4).tolist(),
            "data": pd.round(4).tolist(),
            "n_data_labelled": int((np.asarray(data_labels[k]) >= 0).sum()),
        }
    return out


__all__ = ["distribution", "total_variation", "diversity_report"]
