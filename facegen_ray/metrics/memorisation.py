"""Memorisation report: does the generator reproduce training faces?

In the Inception feature space (the FID features, so the training set's cached reference
features are reused): for every generated face the distance to its nearest training face,
compared with the same distance for held-out real faces (`facegen prepare --holdout-fraction`,
never trained on). A generated face closer to a training face than the `percentile`-th
percentile of held-out faces is a suspected copy; copy_rate = suspected / generated.
What it does not guarantee: Inception distance is a proxy for "the same person"; a face can
resemble a training identity without being near in this space, and a tiny held-out split makes
the threshold noisy (num_holdout is reported).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw


def nearest(query: np.ndarray, ref: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean nearest neighbour of each query row in ref -> (distance [n], index [n])."""
    r = torch.as_tensor(np.asarray(ref, np.float64))
    r2 = (r * r).sum(1)
    dist, idx = [], []
    for s in range(0, len(query), chunk):
        q = torch.as_tensor(np.asarray(query[s : s + chunk], np.float64))
        d2 = (q * q).sum(1, keepdim=True) - 2 * q @ r.T + r2[None]
        m, i = d2.min(1)
        dist.append(m.clamp_min(0).sqrt().numpy())
        idx.append(i.numpy())
    if not dist:
        return np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(dist), np.concatenate(idx)


def _quantiles(d: np.ndarray) -> dict[str, float]:
    if not len(d):
        return {}
    return {
        "min": float(d.min()),
        "p1": float(np.percentile(d, 1)),
        "p5": float(np.percentile(d, 5)),
        "median": float(np.median(d)),
        "mean": float(d.mean()),
    }


def memorisation_report(
    gen: np.ndarray, train: np.ndarray, holdout: np.ndarray, *, percentile: float = 1.0, worst: int = 16
) -> dict[str, Any]:
    """gen [N,D], train [M,D], holdout [K,D] features -> the report (JSON-able) plus
    "_pairs": [(generated index, training index, distance)] of the `worst` closest pairs."""
    if len(holdout) < 1 or len(train) < 1:
        raise ValueError("memorisation needs training and held-out features")
    g_d, g_i = nearest(gen, train)
    h_d, _ = nearest(holdout, train)
    threshold = float(np.percentile(h_d, percentile))
    suspected = g_d < threshold
    order = np.argsort(g_d)[:worst]
    return {
        "copy_rate": float(suspected.mean()) if len(g_d) else 0.0,
        "num_suspected": int(suspected.sum()),
        "threshold": threshold,
        "percentile": float(percentile),
        "num_gen": int(len(gen)),
        "num_train": int(len(train)),
        "num_holdout": int(len(holdout)),
        "generated_nn": _quantiles(g_d),
        "holdout_nn": _quantiles(h_d),
        "_pairs": [(int(k), int(g_i[k]), float(g_d[k])) for k in order],
    }


def contact_sheet(pairs: Sequence[tuple[np.ndarray, np.ndarray, float, bool]], scale: int = 2) -> bytes:
    """PNG: one row per pair, generated | nearest training face, a red bar under suspected copies."""
    if not pairs:
        return b""
    h, w = pairs[0][0].shape[:2]
    pad, bar = 4, 4
    sheet = Image.new("RGB", (2 * w * scale + 3 * pad, len(pairs) * (h * scale + pad + bar) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (g, t, _d, sus) in enumerate(pairs):
        y = pad + r * (h * scale + pad + bar)
        for c, img in enumerate((g, t)):
            x = pad + c * (w * scale + pad)
            sheet.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        if sus:
            draw.rectangle([pad, y + h * scale, 2 * w * scale + 2 * pad, y + h * scale + bar - 1], fill=(220, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["nearest", "memorisation_report", "contact_sheet"]
