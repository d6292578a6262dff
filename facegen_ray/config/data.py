"""Where data lives and how Ray Data prepares and streams it: the storage and data sections."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from facegen_ray.config.base import _check_resolution, _Section


class StorageConfig(_Section):
    """Where everything lives. `root` is a local folder or an s3:// prefix."""

    root: str = "./facegen-data"
    # S3-compatible endpoint (MinIO, moto, ...). Credentials come from the usual AWS env vars
    # or ~/.aws; they are never written into configs.
    endpoint_url: str | None = Field(
        default_factory=lambda: os.environ.get("FACEGEN_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region: str | None = Field(default_factory=lambda: os.environ.get("AWS_DEFAULT_REGION"))
    anon: bool = False


class DataConfig(_Section):
    """`facegen prepare`: raw images -> validated Parquet shards."""

    resolution: int = 64
    limit: int | None = Field(default=None, ge=1)
    min_size: int = Field(default=32, ge=1, description="reject images whose shorter side is smaller")
    shard_rows: int = Field(default=4096, ge=1, description="rows per Parquet shard (upper bound)")
    shard_target_mb: float = Field(default=128.0, gt=0)
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    png_compress_level: int = Field(
        default=1, ge=0, le=9, description="zlib level of stored PNGs (1: ~2.5x faster than 6, ~15% larger)"
    )
    balance: Literal["none", "reweight", "resample"] = "none"
    seed: int = 0
    holdout_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="real faces kept out of training (by content "
        "hash) in a held-out split, for the memorisation report",
    )
    # quality filter (facegen_ray/data/quality.py); 0 turns a rule off. Defaults read off UTKFace (README).
    max_upscale: float = Field(
        default=2.0,
        ge=0,
        description="reject as low_resolution when the square crop is smaller "
        "than resolution / max_upscale source pixels (the face would be mostly interpolation)",
    )
    min_contrast: float = Field(
        default=8.0,
        ge=0,
        description="reject as near_constant when the grey levels' standard deviation (0-255) is below this",
    )
    min_sharpness: float = Field(
        default=40.0,
        ge=0,
        description="reject as blurry when the variance of the Laplacian of "
        "the grey crop at quality_size px is below this (UTKFace: 0.1st pct ~41, median ~640)",
    )
    quality_size: int = Field(
        default=64,
        ge=3,
        le=1024,
        description="side (px) the crop is measured at, whatever the "
        "resolution, so one threshold fits every resolution (smaller crops: their own size)",
    )
    disparity_ratio: float = Field(
        default=2.0,
        ge=1,
        description="prepare flags a demographic group whose quality-reject "
        "rate is above disparity_ratio x the overall rate ...",
    )
    disparity_min_rejected: int = Field(default=5, ge=1, description="... and that lost at least this many images")

    _res = field_validator("resolution")(classmethod(lambda cls, v: _check_resolution(v, "resolution")))
