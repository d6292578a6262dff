"""The distributions of a sweep's search space: their schema (exactly one of grid, choice,
uniform, loguniform, randint), the values worth validating before Ray starts, and the Ray Tune
domain each one becomes (spec.py reads sweep files with them).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Imported where used, not here: ray (only to_tune_domain, when a sweep starts).

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """Exactly one of: grid, choice (non-empty lists), uniform, loguniform ([lo, hi] floats),
    randint ([lo, hi) ints)."""

    grid: list[Any] | None = Field(default=None, min_length=1)
    choice: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):  # ValueError: pydantic turns only that into a located error
            raise ValueError(  # noqa: TRY004
                f"a distribution must be a mapping with one of {', '.join(DISTRIBUTIONS)}, e.g. "
                f"{{loguniform: [1.0e-4, 1.0e-2]}}, got {data!r} (fixed values go under `overrides`)"
            )
        unknown = sorted(set(data) - set(DISTRIBUTIONS))
        if unknown:
            raise ValueError(f"unknown distribution {unknown[0]!r}; use one of {', '.join(DISTRIBUTIONS)}")
        if len(data) != 1:
            raise ValueError(
                f"give exactly one distribution ({', '.join(DISTRIBUTIONS)}), got {sorted(data) or 'none'}"
            )
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.uniform is not None and not self.uniform[0] < self.uniform[1]:
            raise ValueError(f"uniform needs [low, high] with low < high, got {list(self.uniform)}")
        if self.loguniform is not None:
            lo, hi = self.loguniform
            if not (0 < lo < hi):
                raise ValueError(f"loguniform needs [low, high] with 0 < low < high, got {[lo, hi]}")
        if self.randint is not None and not self.randint[0] < self.randint[1]:
            raise ValueError(f"randint needs [low, high) with low < high (high exclusive), got {list(self.randint)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def probe_values(self) -> list[Any]:
        """Values this distribution can produce that are worth validating: every grid/choice
        value; the bounds of a range (a config constraint is an interval, so the bounds decide)."""
        k, a = self.kind, self.args
        if k in ("grid", "choice"):
            return list(a)
        if k == "randint":
            return [int(a[0]), int(a[1]) - 1]
        return [float(a[0]), float(a[1])]

    def max_value(self) -> Any:
        vals = self.probe_values()
        try:
            return max(vals)
        except TypeError:
            return None


# Ray Tune walks into list values of a preset point (points_to_evaluate) element by element
# and then fails on them (ray 2.60, variant_generator._get_preset_variants), so a choice/grid
# whose values are lists or mappings (train.betas) travels through Tune as a tagged JSON string,
# decoded back where a trial's params become a config or a results row.
_ENCODED = "json:"


def encode_value(value: Any) -> Any:
    """A choice/grid value as Tune carries it: lists and mappings as "json:<JSON>"."""
    if isinstance(value, (list, tuple, dict)):
        return _ENCODED + json.dumps(value)
    return value


def decode_value(value: Any) -> Any:
    """encode_value's inverse; anything else unchanged."""
    if isinstance(value, str) and value.startswith(_ENCODED):
        return json.loads(value[len(_ENCODED) :])
    return value


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: decode_value(v) for k, v in params.items()}


def to_tune_domain(dist: Distribution) -> Any:
    """One distribution -> the Ray Tune object (grid -> {"grid_search": [...]})."""
    from ray import tune

    k, a = dist.kind, dist.args
    if k == "grid":
        return tune.grid_search([encode_value(v) for v in a])
    if k == "choice":
        return tune.choice([encode_value(v) for v in a])
    if k == "uniform":
        return tune.uniform(float(a[0]), float(a[1]))
    if k == "loguniform":
        return tune.loguniform(float(a[0]), float(a[1]))
    return tune.randint(int(a[0]), int(a[1]))
