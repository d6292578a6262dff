"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x.y/d + 1)^3, averaged over random subsets."""

from __future__ import annotations

import numpy as np


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate between samples x [m,d] and y [n,d] (diagonals excluded)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = len(x), len(y), x.shape[1]
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    kxx = (x @ x.T / d + 1.0) ** 3  # [m,m]
    kyy = (y @ y.T / d + 1.0) ** 3  # [n,n]
    kxy = (x @ y.T / d + 1.0) ** 3  # [m,n]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    feats_gen: np.ndarray, feats_real: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict[str, float | int]:
    """KID mean and std over `subsets` random subsets of size min(subset_size, n_gen, n_real).

    Unbiased: on two samples of one distribution the mean is near 0 and may be negative.
    """
    n = min(int(subset_size), len(feats_gen), len(feats_real))
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            polynomial_mmd2_unbiased(
                feats_gen[rng.choice(len(feats_gen), n, replace=False)],
                feats_real[rng.choice(len(feats_real), n, replace=False)],
            )
            for _ in range(int(subsets))
        ]
    )
    return {"mean": float(vals.mean()), "std": float(vals.std()), "subsets": int(subsets), "subset_size": int(n)}


__all__ = ["polynomial_mmd2_unbiased", "kernel_inception_distance"]
