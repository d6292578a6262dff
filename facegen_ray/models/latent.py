"""Control over a face in W: style mixing, interpolation and attribute edits. Pure torch.

Every control works on ws [N,num_ws,w_dim] (one w per synthesis layer, see models/generator.py)
and the image is then `G.synthesis(ws, noise_mode="const")`, so a seed's face here is the face
`models.sampling.generate` gives for it (same z, same mapping, same constant noise).

- `seed_ws(G, seeds, psi, c)`: seeds -> truncated ws, the way `generate` computes them.
- `mix_ws(ws_coarse, ws_fine, crossover)`: layers [0, crossover) from the first, [crossover,
  num_ws) from the second (StyleGAN's style mixing; a small crossover keeps only the coarsest
  styles -- pose, face shape -- of the first face).
- `lerp` (W, linear) and `slerp` (Z, spherical: the angle is interpolated on the unit sphere and
  the norm linearly, so two latents of equal norm stay at that norm all the way).
- `interpolate_ws(G, seeds_a, seed_b, t, space, psi, c)`: W -> lerp of the two faces' ws; Z ->
  slerp of their z, then the mapping. t = 0 / 1 give exactly the two faces.
- `apply_edit(ws, vectors, scales, strengths)`: ws + sum_k s_k * scale_k * d_k on every layer
  (d_k unit directions, scale_k the direction's unit; see models/directions.py). All zero
  strengths return ws unchanged.
- `Control` + `control_ws(...)`: one request's controls (mix | interpolate, plus edit) checked
  against the model (ControlError with a message otherwise) and turned into ws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from facegen_ray.errors import UserError
from facegen_ray.models.sampling import quantize_psi, seeds_to_z, to_uint8

SPACES = ("w", "z")
MAX_EDIT_STRENGTH = 5.0  # |s| <= 5 units of a direction's scale
CONTROL_DECIMALS = 4  # t and strengths are quantised like psi: the image id and the image agree


class ControlError(UserError):
    """A control the model cannot do (unknown attribute, crossover beyond its layers, ...)."""


def quantize(x: float) -> float:
    return round(float(x), CONTROL_DECIMALS)


def _cutoff(G) -> int | None:
    return getattr(getattr(G, "cfg", None), "truncation_cutoff", None)


def _condition(c: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    if c is None:
        return None
    c = c.to(torch.long)
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if c.shape[0] == 1 and n > 1:
        c = c.expand(n, -1)
    return c.to(device)


@torch.no_grad()
def z_to_ws(G, z: torch.Tensor, psi: float = 1.0, c: torch.Tensor | None = None) -> torch.Tensor:
    """z [N,z_dim] -> ws [N,num_ws,w_dim] with the model's truncation cutoff (float32)."""
    dev = next(G.parameters()).device
    z = z.to(dev)
    return G.mapping(z, _condition(c, z.shape[0], dev), quantize_psi(psi), _cutoff(G)).float()


def seed_ws(G, seeds: Sequence[int], psi: float = 1.0, c: torch.Tensor | None = None) -> torch.Tensor:
    """Seeds -> ws [N,num_ws,w_dim]: the same z and mapping as models.sampling.generate."""
    return z_to_ws(G, seeds_to_z(list(seeds), G.z_dim), psi, c)


def check_crossover(num_ws: int, crossover: int) -> int:
    if isinstance(crossover, bool) or not 1 <= int(crossover) <= num_ws - 1:
        raise ControlError(
            f"crossover must be between 1 and {num_ws - 1} (the model has {num_ws} w layers), got {crossover}"
        )
    return int(crossover)


def check_mixing(style_mixing_prob: float | None) -> None:
    """Refuse style mixing on a generator trained without it (model.style_mixing_prob = 0): its layers
    were only ever fed one w, so swapping the fine styles of another face is not what it learned."""
    if style_mixing_prob is not None and float(style_mixing_prob) <= 0.0:
        raise ControlError(
            "this model was trained without style mixing (model.style_mixing_prob = 0), so its "
            "coarse and fine styles were never trained to come from different faces; mixing is "
            "refused (train with model.style_mixing_prob > 0, e.g. 0.9, to use it)"
        )


def mix_ws(ws_coarse: torch.Tensor, ws_fine: torch.Tensor, crossover: int) -> torch.Tensor:
    """ws [N,L,D] x ws [N or 1,L,D] -> [N,L,D]: layers < crossover from ws_coarse, the rest from ws_fine."""
    L = ws_coarse.shape[1]
    crossover = check_crossover(L, crossover)
    fine = ws_fine.expand(ws_coarse.shape[0], -1, -1) if ws_fine.shape[0] == 1 else ws_fine
    return torch.cat([ws_coarse[:, :crossover], fine[:, crossover:]], dim=1)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1-t) a + t b, exactly a at t=0 and b at t=1."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    return a + (b - a) * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation of rows a, b [N,D]: the direction moves along the great circle at
    constant angular speed, the norm is interpolated linearly (so equal norms are kept)."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)  # [N,1]
    ua, ub = a64 / na.clamp_min(eps), b64 / nb.clamp_min(eps)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)  # [N,1]
    so = torch.sin(omega)
    near = so.abs() < 1e-6  # (anti)parallel: fall back to a normalised lerp of the directions
    wa = torch.where(
        near, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / so.where(~near, torch.ones_like(so))
    )
    wb = torch.where(near, torch.full_like(so, t), torch.sin(t * omega) / so.where(~near, torch.ones_like(so)))
    u = wa * ua + wb * ub
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (u * ((1 - t) * na + t * nb)).to(a.dtype)


