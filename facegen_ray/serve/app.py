"""The Ray Serve application of facegen: the builders that wire its three deployments.

    HTTP ──► FacegenIngress (serve/ingress.py: FastAPI, @serve.ingress)  /generate /feedback / /healthz /admin/*
               │  handle.render.remote(request item)      PNG/JPEG encoding, feedback store writes
               ▼
             GeneratorDeployment (serve/replica.py: autoscaling, num_gpus/num_cpus from ServeConfig,
               continuous batching (serve/batcher.py), model swaps without dropped requests)
               ▲ polls every model_poll_interval_s
             ModelState (serve/model_state.py: 1 replica, no CPU, on the head node): which model
               every generator replica should hold + each replica's last report.
             FacegenGuard (serve/ratelimit.py: 1 replica, no CPU, on the head node): the rate-limit
               buckets every ingress replica shares, and the session secret when
               FACEGEN_SESSION_SECRET is unset. (serve/singletons.py says why the head.)

Two ways to change the served model:
  - `user_config: {"model": URI-or-version}` on GeneratorDeployment (edit it in
    deployments/serve.yaml and `serve deploy`/`serve run` again: a lightweight update that
    calls `reconfigure`; the optional key max_batch_size retunes batching).
  - `POST /admin/reload {"model": ...}` / `POST /admin/promote {"version": ...}` with
    `Authorization: Bearer <token>` (ServeConfig.admin_token or FACEGEN_ADMIN_TOKEN; the client
    side is serve/admin_client.py): the ingress resolves and test-loads the model, moves the
    pointer and waits until every live replica reports it. Without a token they answer 403.
The most recent change wins; replicas started later load the pointer's model. (If the
ModelState replica itself restarts, the pointer falls back to the user_config model.)

Build with `build_app(args)` (the import path deployments/serve.yaml uses:
facegen_ray.serve.app:build_app); `python -m facegen_ray.serve.app` writes such a Serve config.
"""

import argparse
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from facegen_ray.config import FacegenConfig, ServeConfig, load_config
from facegen_ray.config.serve import MIN_ADMIN_TOKEN_CHARS
from facegen_ray.errors import UserError
from facegen_ray.serve.autoscale import POLICY_FUNCTION
from facegen_ray.serve.http_input import _token_digest
from facegen_ray.serve.identity import secret_from_env
from facegen_ray.serve.ingress import INGRESS_NAME, FacegenIngress
from facegen_ray.serve.model_state import STATE_NAME, ModelState
from facegen_ray.serve.ratelimit import GUARD_NAME, GuardDeployment
from facegen_ray.serve.replica import GENERATOR_NAME, GeneratorDeployment
from facegen_ray.storage import normalize

__all__ = [
    "APP_NAME",
    "GENERATOR_NAME",
    "GUARD_NAME",
    "INGRESS_NAME",
    "STATE_NAME",
    "AppArgs",
    "FacegenIngress",
    "GeneratorDeployment",
    "ModelState",
    "app_config",
    "autoscaling_config",
    "build_app",
    "main",
    "serve_config_dict",
]

APP_NAME = "facegen"
IMPORT_PATH = "facegen_ray.serve.app:build_app"


def _as_str(value: Any) -> Any:
    return value if value is None else str(value)


_Str = Annotated[str, BeforeValidator(_as_str)]


class AppArgs(BaseModel):
    """The args of `build_app` (the `args:` of an application in a Serve config).

    model: URI or registry version (default serve.model, else "serving"); root: storage root;
    config: a config YAML path; set: ["a.b=c", ...] overrides; endpoint_url: S3 endpoint; and
    any ServeConfig field by its name (e.g. max_replicas: 2), applied as serve.<field>."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: _Str | None = None
    root: _Str | None = None
    config: _Str | None = None
    set: list[str] | None = None
    endpoint_url: _Str | None = None

    @model_validator(mode="after")
    def _only_serve_fields(self) -> "AppArgs":
        unknown = sorted(set(self.model_extra or {}) - set(ServeConfig.model_fields))
        if unknown:
            raise ValueError(
                f"unknown facegen app arguments: {unknown} (ServeConfig fields, model, root, config, set, endpoint_url)"
            )
        return self

    def updates(self) -> dict[str, Any]:
        """The config values these args stand for, by dotted key (storage root/endpoint, serve
        fields); `set` applies on top of them."""
        out: dict[str, Any] = {}
        if self.root:
            out["storage.root"] = self.root
        if self.endpoint_url:
            out["storage.endpoint_url"] = self.endpoint_url
        extra = self.model_extra or {}
        out.update({f"serve.{k}": extra[k] for k in sorted(extra)})
        return out


def app_config(args: dict[str, Any] | None) -> tuple[FacegenConfig, str]:
    """App builder args (see AppArgs) -> (config, initial model ref). UserError for unknown or
    mistyped args."""
    try:
        a = AppArgs.model_validate(dict(args or {}))
    except ValidationError as e:
        problems = "; ".join(
            (".".join(str(p) for p in err["loc"]) + ": " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in e.errors(include_url=False, include_input=False)
        )
        raise UserError(f"invalid facegen app arguments: {problems}") from None
    cfg = load_config(a.config, list(a.set or []), updates=a.updates())
    return cfg, str(a.model or cfg.serve.model or "serving")


def autoscaling_config(sc: ServeConfig) -> dict[str, Any]:
    """GeneratorDeployment's Serve autoscaling_config from the serve config."""
    out: dict[str, Any] = {
        "min_replicas": sc.min_replicas,
        "max_replicas": sc.max_replicas,
        "target_ongoing_requests": sc.target_ongoing_requests,
        "upscale_delay_s": sc.upscale_delay_s,
        "downscale_delay_s": sc.downscale_delay_s,
        # replicas follow the images waiting, not the (micro-batched) calls
        "policy": {"policy_function": POLICY_FUNCTION},
    }
    if sc.initial_replicas is not None:
        out["initial_replicas"] = sc.initial_replicas
    return out


