"""How Ray Serve hosts the generator: the serve section."""

from __future__ import annotations

import os
import re

from pydantic import Field, field_validator, model_validator

from facegen_ray.config.base import ADMIN_TOKEN_ENV, _Section


class ServeConfig(_Section):
    """Ray Serve app: generator replicas + FastAPI ingress."""

    model: str | None = Field(default=None, description="model dir URI or registry version; default: serving version")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(
        default=64.0,
        gt=0,
        description="autoscaling target per generator replica: about one full batch in flight (the continuous "
        "batcher needs a backlog to batch; a lower target asks for replicas the GPUs cannot hold)",
    )
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=120.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0, description="per generator replica; fractional allowed")
    num_cpus: float = Field(default=1.0, ge=0)
    max_batch_size: int = Field(
        default=64, ge=1, description="images per generator forward pass (the continuous batcher's cap)"
    )
    batch_wait_timeout_s: float = Field(
        default=0.01,
        ge=0,
        description="ignored: the continuous batcher never waits for company (kept so stored configs load)",
    )
    adaptive_batch_wait: bool = Field(
        default=True, description="ignored: the continuous batcher never waits (kept so stored configs load)"
    )
    fake_forward_ms: str | None = Field(
        default=None,
        description="benchmarks and tests only: 'A+Bn' replaces the generator pass by a sleep of A + B*n ms for "
        "a batch of n images (on the forward thread, releasing the GIL like a CUDA sync) returning images of "
        "the loaded model's shape; None: the real model",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="GPU replicas replay the synthesis network from CUDA graphs (one per batch bucket "
        "1..64): at small batches a forward is mostly kernel launches, which a replay skips; no effect on CPU",
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
        default=256,
        ge=1,
        description="per generator replica: the running batch plus the backlog the batcher takes next "
        "(at least max_batch_size; Serve queues the rest in front of the replica)",
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

    @field_validator("fake_forward_ms")
    @classmethod
    def _fake_forward(cls, v: str | None) -> str | None:
        if v is not None:
            fake_forward_costs(v)
        return v

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


_FAKE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*\+\s*(\d+(?:\.\d*)?)\s*n\s*$")


def fake_forward_costs(spec: str) -> tuple[float, float]:
    """serve.fake_forward_ms 'A+Bn' -> (A, B) in ms; ValueError naming the expected form."""
    m = _FAKE_RE.match(str(spec))
    if m is None:
        raise ValueError(
            f"serve.fake_forward_ms must look like 'A+Bn' (A ms per batch plus B ms per image, e.g. "
            f"'45+23.5n'), got {spec!r}"
        )
    return float(m.group(1)), float(m.group(2))
