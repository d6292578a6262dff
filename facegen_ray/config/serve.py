"""How Ray Serve hosts the generator: the serve section."""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from facegen_ray.config.base import ADMIN_TOKEN_ENV, _Section


class ServeConfig(_Section):
    """Ray Serve app: generator replicas + FastAPI ingress."""

    model: str | None = Field(default=None, description="model dir URI or registry version; default: serving version")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=120.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0, description="per generator replica; fractional allowed")
    num_cpus: float = Field(default=1.0, ge=0)
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    adaptive_batch_wait: bool = Field(
        default=True,
        description="a request that finds its generator replica idle "
        "starts a batch at once (no batch_wait_timeout_s); false: always wait",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="GPU replicas replay the synthesis network from CUDA graphs (one per batch bucket "
        "1..64; measured 7.9 -> 3.0 ms per 256x256 face at batch 1 on an H200); no effect on CPU",
    )
    max_request_bytes: int = Field(default=16_384, ge=256)
    admin_token: str | None = Field(
        default_factory=lambda: os.environ.get(ADMIN_TOKEN_ENV),
        exclude=True,
        repr=False,
        description="bearer token of the admin routes (default: FACEGEN_ADMIN_TOKEN); never dumped or shown: "
        "configs stored with checkpoints, exports, sweeps and logs leave it out",
    )
    default_truncation: float = Field(default=0.7, ge=0, le=1)
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="per generator replica; >= requests one batch may gather"
    )
    ingress_replicas: int = Field(default=1, ge=1)
    ingress_num_cpus: float = Field(default=0.5, ge=0)
    ingress_max_ongoing_requests: int = Field(default=256, ge=1)
    image_format_quality: int = Field(default=95, ge=50, le=100, description="JPEG quality of served images")
    model_poll_interval_s: float = Field(default=1.0, gt=0, description="how often replicas check the model pointer")
    reload_timeout_s: float = Field(default=300.0, gt=0, description="admin reload waits this long for every replica")
    compare_pair_ttl_s: float = Field(
        default=3600.0, gt=0, description="a pair shown by the /compare page takes a vote for this long (then 410)"
    )

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self
