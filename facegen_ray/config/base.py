"""Shared pieces of the configuration sections: the error type, the strict section base, and
the checks several sections use."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# the one name of the admin token's environment variable (serve.admin_token's default; the
# admin client and the ingress replicas read it through serve/admin_client.TOKEN_ENV)
ADMIN_TOKEN_ENV = "FACEGEN_ADMIN_TOKEN"


class ConfigError(ValueError):
    """A configuration a user wrote is invalid; the message names the field and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _check_resolution(v: int, name: str) -> int:
    if not (_is_pow2(v) and 4 <= v <= 1024):
        raise ValueError(f"{name} must be a power of two between 4 and 1024, got {v}")
    return v
