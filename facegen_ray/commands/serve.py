"""`facegen serve MODEL [--port 8000] [--host 127.0.0.1]`: run the Serve app locally.

Starts (or joins, with RAY_ADDRESS) a Ray instance, deploys facegen_ray.serve.app on it and
blocks until Ctrl-C. MODEL is a model directory URI or a registry version (serving / vN).
Admin routes need FACEGEN_ADMIN_TOKEN. On a cluster use `serve run deployments/serve.yaml`.
"""

from __future__ import annotations

import argparse
import signal
import time

from facegen_ray.commands._common import add_config_args, config_from_args
from facegen_ray.runtime import ensure_ray, require_shared
from facegen_ray.storage import Storage

# Imported where used, not here: ray, serve.app, serve.generation (torch, Ray Serve): cli.py imports
# every command module to build the parser, which loads no numpy/torch/ray (tests/test_layers.py).


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve /generate, /feedback and the feedback page locally (Ray Serve)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default=None,
        help="model directory URI or registry version (default: serve.model, else serving)",
    )
    p.add_argument("--port", type=int, default=None, help="HTTP port (default serve.port = 8000)")
    p.add_argument("--host", default=None, help="bind address (default serve.host = 127.0.0.1)")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from facegen_ray.serve.app import APP_NAME, build_app, http_timeouts
    from facegen_ray.serve.generation import resolve_model

    serve_opts = {k: getattr(args, k) for k in ("port", "host") if getattr(args, k) is not None}
    cfg = config_from_args(args, {f"serve.{k}": v for k, v in serve_opts.items()})

    model = args.model or cfg.serve.model or "serving"
    resolve_model(Storage(cfg.storage), model, cfg.storage.root)  # fail fast with a clear message
    app_args = {
        "model": model,
        "root": cfg.storage.root,
        "config": getattr(args, "config", None),
        "set": list(getattr(args, "overrides", []) or []),
        **serve_opts,  # serve fields as app args
    }
    if cfg.serve.admin_token:
        app_args["admin_token"] = cfg.serve.admin_token

    def _stop(signum, frame):  # SIGTERM (docker stop, kill) shuts down like Ctrl-C
        raise KeyboardInterrupt

    # a new local instance unless RAY_ADDRESS says which cluster to join ("auto" = a `ray start` one)
    ensure_ray()
    require_shared({"storage.root": cfg.storage.root})  # replicas on any node read models, write feedback
    signal.signal(signal.SIGTERM, _stop)  # after ray.init, which installs its own handler
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port, **http_timeouts(cfg.serve)})
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
        host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
        print(f"[facegen] serving {model} at http://{host}:{cfg.serve.port}/  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[facegen] stopping", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