def interpolate_ws(
    G, seeds_a: Sequence[int], seed_b: int, t: float, space: str = "w", psi: float = 1.0, c: torch.Tensor | None = None
) -> torch.Tensor:
    """Faces seeds_a moved a fraction t of the way to seed_b -> ws [N,L,D]."""
    if space not in SPACES:
        raise ControlError(f"space must be one of {SPACES}, got {space!r}")
    if not 0.0 <= float(t) <= 1.0:
        raise ControlError(f"t must be between 0 and 1, got {t}")
    n = len(seeds_a)
    if space == "w":
        wa = seed_ws(G, seeds_a, psi, c)
        wb = seed_ws(G, [seed_b], psi, c).expand(n, -1, -1)
        return lerp(wa, wb, float(t))
    za = seeds_to_z(list(seeds_a), G.z_dim)
    zb = seeds_to_z([seed_b], G.z_dim).expand(n, -1)
    return z_to_ws(G, slerp(za, zb, float(t)), psi, c)


def apply_edit(
    ws: torch.Tensor, vectors: torch.Tensor, scales: Sequence[float], strengths: Sequence[float]
) -> torch.Tensor:
    """ws [N,L,D] + sum_k strengths[k] * scales[k] * vectors[k] (vectors [K,D]) on every layer."""
    if all(float(s) == 0.0 for s in strengths):
        return ws
    coef = torch.tensor([float(s) * float(k) for s, k in zip(strengths, scales)], dtype=torch.float64)  # [K]
    offset = (coef.view(-1, 1) * vectors.double()).sum(0)  # [D]
    return ws + offset.to(ws.dtype).to(ws.device).view(1, 1, -1)


@torch.no_grad()
def synthesize(G, ws: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """ws [N,L,D] -> uint8 [N,H,W,3] with the stored (constant) noise."""
    dev = next(G.parameters()).device
    step = batch_size or max(1, ws.shape[0])
    out = [to_uint8(G.synthesis(ws[i : i + step].to(dev), noise_mode="const")) for i in range(0, ws.shape[0], step)]
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------- one request's controls
@dataclass
class Control:
    """What a request asks for beyond seed/psi/attributes. mix and interpolate are exclusive."""

    mix_seed: int | None = None
    crossover: int | None = None
    interp_seed: int | None = None
    t: float | None = None
    space: str = "w"
    edit: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_item(cls, item: Mapping) -> Control | None:
        """From a request item's "mix" / "interpolate" / "edit" (None when it has none)."""
        mix, itp, edit = item.get("mix"), item.get("interpolate"), item.get("edit")
        if mix is None and itp is None and not edit:
            return None
        if mix is not None and itp is not None:
            raise ControlError(
                "mix and interpolate cannot be combined in one request; send one of them (edit combines with either)"
            )
        ctl = cls(edit={str(k): quantize(v) for k, v in (edit or {}).items()})
        if mix is not None:
            ctl.mix_seed, ctl.crossover = int(mix["seed"]), int(mix["crossover"])
        if itp is not None:
            ctl.interp_seed, ctl.t, ctl.space = int(itp["seed_b"]), quantize(itp["t"]), str(itp.get("space", "w"))
        return ctl

    def describe(self) -> dict:
        """Canonical JSON of the controls (image ids and image records use it)."""
        out: dict = {}
        if self.mix_seed is not None:
            out["mix"] = {"seed": self.mix_seed, "crossover": self.crossover}
        if self.interp_seed is not None:
            out["interpolate"] = {"seed_b": self.interp_seed, "t": self.t, "space": self.space}
        if self.edit:
            out["edit"] = {k: self.edit[k] for k in sorted(self.edit)}
        return out


def check_edit(edit: Mapping[str, float], names: Sequence[str] | None, max_strength: float = MAX_EDIT_STRENGTH) -> None:
    """ControlError for an edit the directions cannot do (names None: the model has none)."""
    if not edit:
        return
    if names is None:
        raise ControlError(
            "this model has no attribute directions: run `facegen directions MODEL "
            "--attribute-model URI` (it writes directions.json into the model directory), "
            "then reload the model"
        )
    unknown = sorted(set(edit) - set(names))
    if unknown:
        raise ControlError(f"unknown attribute direction(s) {unknown}; this model has {list(names)}")
    for k, s in edit.items():
        if not abs(float(s)) <= max_strength:
            raise ControlError(f"edit strength for {k!r} must be within [-{max_strength:g}, {max_strength:g}], got {s}")


def control_ws(
    G,
    seeds: Sequence[int],
    psi: float,
    c: torch.Tensor | None,
    ctl: Control,
    directions=None,
    style_mixing_prob: float | None = None,
) -> torch.Tensor:
    """A request's controls -> ws [len(seeds),L,D]. directions: models.directions.Directions or None;
    style_mixing_prob: the model's training setting (0 refuses mixing; None: not known, allowed)."""
    check_edit(ctl.edit, directions.names if directions is not None else None)
    if ctl.mix_seed is not None:
        check_mixing(style_mixing_prob)
        check_crossover(G.num_ws, ctl.crossover)
        ws = mix_ws(seed_ws(G, seeds, psi, c), seed_ws(G, [ctl.mix_seed], psi, c), ctl.crossover)
    elif ctl.interp_seed is not None:
        ws = interpolate_ws(G, seeds, ctl.interp_seed, ctl.t, ctl.space, psi, c)
    else:
        ws = seed_ws(G, seeds, psi, c)
    if ctl.edit:
        ws = directions.edit(ws, ctl.edit)
    return ws
