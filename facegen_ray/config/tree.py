"""The whole configuration tree and every way it is set: defaults, a YAML file, a command's
own options (typed values by dotted key) and `--set a.b=c` overrides."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from facegen_ray.config.base import ConfigError, _Section
from facegen_ray.config.data import DataConfig, StorageConfig
from facegen_ray.config.evaluate import EvalConfig
from facegen_ray.config.feedback import FeedbackConfig
from facegen_ray.config.lifecycle import GateConfig, RetrainConfig
from facegen_ray.config.model import LossConfig, ModelConfig
from facegen_ray.config.serve import ServeConfig
from facegen_ray.config.train import TrainConfig
from facegen_ray.errors import format_validation_error


class FacegenConfig(_Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)

    @model_validator(mode="after")
    def _consistent(self) -> FacegenConfig:
        if self.train.start_resolution > self.model.resolution:
            raise ValueError(
                f"train.start_resolution ({self.train.start_resolution}) exceeds model.resolution ({self.model.resolution})"
            )
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    return format_validation_error(
        err,
        f"invalid configuration ({source}):",
        unknown_field=lambda loc: "unknown field (check the spelling; see facegen_ray/config/ for the fields)",
    )


# ------------------------------------------------------------------ dotted keys


def config_key(key: str) -> list[str]:
    """`train.g_lr` -> ["train", "g_lr"], checked against the schema: a section (`model`, the
    whole section), a section.field, or a deeper key below a mapping field
    (`train.batch_size.16`). ConfigError naming the key (with a close match when there is one)."""
    parts = key.split(".")
    sections = list(FacegenConfig.model_fields)
    if not key or any(not p for p in parts):
        raise ConfigError(f"{key!r} is not a config field; use section.field, e.g. train.g_lr")
    if parts[0] not in sections:
        hint = difflib.get_close_matches(parts[0], sections, n=1)
        raise ConfigError(
            f"unknown config section {parts[0]!r} in {key!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else f"; sections: {', '.join(sections)}")
        )
    if len(parts) == 1:
        return parts
    fields = FacegenConfig.model_fields[parts[0]].annotation.model_fields  # type: ignore[union-attr]
    if parts[1] not in fields:
        hint = difflib.get_close_matches(parts[1], list(fields), n=1)
        raise ConfigError(
            f"unknown config field {key!r}"
            + (f" (did you mean {parts[0]}.{hint[0]}?)" if hint else f"; see facegen_ray/config/ ({parts[0]} section)")
        )
    if len(parts) > 2 and not str(fields[parts[1]].annotation).startswith("dict"):
        raise ConfigError(f"{parts[0]}.{parts[1]} is not a mapping, so {key!r} does not exist")
    return parts


def set_dotted(data: dict[str, Any], key: str | list[str], value: Any) -> None:
    """data[a][b]... = value for the dotted key `a.b...`: the one writer of dotted keys (--set,
    with_updates, sweep files). Missing sections are created; a key below a mapping field that
    looks like an int becomes one (batch_size / lr_scale are keyed by resolution). ConfigError
    when a step of the path holds something other than a mapping."""
    parts = key.split(".") if isinstance(key, str) else list(key)
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part!r} is not a section")
        node = nxt
    last: Any = parts[-1]
    if len(parts) > 2 and last.isdigit():
        last = int(last)
    node[last] = value


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], yaml-parsed c)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. train.num_workers=2), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`--set` strings -> {dotted key: parsed value}, parsed once at the command line; a key
    given again moves to the end with its last value (applying the result in order is applying
    the strings in order)."""
    out: dict[str, Any] = {}
    for item in overrides:
        path, value = parse_override(item)
        key = ".".join(path)
        out.pop(key, None)
        out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set` strings applied in order to a config dict (a file's contents)."""
    for item in overrides:
        path, value = parse_override(item)
        try:
            set_dotted(data, path, value)
        except ConfigError as e:
            raise ConfigError(f"--set {e}") from None
    return data


def with_updates(cfg: FacegenConfig, *updates: Mapping[str, Any]) -> FacegenConfig:
    """A new, validated config: `cfg` with each dotted key (see config_key) set to its value,
    the mappings and their keys in order (a later one wins). `cfg` itself is not changed, and
    neither are the values passed (they are copied). ConfigError for an unknown key or an
    invalid result, naming the field.

        with_updates(cfg, {"train.num_workers": 2, "train.batch_size.64": 16})
    """
    data = cfg.model_dump()
    keys: list[str] = []
    for mapping in updates:
        for key, value in mapping.items():
            set_dotted(data, config_key(key), copy.deepcopy(value))
            keys.append(key)
    try:
        return FacegenConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, "updates to " + ", ".join(keys))) from None


def read_yaml_mapping(
    path: str | os.PathLike,
    what: str,
    expected: str,
    *,
    error: type[Exception] = ConfigError,
    missing: str | None = None,
) -> dict[str, Any]:
    """A YAML file that must hold a mapping -> dict; `error` (a UserError) with a message naming
    `what` when the file is missing (`missing` replaces that message), not YAML, or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise error(missing or f"{what} not found: {path}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start}): is it the right file?") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise error(f"{what} {path} must hold a mapping of {expected}")
    return loaded


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # facegen_ray/configs, in the wheel


def packaged_config(path: str | os.PathLike) -> Path:
    """A config path as given, or, when no such file exists here, the config of that name shipped
    in the package (`configs/utkface-64.yaml` or `utkface-64.yaml`): a RayJob's entrypoint runs
    in an installed package, without the repository's configs/ folder."""
    p = Path(path)
    if p.is_file() or p.is_absolute() or p.parent.name not in ("", "configs"):
        return p
    shipped = PACKAGED_CONFIGS / p.name
    return shipped if shipped.is_file() else p


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, updates: Mapping[str, Any] | None = None
) -> FacegenConfig:
    """Defaults <- YAML file <- updates (typed values by dotted key: a command's own options)
    <- overrides (`--set` strings, which win). Raises ConfigError with a readable message."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = packaged_config(path)
        data = read_yaml_mapping(path, "config file", "sections (storage, data, model, ...)")
        source = str(path)
    for key, value in (updates or {}).items():
        set_dotted(data, config_key(key), copy.deepcopy(value))
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + --set"
    try:
        return FacegenConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def config_from_dict(data: dict[str, Any]) -> FacegenConfig:
    try:
        return FacegenConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, "dict")) from None
