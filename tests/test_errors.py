"""One renderer for validation errors (errors.format_validation_error), used by the config
(facegen_ray/config) and sweep files (tune/spec.py): where, then what, and the value given
only when the message does not already name it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from facegen_ray.config import ConfigError, load_config
from facegen_ray.errors import dotted_location, format_validation_error
from facegen_ray.tune.spec import SweepError, load_sweep


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(default=1, ge=1)
    items: list[int] = []


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int
    inner: _Inner = _Inner()

    @field_validator("size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"size must be a power of two, got {v}")
        return v


def _error(data) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        _Outer.model_validate(data)
    return e.value


def test_each_kind_of_error_on_its_own_line():
    err = _error({"size": 48, "inner": {"n": 0, "items": [1, "x"], "extra": 2}})
    text = format_validation_error(err, "invalid thing:", unknown_field=lambda loc: f"unknown ({loc[-1]})")
    assert text.splitlines() == [
        "invalid thing:",
        "  size: size must be a power of two, got 48",  # the validator's message alone, once
        "  inner.n: Input should be greater than or equal to 1 (got 0)",
        "  inner.items[1]: Input should be a valid integer, unable to parse string as an integer (got 'x')",
        "  inner.extra: unknown (extra)",
    ]
    assert format_validation_error(_error({}), "h:").splitlines() == ["h:", "  size: required"]


def test_dotted_location():
    assert dotted_location(()) == "<root>"
    assert dotted_location(("a", 0, "b", 2)) == "a[0].b[2]"
    assert dotted_location((0,)) == "0"


def test_config_errors_name_the_value_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.resolution=48"])
    msg = str(e.value)
    assert "Value error" not in msg and msg.count("48") == 1
    assert msg.endswith("model.resolution: resolution must be a power of two between 4 and 1024, got 48")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.start_resolution=128"])  # a model-level check: no dump of the whole input
    assert str(e.value).splitlines()[1] == "  <root>: train.start_resolution (128) exceeds model.resolution (64)"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.num_workers=0"])
    assert str(e.value).endswith("train.num_workers: Input should be greater than or equal to 1 (got 0)")
    with pytest.raises(ConfigError, match=r"model\.bogus: unknown field \(check the spelling"):
        load_config(None, ["model.bogus=1"])


def test_sweep_errors_use_the_same_renderer(tmp_path):
    p = tmp_path / "sweep.yaml"
    p.write_text("name: x\nmetric: fid\nsearch_space:\n  train.g_lr: {grid: []}\neval: {num_gen: 1, bad: 2}\n")
    with pytest.raises(SweepError) as e:
        load_sweep(p)
    lines = str(e.value).splitlines()
    assert lines[0] == f"invalid sweep file {p}:"
    assert "  eval.num_gen: Input should be greater than or equal to 2 (got 1)" in lines
    assert any(line.startswith("  eval.bad: unknown key (allowed: num_gen,") for line in lines)
    assert any(line.startswith("  search_space['train.g_lr'].grid: ") for line in lines)
    assert not any("Value error" in line for line in lines)
