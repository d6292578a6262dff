"""What a person looks at while a run trains: a progress line, a sample grid, loss curves.

Everything here writes through Storage into the run folder <root>/runs/<run>/:
    samples/grid-<kimg>.png   G_ema on fixed latents with constant noise
    loss_curves.png           D/G loss (and throughput) against images seen
    history.json              the logged points behind the curves
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facegen_ray.storage import Storage, join

# Imported where used, not here: matplotlib: only the loss-curve plot needs it.


def progress_line(point: dict[str, Any]) -> str:
    """`[facegen] 12.3k img | stage 2 (16x16) α=0.45 | D 0.62 G 1.10 | 85 img/s (data wait 0.4%)`"""
    res = int(point["resolution"])
    return (
        f"[facegen] {point['images_seen'] / 1000:.1f}k img | stage {int(point['stage'])} ({res}x{res}) "
        f"α={float(point['alpha']):.2f} | D {float(point['d_loss']):.3f} G {float(point['g_loss']):.3f} | "
        f"{float(point.get('img_per_s', 0.0)):.0f} img/s"
        + (f" (data wait {100 * float(point['data_wait']):.1f}%)" if "data_wait" in point else "")
    )


def image_grid(images: torch.Tensor, min_tile: int = 64) -> np.ndarray:
    """images [N,3,R,R] in [-1,1] -> uint8 grid [H,W,3]; small tiles are enlarged (nearest)."""
    x = images.detach().float().cpu()
    n, _, r, _ = x.shape
    if r < min_tile:
        x = F.interpolate(x, scale_factor=min_tile // r, mode="nearest")
        r = x.shape[-1]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 2  # black gutter between tiles
    step = r + pad
    grid = torch.full((3, rows * step + pad, cols * step + pad), -1.0)
    for i in range(n):
        rr, cc = divmod(i, cols)
        y0, x0 = pad + rr * step, pad + cc * step
        grid[:, y0 : y0 + r, x0 : x0 + r] = x[i]
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [3,H,W]
    return arr.permute(1, 2, 0).numpy()


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def grid_name(images_seen: int) -> str:
    """grid-<kimg>.png with kimg zero-padded so names sort by training progress
    (12 345 images -> grid-00012.345.png)."""
    return f"grid-{images_seen / 1000:09.3f}.png"


def write_sample_grid(storage: Storage, run_uri: str, images: torch.Tensor, images_seen: int) -> str:
    uri = join(run_uri, "samples", grid_name(images_seen))
    storage.write_bytes(uri, png_bytes(image_grid(images)))
    return uri


def loss_curves_png(history: Sequence[dict[str, Any]]) -> bytes:
    """D and G loss against kimg, stage boundaries shaded; img/s on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kimg = [h["images_seen"] / 1000 for h in history]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(kimg, [h["d_loss"] for h in history], label="D loss")
    ax1.plot(kimg, [h["g_loss"] for h in history], label="G loss")
    prev = None
    for h in history:
        if prev is not None and h["stage"] != prev:
            ax1.axvline(h["images_seen"] / 1000, color="grey", lw=0.5, ls="--")
            ax1.text(h["images_seen"] / 1000, ax1.get_ylim()[1], f" {h['resolution']}px", fontsize=7, va="top")
        prev = h["stage"]
    ax1.set_ylabel("loss")
    ax1.legend(loc="best")
    ax1.grid(alpha=0.3)
    ax2.plot(kimg, [h.get("img_per_s", 0.0) for h in history], color="tab:green")
    ax2.set_ylabel("img/s")
    ax2.set_xlabel("kimg (real images shown to D)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def write_loss_curves(storage: Storage, run_uri: str, history: Sequence[dict[str, Any]]) -> str:
    uri = join(run_uri, "loss_curves.png")
    storage.write_bytes(uri, loss_curves_png(history))
    storage.write_json(join(run_uri, "history.json"), list(history))
    return uri
