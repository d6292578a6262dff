"""Sweep files (tune_configs/*.yaml): schema, validation and the Ray Tune search space.

A sweep file names a base facegen config, fixed overrides and a search space over any config
field, addressed by its dotted key (`train.g_lr`, `loss.clip_value`, ...):

    name: ttur-lr                               # experiment name: <root>/tune/<name>/
    base_config: ../configs/utkface-64.yaml     # optional, relative to the sweep file
    overrides: {train.total_images: 2000000}    # optional fixed settings (dotted keys)
    metric: fid                                 # fid | kid; lower is better
    num_samples: 8                              # samples of the random dimensions, per grid point
    start_points: [{train.g_lr: 0.002}]         # optional: trials run first (count towards num_samples)
    search_space:
      train.g_lr: {loguniform: [1.0e-4, 1.0e-2]}
      loss.name: {choice: [wgan, wgan-gp]}
      loss.clip_value: {grid: [0.005, 0.01, 0.02]}
    scheduler: {type: asha, grace_period_images: 400000, reduction_factor: 2, margin: 1.0}
    max_concurrent_trials: 2
    eval: {num_gen: 2000, num_real: 5000, every_images: 200000}

Distributions: grid (every value, each one a separate trial set), choice (uniform over the
values), uniform [lo, hi], loguniform [lo, hi] (lo > 0), randint [lo, hi) (hi exclusive).
Number of trials = num_samples x (product of the grid sizes), as in Ray Tune.

Everything is checked here, before Ray starts: unknown keys, unknown config fields, malformed
distributions, and whether the values a distribution can produce (every grid/choice value, the
bounds of the ranges) give a valid facegen config. Errors raise SweepError (a UserError: the
CLI prints it and exits 2) naming the offending field.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from facegen_ray.config import (
    ConfigError,
    FacegenConfig,
    apply_overrides,
    config_from_dict,
    config_key,
    read_yaml_mapping,
    set_dotted,
)
from facegen_ray.errors import UserError, format_validation_error
from facegen_ray.storage import is_remote
from facegen_ray.tune.distributions import (
    DISTRIBUTIONS,
    Distribution,
    _Strict,
    decode_value,
    encode_value,
    to_tune_domain,
)

# Imported where used, not here: ray: only to_tune_domain builds Ray Tune objects; sweep files are
# validated before Ray starts.

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
MAX_PRODUCT_CHECK = 256  # validate every combination of discrete values up to this many


class SweepError(UserError):
    """A sweep file (or its base config / --set) is invalid; the message names the field."""


class SchedulerSpec(_Strict):
    """Early stopping. asha: Ray Tune's ASHA on the reported metric, with images seen as time."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period_images: int | None = Field(default=None, ge=1, description="default: eval.every_images")
    reduction_factor: float = Field(default=2.0, gt=1)
    brackets: int = Field(default=1, ge=1)
    margin: float = Field(
        default=0.0,
        ge=0,
        description="stop a trial at a rung only when its metric is worse than the rung's cutoff by more "
        "than this (metric units; the FID spread benchmarks/fid_noise.py measures); 0 = plain ASHA",
    )


class EvalSpec(_Strict):
    """How trials measure the metric; shorthand for eval.* / train.eval_every_images."""

    num_gen: int | None = Field(default=None, ge=2, description="generated images per FID (eval.num_gen)")
    num_real: int | None = Field(default=None, ge=2, description="reference reals (eval.num_real); default all")
    every_images: int | None = Field(
        default=None, ge=1, description="train.eval_every_images; default: only at the end"
    )
    batch_size: int | None = Field(default=None, ge=1)
    truncation: float | None = Field(default=None, ge=0, le=1)


class SweepSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="experiment name: <root>/tune/<name>")
    description: str | None = None
    base_config: str | None = Field(default=None, description="facegen config YAML, relative to the sweep file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed settings, dotted keys")
    metric: Literal["fid", "kid"] = "fid"
    num_samples: int = Field(default=1, ge=1)
    search_space: dict[str, Distribution] = Field(min_length=1)
    start_points: list[dict[str, Any]] = Field(
        default_factory=list,
        description="trials to run first, with these values of search keys (e.g. the hand-set default as a "
        "control); they count towards num_samples; keys left out are sampled",
    )
    scheduler: SchedulerSpec | None = None
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    seed: int = 0
    eval: EvalSpec = Field(default_factory=EvalSpec)


# ------------------------------------------------------------------ config paths


def check_config_path(key: str, where: str) -> list[str]:
    """`train.g_lr` -> ["train", "g_lr"] (config.config_key; a whole section is not a sweep
    key); SweepError naming `where` when no such config field."""
    if "." not in key:
        raise SweepError(f"{where}: {key!r} is not a config field; use section.field, e.g. train.g_lr")
    try:
        return config_key(key)
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None


