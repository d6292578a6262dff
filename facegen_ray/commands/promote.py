"""`facegen promote VERSION [--serve-url URL]`: make a registered model the serving one.

Updates <root>/models/registry.json (the previous serving version becomes retired). With
--serve-url, also asks the running Serve app to load it (POST URL/admin/reload with the bearer
token from FACEGEN_ADMIN_TOKEN); the app must read the same storage root.
"""

from __future__ import annotations

import argparse

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.registry import Registry
from facegen_ray.serve.admin_client import admin_token, reload_app
from facegen_ray.storage import Storage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="make a registered model version the serving model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("version", metavar="VERSION", help="registered model version (e.g. v3)")
    p.add_argument("--serve-url", default=None, help="running app to reload, e.g. http://127.0.0.1:8000")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the reload")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    token = admin_token(cfg) if args.serve_url else None
    reg = Registry(Storage(cfg.storage), cfg.storage.root)
    entry = reg.promote(args.version)
    print(f"[facegen] {args.version} is now serving ({entry['uri']})")
    if args.serve_url:
        body = reload_app(args.serve_url, args.version, token, args.timeout)
        print(f"[facegen] {args.serve_url} now serves {body.get('model_version')} on {body.get('replicas')} replica(s)")
    return 0
