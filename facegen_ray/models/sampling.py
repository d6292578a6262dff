"""Deterministic sampling: seed -> latent -> image. Pure torch; shared by evaluation, the
Serve app and `facegen generate`, so a seed means the same face everywhere.

- `seeds_to_z(seeds, z_dim)`: each seed draws its own latent from a CPU `torch.Generator`,
  so a seed means the same z whatever else is in the batch and on whichever device G runs.
- `generate(G, seeds, truncation, c, device)`: uint8 images NHWC with `noise_mode="const"`
  (the stored noise buffers) and the model's truncation cutoff.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from facegen_ray.errors import UserError

PSI_DECIMALS = 4  # truncation is quantised to 1e-4: the id and the image use the same value


def quantize_psi(psi: float) -> float:
    """Truncation psi rounded to PSI_DECIMALS (so 0.7 and 0.70000001 are the same image)."""
    return round(float(psi), PSI_DECIMALS)


def seeds_to_z(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """One standard-normal latent per seed, drawn on the CPU -> z [N, z_dim] float32."""
    rows = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(s))
        rows.append(torch.randn(1, z_dim, generator=g))
    return torch.cat(rows, dim=0) if rows else torch.zeros(0, z_dim)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """img [N,3,H,W] roughly in [-1,1] -> uint8 [N,H,W,3]."""
    x = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [N,3,H,W]
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.no_grad()
def generate(
    G: torch.nn.Module,
    seeds: Sequence[int],
    truncation: float | Sequence[float] = 1.0,
    c: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Seeds -> uint8 images [N,H,W,3] with constant noise.

    truncation: one psi for all, or one per seed (rows sharing a psi run together).
    c: condition codes [N,3] or [1,3] (broadcast) for conditional models, None otherwise.
    device: where to run (default: where G's parameters are). batch_size bounds the images per
    forward pass (default: all rows of one psi at once).
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    if not n:
        raise UserError("no seeds given")
    if isinstance(truncation, (int, float)):
        psis = [quantize_psi(truncation)] * n
    else:
        psis = [quantize_psi(t) for t in truncation]
        if len(psis) != n:
            raise ValueError(f"{len(psis)} truncation values for {n} seeds")
    dev = torch.device(device) if device is not None else next(G.parameters()).device
    cutoff = getattr(getattr(G, "cfg", None), "truncation_cutoff", None)
    z = seeds_to_z(seeds, G.z_dim)  # [N, z_dim]
    if c is not None:
        c = c.to(torch.long)
        if c.dim() == 1:
            c = c.unsqueeze(0)
        if c.shape[0] == 1 and n > 1:
            c = c.expand(n, -1)
        if c.shape[0] != n:
            raise ValueError(f"condition has {c.shape[0]} rows for {n} seeds")
    out: list[np.ndarray | None] = [None] * n
    for psi in dict.fromkeys(psis):
        rows = [i for i in range(n) if psis[i] == psi]
        step = batch_size or len(rows)
        for k in range(0, len(rows), step):
            idx = torch.tensor(rows[k : k + step])
            zi = z[idx].to(dev)  # [n_i, z_dim]
            ci = c[idx].to(dev) if c is not None else None  # [n_i, 3]
            img = G(zi, ci, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")  # [n_i,3,R,R]
            for j, arr in zip(rows[k : k + step], to_uint8(img)):
                out[j] = arr
    return np.stack(out, axis=0)
