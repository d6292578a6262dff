"""Attribute conditioning: (age, gender, race) -> integer codes the models embed.

A condition row is c = [age_bucket, gender, race] (LongTensor [N,3]); -1 means unknown and is
embedded as its own index (the last one of each table), so a partly labelled dataset and an
"any attributes" request both work. Codes follow UTKFace: gender 0 male / 1 female,
race 0 white / 1 black / 2 asian / 3 indian / 4 other. Age buckets come from
ModelConfig.age_buckets (lower bounds in years, ascending).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from facegen_ray.config import ModelConfig
from facegen_ray.errors import UserError

NUM_GENDERS = 2
NUM_RACES = 5


def attribute_cardinalities(cfg: ModelConfig) -> tuple[int, int, int]:
    """Number of known values per attribute: (age buckets, genders, races)."""
    return len(cfg.age_buckets), NUM_GENDERS, NUM_RACES


def age_to_bucket(age: int | float | None, age_buckets: Sequence[int]) -> int:
    """Age in years -> index of the last bucket whose lower bound is <= age; None/negative -> -1."""
    if age is None:
        return -1
    a = float(age)
    if a < 0:
        return -1
    idx = -1
    for i, lower in enumerate(age_buckets):
        if a >= lower:
            idx = i
    return idx


def _as_list(x, n: int | None) -> list:
    if x is None:
        return [None] * (n if n is not None else 1)
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).tolist()
    if hasattr(x, "tolist") and not isinstance(x, (int, float)):
        out = x.tolist()
        return out if isinstance(out, list) else [out]
    if isinstance(x, Iterable) and not isinstance(x, (str, bytes)):
        return list(x)
    return [x]


def _code(v, n_values: int, name: str) -> int:
    if v is None:
        return -1
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer or null, got {v!r}") from None
    if iv != v:
        raise UserError(f"{name} must be an integer, got {v!r}")
    if iv < 0:
        return -1
    if iv >= n_values:
        raise UserError(f"{name} must be between 0 and {n_values - 1} (or null/-1 for unknown), got {iv}")
    return iv


def encode_attributes(age, gender, race, cfg: ModelConfig) -> torch.Tensor:
    """Attributes -> condition codes LongTensor [N,3] = [age_bucket, gender, race].

    Each argument is a scalar, a sequence/array/tensor of length N, or None (all unknown);
    scalars broadcast to the longest argument. Age is in years (bucketed with
    cfg.age_buckets); None or -1 means unknown (-1). Out-of-range codes raise UserError.
    """
    lists = [_as_list(a, None) for a in (age, gender, race)]
    n = max(len(v) for v in lists)
    for name, v in zip(("age", "gender", "race"), lists):
        if len(v) not in (1, n):
            raise UserError(f"attribute {name} has {len(v)} values, expected 1 or {n}")
    lists = [v * n if len(v) == 1 else v for v in lists]
    n_age, n_gender, n_race = attribute_cardinalities(cfg)
    rows = []
    for a, g, r in zip(*lists):
        if a is not None:
            try:
                a = float(a)
            except (TypeError, ValueError):
                raise UserError(f"age must be a number of years or null, got {a!r}") from None
        rows.append([age_to_bucket(a, cfg.age_buckets), _code(g, n_gender, "gender"), _code(r, n_race, "race")])
    return torch.tensor(rows, dtype=torch.long).reshape(n, 3)


class ConditionEmbedding(nn.Module):
    """c [N,3] (codes, -1 = unknown) -> [N, 3*dim]: one embedding table per attribute, each with
    an extra row for "unknown". `mode="sum"` returns the sum of the three vectors [N, dim]."""

    def __init__(self, cfg: ModelConfig, dim: int, mode: str = "concat"):
        super().__init__()
        self.sizes = attribute_cardinalities(cfg)
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.sizes)
        for t in self.tables:
            nn.init.normal_(t.weight)
        if mode not in ("concat", "sum"):
            raise ValueError(f"mode must be 'concat' or 'sum', got {mode!r}")
        self.mode = mode
        self.dim = dim

    def indices(self, c: torch.Tensor) -> list[torch.Tensor]:
        """Codes -> table indices: unknown (negative) and out-of-range codes -> the last ("unknown") row."""
        if c.dim() != 2 or c.shape[1] != 3:
            raise ValueError(f"condition must be [N,3] (age_bucket, gender, race), got {tuple(c.shape)}")
        c = c.long()
        out = []
        for i, n in enumerate(self.sizes):
            ci = c[:, i]
            out.append(torch.where(ci < 0, torch.full_like(ci, n), ci.clamp(max=n)))
        return out

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        embs = [t(idx) for t, idx in zip(self.tables, self.indices(c))]  # 3 x [N, dim]
        if self.mode == "sum":
            return embs[0] + embs[1] + embs[2]
        return torch.cat(embs, dim=1)