def _fmt_config_error(e: ConfigError) -> str:
    lines = str(e).splitlines()
    return "; ".join(s.strip() for s in lines[1:]) if len(lines) > 1 else str(e)


# ------------------------------------------------------------------ the loaded sweep


@dataclass
class Sweep:
    """A validated sweep: the spec, the resolved base config (dict + model) and where it came from."""

    spec: SweepSpec
    source: str
    base: dict[str, Any]
    base_cfg: FacegenConfig
    paths: dict[str, list[str]] = field(default_factory=dict)  # search key -> config path

    @property
    def name(self) -> str:
        return self.spec.name

    def trial_config(self, params: dict[str, Any], run_name: str | None = None) -> FacegenConfig:
        """The facegen config of one trial: base + sampled params (ConfigError when invalid)."""
        return trial_config(self.base, self.paths, params, run_name)

    def num_trials(self) -> int:
        return expected_trials(self.spec)

    def max_total_images(self) -> int:
        d = self.spec.search_space.get("train.total_images")
        if d is not None and d.max_value() is not None:
            return int(d.max_value())
        return int(self.base_cfg.train.total_images)


def trial_config(
    base: dict[str, Any], paths: dict[str, list[str]], params: dict[str, Any], run_name: str | None = None
) -> FacegenConfig:
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, paths.get(key) or key.split("."), decode_value(value))
    if run_name is not None:
        set_dotted(data, ["train", "run_name"], run_name)
    return config_from_dict(data)


def expected_trials(spec: SweepSpec) -> int:
    grid = [len(d.grid) for d in spec.search_space.values() if d.grid is not None]
    return spec.num_samples * math.prod(grid)


