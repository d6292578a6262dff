"""Fréchet Inception Distance: ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) of Gaussian fits
to 2048-d Inception features (Heusel et al. 2017)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg

log = logging.getLogger(__name__)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N,D] -> (mean [D], covariance [D,D]) in float64 (unbiased covariance)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature rows [N,D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    sqrtm of a product of covariances that are singular (N < D is the usual case for small
    evaluations) can fail or go complex; then an eps offset on both diagonals is added. The
    imaginary part from round-off is dropped once checked to be small.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"mismatched statistics: {mu1.shape}/{mu2.shape}, {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(s1, s2, eps)
    value = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0) if value > -1e-6 * max(1.0, abs(np.trace(s1))) else value


def _sqrtm(m: np.ndarray) -> np.ndarray:
    out = scipy.linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    """Tr((S1 S2)^{1/2}). scipy sqrtm first; if it fails or is complex beyond round-off, again
    with eps on both diagonals; if still complex (very singular covariances, N << D), the
    equivalent symmetric form Tr((A S2 A)^{1/2}) with A = S1^{1/2} (eigendecompositions)."""

    def imag_ok(c: np.ndarray) -> bool:
        if not np.iscomplexobj(c):
            return True
        tol = 1e-3 * max(1.0, float(np.max(np.abs(c.real))) if c.size else 1.0)
        return float(np.max(np.abs(c.imag))) <= tol if c.size else True

    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all() or not imag_ok(covmean):
        log.warning("fid: ill-conditioned product of covariances; adding %g to the diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.isfinite(covmean).all() and imag_ok(covmean):
        return float(np.trace(covmean.real))
    log.warning("fid: sqrtm still complex; using the symmetric eigen form")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^{1/2}, symmetric PSD
    m = a @ s2 @ a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets [N,D], [M,D]."""
    return fid_to_stats(feats_a, *feature_stats(feats_b))


def fid_to_stats(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID between a feature set [N,D] and Gaussian statistics (mu [D], sigma [D,D]).

    With N <= D the sample covariance is S1 = X^T X / (N-1), X the centred features, and
    S1 S2 = X^T (X S2 / (N-1)) has the same non-zero eigenvalues as the N x N symmetric PSD
    matrix X S2 X^T / (N-1). So Tr((S1 S2)^{1/2}) is the sum of square roots of that small
    matrix's eigenvalues: exact, and seconds faster than a D x D sqrtm for small evaluations.
    For N > D it is the ordinary frechet_distance."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature rows [N,D], got shape {f.shape}")
    mu2 = np.atleast_1d(np.asarray(mu, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma, np.float64))
    if f.shape[1] != mu2.shape[0] or s2.shape != (mu2.shape[0], mu2.shape[0]):
        raise ValueError(f"mismatched statistics: features {f.shape}, mu {mu2.shape}, sigma {s2.shape}")
    if len(f) > f.shape[1]:
        return frechet_distance(*feature_stats(f), mu2, s2)
    mu1 = f.mean(axis=0)
    x = f - mu1
    n = len(f) - 1
    small = (x @ ((s2 + s2.T) / 2) @ x.T) / n
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum())
    tr_s1 = float(np.einsum("ij,ij->", x, x) / n)
    diff = mu1 - mu2
    value = float(diff.dot(diff) + tr_s1 + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0) if value > -1e-6 * max(1.0, tr_s1) else value


__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "fid_to_stats"]
