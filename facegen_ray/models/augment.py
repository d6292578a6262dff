"""Differentiable augmentation of D's inputs (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", 2020): the same random transforms are applied to every image D
sees (reals, fakes, and the reals R1 differentiates), and gradients flow through them to G,
so D cannot overfit a small set by memorising its exact pixels while G still learns the
un-augmented distribution.

Ops (each with per-sample random parameters from torch's global RNG, so training stays
reproducible under the seed and exact resume):
    color        brightness + U(-0.5, 0.5); saturation x U(0, 2) around the pixel's channel
                 mean; contrast x U(0.5, 1.5) around the image mean
    translation  shift by up to 1/8 of the size in x and y, zero padding
    cutout       zero a square of half the size at a random position
"""

from __future__ import annotations

import torch
from torch import nn

OPS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    ops = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [p for p in ops if p not in OPS]
    if bad or not ops:
        raise ValueError(f"augment policy must be a comma-separated subset of {OPS}, got {policy!r}")
    return ops


def _color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    x = x + (torch.rand(shape) - 0.5).to(x.device, x.dtype)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (torch.rand(shape) * 2).to(x.device, x.dtype) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (torch.rand(shape) + 0.5).to(x.device, x.dtype) + mean
    return x


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by an integer offset in [-R/8, R/8] per axis; vacated pixels are 0."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sh == 0 and sw == 0:
        return x
    dy = torch.randint(-sh, sh + 1, (n, 1, 1)).to(x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1)).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row of each output row [N,H,1]
    xs = torch.arange(w, device=x.device).view(1, 1, w) - dx  # [N,1,W]
    valid = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)  # [N,1,H,W]
    ys, xs = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
    idx = (ys * w + xs).expand(n, h, w).reshape(n, 1, h * w).expand(-1, x.shape[1], -1)  # [N,C,H*W]
    out = x.reshape(n, x.shape[1], h * w).gather(2, idx).reshape_as(x)
    return out * valid.to(x.dtype)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of size R/2 per image, centred anywhere (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1)).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1)).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_FNS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """x [N,C,H,W] -> augmented [N,C,H,W]; differentiable w.r.t. x."""
    for op in ops:
        x = _FNS[op](x)
    return x


class AugmentedDiscriminator(nn.Module):
    """D(augment(img), c): wraps a discriminator so every input it sees is augmented the same
    way. Holds D as a submodule (parameters, stage and weight clipping reach the real D)."""

    def __init__(self, D: nn.Module, policy: str):
        super().__init__()
        self.D = D
        self.ops = parse_policy(policy)

    @property
    def accepts_parts(self) -> bool:
        return bool(getattr(self.D, "accepts_parts", False))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, parts: int = 1) -> torch.Tensor:
        x = diff_augment(img, self.ops)  # per sample: a joined batch is augmented as its parts would be
        if parts > 1:
            return self.D(x, c, parts=parts)
        return self.D(x) if c is None else self.D(x, c)