def _spec_location(loc) -> str:
    """Dotted, with the keys of search_space / overrides (dotted config keys) in brackets:
    search_space['train.g_lr'].grid."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if i > 0 and loc[i - 1] in ("search_space", "overrides"):
            parts[-1] += f"[{p!r}]"
        elif isinstance(p, int) and parts:
            parts[-1] += f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts) or "<root>"


def _unknown_spec_key(loc) -> str:
    section = str(loc[0]) if len(loc) > 1 else ""
    allowed = {"eval": EvalSpec, "scheduler": SchedulerSpec}.get(section, SweepSpec)
    return f"unknown key (allowed: {', '.join(allowed.model_fields)})"


def _format_spec_error(err: ValidationError, source: str) -> str:
    return format_validation_error(
        err, f"invalid sweep file {source}:", location=_spec_location, unknown_field=_unknown_spec_key
    )


def load_sweep(
    path: str | Path, sets: list[str] | None = None, *, name: str | None = None, root: str | None = None
) -> Sweep:
    """Read and validate a sweep file. sets: `--set key=value` applied to the base config
    (after the sweep's overrides); name/root replace the sweep name / storage root."""
    p = Path(path)
    raw = read_yaml_mapping(p, "sweep file", "sweep settings (name, search_space, ...)", error=SweepError)
    if name is not None:
        raw["name"] = name
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SweepError(_format_spec_error(e, str(path))) from None

    # base config: file, then the sweep's fixed overrides, eval shorthand, then --set
    base: dict[str, Any] = {}
    if spec.base_config:
        bp = (p.parent / spec.base_config) if not Path(spec.base_config).is_absolute() else Path(spec.base_config)
        base = read_yaml_mapping(
            bp,
            "base_config",
            "sections (storage, data, model, ...)",
            error=SweepError,
            missing=f"base_config: file not found: {spec.base_config} (resolved to {bp}; paths are relative to the sweep file)",
        )
    ev = spec.eval
    shorthand = {
        "eval.num_gen": ev.num_gen,
        "eval.num_real": ev.num_real,
        "train.eval_every_images": ev.every_images,
        "eval.batch_size": ev.batch_size,
        "eval.truncation": ev.truncation,
    }
    try:  # SweepError (a bad key) passes through; ConfigError (a bad value or shape) is reworded
        for key, value in spec.overrides.items():
            set_dotted(base, check_config_path(key, f"overrides[{key!r}]"), value)
        for key, value in shorthand.items():
            if value is not None:
                set_dotted(base, key, value)
        # KID comes from the same Inception features as FID (no extra generation): every trial reports both
        set_dotted(base, "eval.metrics", ["fid", "kid"])
        # a trial's value is its final FID: evaluated at the end even without every_images
        set_dotted(base, "train.eval_at_end", True)
        paths = {key: check_config_path(key, f"search_space[{key!r}]") for key in spec.search_space}
        sets = list(sets or [])
        for key in (["storage.root"] if root else []) + [item.split("=", 1)[0].strip() for item in sets]:
            if key in spec.search_space:
                raise SweepError(
                    f"--set {key}: that field is in the search space; change search_space[{key!r}] instead"
                )
            check_config_path(key, f"--set {key}")
        if root:
            set_dotted(base, "storage.root", root)
        base = apply_overrides(base, sets)
        base_cfg = config_from_dict(base)
        local_root = base_cfg.storage.root
        if not is_remote(local_root) and not os.path.isabs(local_root):
            # trials run in Tune's per-trial working directory: a relative root would resolve there
            # (the end-of-trial evaluation found no dataset under it), so it is anchored here, once
            set_dotted(base, "storage.root", os.path.abspath(local_root))
            base_cfg = config_from_dict(base)
    except ConfigError as e:
        raise SweepError(
            f"base configuration of sweep {spec.name!r} (base_config + overrides + --set) is invalid: "
            f"{_fmt_config_error(e)}"
        ) from None

    sweep = Sweep(spec=spec, source=str(p), base=base, base_cfg=base_cfg, paths=paths)
    _check_samples(sweep)
    _check_start_points(sweep)
    _check_scheduler(sweep)
    return sweep


def _check_samples(sweep: Sweep) -> None:
    """Every value a distribution can produce must give a valid config: each key's probe values
    one at a time, then (when small) every combination of them."""
    probes = {k: d.probe_values() for k, d in sweep.spec.search_space.items()}
    for key, values in probes.items():
        for v in values:
            try:
                sweep.trial_config({key: v})
            except ConfigError as e:
                kind = sweep.spec.search_space[key].kind
                raise SweepError(
                    f"search_space[{key!r}] ({kind}): value {v!r} gives an invalid config: {_fmt_config_error(e)}"
                ) from None
    if len(probes) > 1 and math.prod(len(v) for v in probes.values()) <= MAX_PRODUCT_CHECK:
        keys = list(probes)
        for combo in itertools.product(*(probes[k] for k in keys)):
            params = dict(zip(keys, combo))
            try:
                sweep.trial_config(params)
            except ConfigError as e:
                raise SweepError(
                    f"search_space: the combination {params} gives an invalid config: {_fmt_config_error(e)}"
                ) from None


def _check_start_points(sweep: Sweep) -> None:
    """Each start point: only search keys, at most num_samples points, no grid dimensions (a grid
    point would multiply them), and a valid config with every value given."""
    spec = sweep.spec
    if not spec.start_points:
        return
    if any(d.grid is not None for d in spec.search_space.values()):
        raise SweepError("start_points: not supported with grid dimensions; use choice instead of grid")
    if len(spec.start_points) > spec.num_samples:
        raise SweepError(
            f"start_points: {len(spec.start_points)} points but num_samples is {spec.num_samples}; "
            f"the points count towards num_samples"
        )
    for i, point in enumerate(spec.start_points):
        for key in point:
            if key not in spec.search_space:
                raise SweepError(
                    f"start_points[{i}]: {key!r} is not a search_space key "
                    f"(search keys: {', '.join(spec.search_space)}); fixed values go under overrides"
                )
        try:
            sweep.trial_config(point)
        except ConfigError as e:
            raise SweepError(f"start_points[{i}]: {point} gives an invalid config: {_fmt_config_error(e)}") from None


def _check_scheduler(sweep: Sweep) -> None:
    sched = sweep.spec.scheduler
    every = sweep.base_cfg.train.eval_every_images
    if sched is not None and sched.type == "asha":
        if not every:
            raise SweepError(
                "scheduler: asha stops trials on intermediate results; set eval.every_images "
                "(how often trials report the metric)"
            )
        grace = sched.grace_period_images or every
        if grace > sweep.max_total_images():
            raise SweepError(
                f"scheduler.grace_period_images ({grace}) exceeds train.total_images "
                f"({sweep.max_total_images()}): no trial could ever be stopped early"
            )


# ------------------------------------------------------------------ Ray Tune search space


def start_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Tune's points_to_evaluate: each start point under "params", like param_space."""
    return [{"params": {k: encode_value(v) for k, v in point.items()}} for point in spec.start_points]


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's param_space: {"params": {dotted key: domain}} (a trial's config["params"] holds
    the sampled values under the same keys)."""
    return {"params": {k: to_tune_domain(d) for k, d in spec.search_space.items()}}


__all__ = [
    "DISTRIBUTIONS",
    "Distribution",
    "EvalSpec",
    "SchedulerSpec",
    "Sweep",
    "SweepError",
    "SweepSpec",
    "check_config_path",
    "expected_trials",
    "load_sweep",
    "param_space",
    "start_points",
    "to_tune_domain",
    "trial_config",
]
