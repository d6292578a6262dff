"""The client side of the Serve app's admin routes, for `facegen promote`, `facegen retrain`,
`facegen gate` and `facegen quickstart`: where the bearer token comes from and how a running
app is asked to load a model (POST URL/admin/reload).

No Ray import here: the commands that use it run outside the app.
"""

from __future__ import annotations

import os

from facegen_ray.config import ADMIN_TOKEN_ENV
from facegen_ray.errors import UserError

# Imported where used, not here: httpx: in reload_app; promote and retrain import this module at
# their top, and cli.py imports every command module to build the parser, which loads no
# numpy/torch/ray (tests/test_layers.py).

TOKEN_ENV = ADMIN_TOKEN_ENV  # defined once, in config


def configured_token(cfg) -> str | None:
    """The admin token this process knows: FACEGEN_ADMIN_TOKEN, else serve.admin_token; None
    when neither is set."""
    return os.environ.get(TOKEN_ENV) or cfg.serve.admin_token or None


def admin_token(cfg) -> str:
    """The bearer token for the app's admin routes (FACEGEN_ADMIN_TOKEN or serve.admin_token);
    UserError when there is none (callers check it before anything is changed)."""
    token = configured_token(cfg)
    if not token:
        raise UserError(f"--serve-url needs the admin token: set {TOKEN_ENV}")
    return token


def reload_app(serve_url: str, version: str, token: str, timeout: float = 600.0) -> dict:
    """Ask a running Serve app to load registry `version` (POST URL/admin/reload); returns its
    JSON answer ({"model_version", "replicas", ...}). UserError when the call fails (the
    registry has already been updated by then, and the message says so)."""
    import httpx

    url = serve_url.rstrip("/") + "/admin/reload"
    try:
        resp = httpx.post(url, json={"model": version}, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except httpx.HTTPError as e:
        raise UserError(f"registry updated, but reloading {url} failed: {e}") from e
    if resp.status_code != 200:
        raise UserError(f"registry updated, but {url} answered {resp.status_code}: {resp.text[:500]}")
    return resp.json()
