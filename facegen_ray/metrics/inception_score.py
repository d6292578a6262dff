"""Inception score exp(E_x[KL(p(y|x) || p(y))]) over splits (Salimans et al. 2016).

Needs class logits; the FID TorchScript we ship exposes none (see inception.IS_UNAVAILABLE_REASON),
so `facegen evaluate` reports IS as unavailable unless a logits source is added."""

from __future__ import annotations

import numpy as np


def inception_score(logits: np.ndarray, splits: int = 10) -> dict[str, float | int]:
    """logits [N,C] -> {"mean", "std", "splits"} of the IS over `splits` equal parts."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)  # [N,C] p(y|x)
    splits = max(1, min(int(splits), len(p)))
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)  # [1,C] p(y)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "splits": splits}


__all__ = ["inception_score"]
