"""Connecting to Ray: the one place the CLI commands start or join a Ray instance."""

from __future__ import annotations

import os


def ensure_ray() -> None:
    """Join RAY_ADDRESS if set (`ray job submit`, a user's cluster); else start an embedded
    local Ray — always a fresh one (address="local"), never another process's instance.

    When facegen_ray runs from a source checkout (not pip-installed), workers need the checkout
    on their path; with `ray job submit --working-dir .` Ray ships it instead. No-op if Ray is
    already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    import facegen_ray

    src = os.path.dirname(os.path.dirname(os.path.abspath(facegen_ray.__file__)))
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = None
    if "site-packages" not in src and not address:
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    ray.init(address=address or "local", log_to_driver=True, runtime_env=runtime_env)
