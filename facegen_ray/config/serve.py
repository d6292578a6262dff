"""How Ray Serve hosts the generator: the serve section."""

from __future__ import annotations

import os
import re

from pydantic import Field, field_validator, model_validator

from facegen_ray.config.base import ADMIN_TOKEN_ENV, _Section

MIN_ADMIN_TOKEN_CHARS = 32  # a shorter admin token is refused at start (guessable)
CALLS_PER_REPLICA = 8  # default render calls per generator replica one ingress keeps outstanding (serve/hop.py)


class RateSpec(_Section):
    """One token bucket: `burst` requests at once, refilled at `per_minute`."""

    per_minute: float = Field(gt=0)
    burst: int = Field(ge=1)


def _default_rate_limits() -> dict[str, RateSpec]:
    # route class -> bucket, applied per rater AND per client address (serve/ratelimit.py)
    return {
        "generate": RateSpec(per_minute=120, burst=60),
        "feedback": RateSpec(per_minute=30, burst=20),
        "pairs": RateSpec(per_minute=30, burst=20),
        "vote": RateSpec(per_minute=30, burst=20),
        "session": RateSpec(per_minute=6, burst=10),  # new sessions per client address
    }


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
        description="autoscaling target per generator replica, in images queued or rendering there "
        "(serve/autoscale.py): about one full batch (the continuous batcher needs a backlog to batch; "
        "a lower target asks for replicas the GPUs cannot hold)",
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
    ingress_micro_batch: bool = Field(
        default=True,
        description="each ingress replica sends the generator one call per micro-batch of the requests waiting "
        "for a call slot (serve/hop.py); off: one call per request",
    )
    ingress_calls_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="render calls one ingress replica keeps outstanding (micro-batching); default "
        "CALLS_PER_REPLICA x max_replicas: enough calls queued at each generator replica that its batch "
        "is still everything waiting (docs/serving.md: 2 per replica halved the batch)",
    )
    image_format_quality: int = Field(default=95, ge=50, le=100, description="JPEG quality of served images")
    model_poll_interval_s: float = Field(default=1.0, gt=0, description="how often replicas check the model pointer")
    reload_timeout_s: float = Field(default=300.0, gt=0, description="admin reload waits this long for every replica")
    compare_pair_ttl_s: float = Field(
        default=3600.0, gt=0, description="a pair shown by the /compare page takes a vote for this long (then 410)"
    )

    rater_header: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="header an authenticating proxy sets to the user's id (e.g. X-Forwarded-User); when set, "
        "feedback and votes need it and it is the rater identity. Only set it behind a proxy that strips it from clients",
    )
    session_ttl_s: float = Field(default=30 * 86400.0, gt=0, description="lifetime of a rater session cookie")
    session_cookie_secure: bool = Field(default=False, description="mark the session cookie Secure (behind TLS)")
    rate_limits: dict[str, RateSpec] = Field(
        default_factory=_default_rate_limits,
        description="token buckets by route class (generate, feedback, pairs, vote, session)",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="client addresses of proxies whose X-Forwarded-For names the real client (rate limits key on it)",
    )
    guard_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="an ingress waits this long for the app's guard (rate limits, session secret); past it, "
        "rate limits use the replica's own buckets for 10 s (serve/session_routes.py)",
    )
    body_timeout_s: float = Field(default=10.0, gt=0, description="a request body must arrive within this (else 408)")
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Serve's end-to-end request timeout (http_options)"
    )
    reload_outside_root: bool = Field(
        default=False,
        description="admin reload may name model URIs outside storage.root (off: registry versions and URIs under it)",
    )

    def calls_in_flight(self) -> int:
        """Outstanding render calls per ingress replica (serve.ingress_calls_in_flight or its default)."""
        return self.ingress_calls_in_flight or CALLS_PER_REPLICA * self.max_replicas

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
        unknown = sorted(set(self.rate_limits) - set(_default_rate_limits()))
        if unknown:
            raise ValueError(f"unknown serve.rate_limits keys {unknown}: use {sorted(_default_rate_limits())}")
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
