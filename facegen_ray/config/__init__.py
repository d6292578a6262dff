"""One configuration tree for the whole system.

Every command reads a `FacegenConfig`: defaults below, then an optional YAML file, then the
command's own options, then `--set a.b=c` overrides (values parsed as YAML, so
`--set train.num_workers=2` is an int and `--set eval.metrics=[fid,kid]` a list). Invalid
values raise `ConfigError` naming the field.

Between layers a config travels as a FacegenConfig; a changed copy is
`with_updates(cfg, {"train.num_workers": 2, ...})` (typed values by dotted key, validated).
`set_dotted` is the one writer of dotted keys (--set, with_updates, sweep files).

One module per section (data.py: storage and data, model.py, train.py, evaluate.py, serve.py,
lifecycle.py: retrain and gate, feedback.py: the feedback store's retention); tree.py holds the
whole tree and the ways it is set. Every public name is importable from `facegen_ray.config`.
"""

from facegen_ray.config.base import ADMIN_TOKEN_ENV, ConfigError
from facegen_ray.config.data import DataConfig, StorageConfig
from facegen_ray.config.evaluate import EvalConfig
from facegen_ray.config.feedback import FeedbackConfig
from facegen_ray.config.lifecycle import GateConfig, RetrainConfig
from facegen_ray.config.model import LossConfig, ModelConfig
from facegen_ray.config.serve import ServeConfig
from facegen_ray.config.train import TrainConfig
from facegen_ray.config.tree import (
    FacegenConfig,
    apply_overrides,
    config_from_dict,
    config_key,
    load_config,
    parse_override,
    parse_overrides,
    read_yaml_mapping,
    set_dotted,
    with_updates,
)

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FacegenConfig",
    "FeedbackConfig",
    "GateConfig",
    "LossConfig",
    "ModelConfig",
    "RetrainConfig",
    "ServeConfig",
    "StorageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_key",
    "load_config",
    "parse_override",
    "parse_overrides",
    "read_yaml_mapping",
    "set_dotted",
    "with_updates",
]
