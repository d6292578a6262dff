"""Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union
of balls around its points with radius = distance to the k-th nearest neighbour (within the
set). Precision: share of generated points inside the real manifold; recall: share of real
points inside the generated manifold."""

from __future__ import annotations

import numpy as np


def _pairwise_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] (float64, clipped at 0 before sqrt)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(feats: np.ndarray, k: int = 3, batch_size: int = 1024) -> np.ndarray:
    """Distance from each row to its k-th nearest other row, [N] (batched over rows)."""
    f = np.asarray(feats, np.float64)
    if len(f) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(f)}")
    out = np.empty(len(f))
    for i in range(0, len(f), batch_size):
        d = _pairwise_dist(f[i : i + batch_size], f)  # [B,N]; column of self is 0 -> index k is k-th neighbour
        out[i : i + batch_size] = np.partition(d, k, axis=1)[:, k]
    return out


def _coverage(query: np.ndarray, ref: np.ndarray, radii: np.ndarray, batch_size: int) -> float:
    """Share of query points within radii[j] of some ref point j."""
    inside = 0
    for i in range(0, len(query), batch_size):
        d = _pairwise_dist(query[i : i + batch_size], ref)  # [B,M]
        inside += int((d <= radii[None, :]).any(axis=1).sum())
    return inside / len(query)


def precision_recall(
    feats_gen: np.ndarray, feats_real: np.ndarray, k: int = 3, batch_size: int = 1024
) -> dict[str, float]:
    """{"precision", "recall"} in [0,1] from features [N,D] (generated) and [M,D] (real)."""
    g, r = np.asarray(feats_gen, np.float64), np.asarray(feats_real, np.float64)
    r_radii, g_radii = knn_radii(r, k, batch_size), knn_radii(g, k, batch_size)
    return {
        "precision": _coverage(g, r, r_radii, batch_size),
        "recall": _coverage(r, g, g_radii, batch_size),
    }


__all__ = ["knn_radii", "precision_recall"]