def generator_max_ongoing(sc: ServeConfig) -> int:
    """GeneratorDeployment's max_ongoing_requests: the running batch plus a full next batch at
    least, so the continuous batcher sees the backlog (requests beyond it wait in Serve's queue)."""
    return max(sc.max_ongoing_requests, 2 * sc.max_batch_size)


def generator_actor_options(sc: ServeConfig) -> dict[str, Any]:
    """GeneratorDeployment's ray_actor_options (what each replica reserves)."""
    return {"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus}


def check_secrets(sc: ServeConfig) -> None:
    """UserError for an admin token shorter than 32 characters or a short FACEGEN_SESSION_SECRET
    (both are refused at start: a short one can be guessed)."""
    if sc.admin_token is not None and len(sc.admin_token) < MIN_ADMIN_TOKEN_CHARS:
        raise UserError(
            f"the admin token (serve.admin_token / FACEGEN_ADMIN_TOKEN) is {len(sc.admin_token)} characters: "
            f"use at least {MIN_ADMIN_TOKEN_CHARS} random ones (e.g. `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`), or leave it unset to disable the admin routes"
        )
    secret_from_env()


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (deployments/serve.yaml: import_path facegen_ray.serve.app:build_app)."""
    cfg, model = app_config(args or {})
    sc = cfg.serve
    check_secrets(sc)
    serve_cfg = sc.model_dump(mode="json", exclude={"admin_token"})
    # absolute here, where the app is built: a relative root handed to the replicas would be
    # resolved by each replica against its own working directory on its own host
    root = normalize(cfg.storage.root)
    storage = {**cfg.storage.model_dump(mode="json"), "root": root}
    state = ModelState.bind()
    guard = GuardDeployment.bind(serve_cfg)
    generator = GeneratorDeployment.options(
        autoscaling_config=autoscaling_config(sc),
        ray_actor_options=generator_actor_options(sc),
        max_ongoing_requests=generator_max_ongoing(sc),
        user_config={"model": model},
    ).bind(state, root, storage, serve_cfg)
    return FacegenIngress.options(
        num_replicas=sc.ingress_replicas,
        ray_actor_options={"num_cpus": sc.ingress_num_cpus},
        max_ongoing_requests=sc.ingress_max_ongoing_requests,
    ).bind(generator, state, root, storage, serve_cfg, _token_digest(sc.admin_token), guard)


def http_timeouts(sc: ServeConfig) -> dict[str, Any]:
    """Serve http_options that bound a request: request_timeout_s end to end (the body read has
    its own, serve.body_timeout_s, in the ingress) and keep_alive_timeout_s for idle connections."""
    return {"request_timeout_s": sc.request_timeout_s, "keep_alive_timeout_s": 5}


def serve_config_dict(args: dict[str, Any], host: str = "0.0.0.0", port: int = 8000) -> dict[str, Any]:
    """A Serve config (ServeDeploySchema) for `serve run`/`serve deploy` with this app; the model
    is set as a user_config override so that editing it is a lightweight update (no restart)."""
    cfg, model = app_config(args)
    sc = cfg.serve
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port, **http_timeouts(sc)},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": dict(args),
                "deployments": [
                    {
                        "name": GENERATOR_NAME,
                        "user_config": {"model": model},
                        "max_ongoing_requests": generator_max_ongoing(sc),
                        "autoscaling_config": autoscaling_config(sc),
                        "ray_actor_options": generator_actor_options(sc),
                    },
                    {"name": INGRESS_NAME, "num_replicas": sc.ingress_replicas},
                ],
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m facegen_ray.serve.app --root URI --model REF [--set serve.k=v] > serve.yaml`:
    write a Serve config for this app (what deployments/serve.yaml was generated with)."""
    p = argparse.ArgumentParser(prog="python -m facegen_ray.serve.app", description=main.__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--model", default="serving")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a ServeConfig field as an app argument, e.g. --arg num_gpus=1 (YAML value)",
    )
    a = p.parse_args(argv)
    args: dict[str, Any] = {"model": a.model, "root": a.root}
    for item in a.arg:
        k, _, v = item.partition("=")
        args[k.strip()] = yaml.safe_load(v)
    doc = serve_config_dict(args, host=a.host, port=a.port)
    print(
        "# generated by: python -m facegen_ray.serve.app "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    )
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
