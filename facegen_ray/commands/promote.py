"""`facegen promote VERSION [--serve-url URL]`: make a registered model the serving one.

Updates <root>/models/registry.json (the previous serving version becomes retired). With
--serve-url, also asks the running Serve app to load it (POST URL/admin/reload with the bearer
token from FACEGEN_ADMIN_TOKEN); the app must read the same storage root.
"""

from __future__ import annotations

import argparse
import os

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="make a registered model version the serving model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="registered model version (e.g. v3)")
    p.add_argument("--serve-url", default=None, help="running app to reload, e.g. http://127.0.0.1:8000")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the reload")
    add_config_args(p)
    p.set_defaults(func=run)


def admin_token(cfg) -> str:
    """The bearer token for the app's admin routes (FACEGEN_ADMIN_TOKEN or serve.admin_token);
    UserError when there is none (checked before anything is changed)."""
    token = os.environ.get("FACEGEN_ADMIN_TOKEN") or cfg.serve.admin_token
    if not token:
        raise UserError("--serve-url needs the admin token: set FACEGEN_ADMIN_TOKEN")
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


def run(args: argparse.Namespace) -> int:
    from facegen_ray.serve.registry import Registry
    from facegen_ray.storage import Storage

    cfg = config_from_args(args)
    token = admin_token(cfg) if args.serve_url else None
    reg = Registry(Storage(cfg.storage), cfg.storage.root)
    entry = reg.promote(args.version)
    print(f"[facegen] {args.version} is now serving ({entry['uri']})")
    if args.serve_url:
        body = reload_app(args.serve_url, args.version, token, args.timeout)
        print(f"[facegen] {args.serve_url} now serves {body.get('model_version')} on {body.get('replicas')} replica(s)")
    return 0
