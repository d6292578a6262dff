"""The Ray Serve application: FastAPI ingress + batched generator replicas + a model pointer.

    HTTP ──► FacegenIngress (FastAPI, @serve.ingress)      /generate /feedback / /healthz /admin/*
               │  handle.render.remote(request item)        PNG/JPEG encoding, feedback store writes
               ▼
             GeneratorDeployment (autoscaling, num_gpus/num_cpus from ServeConfig)
               @serve.batch: requests are the batch items (batch_size_fn = images per request),
               so one request's images always come from one model snapshot; forward passes hold
               at most ServeConfig.max_batch_size images.
               ▲ polls every model_poll_interval_s
             ModelState (1 replica, no CPU): which model every generator replica should hold
               (epoch, generation, target uri/label) + each replica's last report.

Model swaps (no dropped requests): a replica loads the new generator in a thread while it
keeps serving, then swaps one reference; a batch takes its model snapshot when it starts, so
in-flight requests finish on the old model. Two ways in:
  - `user_config: {"model": URI-or-version}` on GeneratorDeployment (edit it in
    deployments/serve.yaml and `serve deploy`/`serve run` again: a lightweight update that
    calls `reconfigure`; optional keys max_batch_size / batch_wait_timeout_s retune batching).
  - `POST /admin/reload {"model": ...}` / `POST /admin/promote {"version": ...}` with
    `Authorization: Bearer <token>` (ServeConfig.admin_token or FACEGEN_ADMIN_TOKEN): the ingress
    resolves and test-loads the model, moves the pointer and waits until every live replica
    reports it. Without a configured token the admin routes answer 403.
The most recent change wins; replicas started later load the pointer's model. (If the
ModelState replica itself restarts, the pointer falls back to the user_config model.)

Build with `build_app(args)` (the import path deployments/serve.yaml uses).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve

from facegen_ray.config import FacegenConfig, ServeConfig, StorageConfig, load_config
from facegen_ray.errors import UserError
from facegen_ray.observability.asgi import RequestMetricsMiddleware
from facegen_ray.observability.metrics import serving_metrics
from facegen_ray.serve import generation as gen
from facegen_ray.serve.feedback import FeedbackStore, UnknownImage
from facegen_ray.serve.schemas import (
    MAX_IMAGES_PER_REQUEST,
    FeedbackRequest,
    GenerateQuery,
    GenerateRequest,
    PromoteRequest,
    ReloadRequest,
)
from facegen_ray.storage import Storage

log = logging.getLogger("ray.serve")

APP_NAME = "facegen"
INGRESS_NAME = "FacegenIngress"
GENERATOR_NAME = "GeneratorDeployment"
STATE_NAME = "ModelState"
TOKEN_ENV = "FACEGEN_ADMIN_TOKEN"


# --------------------------------------------------------------------------- model pointer
@serve.deployment(
    name=STATE_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
    logging_config={"enable_access_log": False},  # polled every second by every replica
)
class ModelState:
    """Which model the generator replicas should hold, and what each replica last reported.

    generation increases by one whenever the target changes; epoch changes if this replica is
    restarted, so replicas never confuse generations of two instances."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.generation = 0
        self.target: dict[str, str] | None = None  # {"ref", "uri", "label", "source"}
        self.user_config_ref: str | None = None
        self.reports: dict[str, dict[str, Any]] = {}

    def current(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "generation": self.generation, "target": self.target}

    def _set(self, ref: str, uri: str, label: str, source: str) -> dict[str, Any]:
        if self.target is None or (self.target["uri"], self.target["label"]) != (uri, label):
            self.generation += 1
            self.target = {"ref": ref, "uri": uri, "label": label, "source": source}
        return self.current()

    def from_user_config(self, ref: str, uri: str, label: str) -> dict[str, Any]:
        """A replica saw user_config {"model": ref}: a change of the user_config moves the
        target; the same user_config again (a new replica starting) leaves it alone."""
        if ref != self.user_config_ref or self.target is None:
            self.user_config_ref = ref
            return self._set(ref, uri, label, "user_config")
        return self.current()

    def set_target(self, ref: str, uri: str, label: str) -> dict[str, Any]:
        return self._set(ref, uri, label, "admin")

    def report(self, replica: str, status: dict[str, Any]) -> None:
        self.reports[replica] = {**status, "replica": replica, "time": time.time()}

    def replicas(self, max_age_s: float) -> list[dict[str, Any]]:
        now = time.time()
        self.reports = {k: v for k, v in self.reports.items() if now - v["time"] <= max(max_age_s, 60.0)}
        return [v for v in self.reports.values() if now - v["time"] <= max_age_s]


# --------------------------------------------------------------------------- generator
def _images_in(items: list[dict[str, Any]]) -> int:
    return sum(len(it["seeds"]) for it in items)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve (unit use)
        return f"local-{os.getpid()}"


@serve.deployment(name=GENERATOR_NAME)
class GeneratorDeployment:
    """Holds G_ema on its device and renders batches of requests.

    Item (one HTTP request): {"seeds": [int], "truncation": float, "attributes": dict | None}.
    Result: {"ok": True, "model": LoadedModel.describe(), "images": uint8 [k,H,W,3],
    "conditions": [[a,g,r]] | None} or {"ok": False, "status": 422, "error": message}.
    """

    def __init__(self, state, root: str, storage: dict, serve_cfg: dict) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.storage = Storage(StorageConfig.model_validate(storage))
        self.root = root
        self.state = state
        self.device = gen.choose_device(self.cfg.num_gpus)
        if self.device == "cpu" and self.cfg.num_cpus >= 1:
            import torch

            torch.set_num_threads(max(1, int(self.cfg.num_cpus)))
        self.model: gen.LoadedModel | None = None
        self.loaded_key: tuple[str, int] | None = None
        self.loaded_target: tuple[str, str] | None = None
        self.failed: dict[str, Any] | None = None
        self.user_ref: str | None = None
        self.replica = _replica_id()
        self._lock: asyncio.Lock | None = None
        self._ready: asyncio.Event | None = None
        self._poller: asyncio.Task | None = None
        self._loading: asyncio.Task | None = None
        self._set_batching(self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s)

    # ---- batching parameters
    def _set_batching(self, max_batch_size: int, wait_s: float) -> None:
        self.forward_batch = int(max_batch_size)
        # the queue gathers whole requests; a single request may hold up to 16 images
        self.render_batch.set_max_batch_size(max(int(max_batch_size), MAX_IMAGES_PER_REQUEST))
        self.render_batch.set_batch_wait_timeout_s(float(wait_s))

    def _sync(self) -> tuple[asyncio.Lock, asyncio.Event]:
        if self._lock is None:
            self._lock, self._ready = asyncio.Lock(), asyncio.Event()
        return self._lock, self._ready  # type: ignore[return-value]

    # ---- model management
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """user_config: {"model": URI or version, "max_batch_size"?: int, "batch_wait_timeout_s"?: float}."""
        if not isinstance(user_config, dict) or not isinstance(user_config.get("model"), str) or not user_config["model"]:
            raise ValueError('GeneratorDeployment user_config needs {"model": "<model dir URI or registry version>"}')
        unknown = set(user_config) - {"model", "max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown GeneratorDeployment user_config keys: {sorted(unknown)}")
        if "max_batch_size" in user_config or "batch_wait_timeout_s" in user_config:
            self._set_batching(
                int(user_config.get("max_batch_size", self.forward_batch)),
                float(user_config.get("batch_wait_timeout_s", self.render_batch.get_batch_wait_timeout_s())),
            )
        ref = user_config["model"]
        self.user_ref = ref
        uri, label = await asyncio.to_thread(gen.resolve_model, self.storage, ref, self.root)
        cur = await self.state.from_user_config.remote(ref, uri, label)
        await self._load(cur, raise_errors=True)
        self._ensure_poller()

    async def _load(self, cur: dict[str, Any], raise_errors: bool = False) -> None:
        """Load the pointer's target (if not held yet) and swap it in."""
        lock, ready = self._sync()
        async with lock:
            key = (cur["epoch"], int(cur["generation"]))
            target = cur["target"]
            if target is None or key == self.loaded_key:
                return
            wanted = (target["uri"], target["label"])
            if self.model is not None and self.loaded_target == wanted:
                self.loaded_key = key  # the same model under a new generation number
                return
            t0 = time.time()
            try:
                model = await asyncio.to_thread(
                    gen.load_model, self.storage, target["uri"], self.root, self.device,
                    resolved=(target["uri"], target["label"]),
                )
            except Exception as e:  # noqa: BLE001 - keep serving the old model, report the failure
                self.failed = {"epoch": key[0], "generation": key[1], "error": str(e)}
                serving_metrics().model_load_failed()
                log.error("replica %s: loading model %s failed: %s", self.replica, target["uri"], e)
                if raise_errors:
                    raise
                return
            previous = self.model.version if self.model is not None else None
            self.model = model  # the swap: batches already running keep their snapshot
            serving_metrics().model_loaded(model.version, previous)
            self.loaded_key = key
            self.loaded_target = wanted
            self.failed = None
            ready.set()
            log.info("replica %s: serving model %s (%s) after %.1fs", self.replica, model.version, model.uri, time.time() - t0)
        await self._report()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _report(self) -> None:
        key = self.loaded_key
        await self.state.report.remote(self.replica, {
            "epoch": key[0] if key else None,
            "generation": key[1] if key else None,
            "model_version": self.model.version if self.model else None,
            "loading": bool(self._loading and not self._loading.done()),
            "failed": self.failed,
        })

    async def _poll_loop(self) -> None:
        while True:
            try:
                cur = await self.state.current.remote()
                if cur["target"] is None and self.user_ref is not None:  # the pointer restarted empty
                    uri, label = await asyncio.to_thread(gen.resolve_model, self.storage, self.user_ref, self.root)
                    cur = await self.state.from_user_config.remote(self.user_ref, uri, label)
                key = (cur["epoch"], int(cur["generation"]))
                failed_here = self.failed and (self.failed["epoch"], self.failed["generation"]) == key
                if key != self.loaded_key and not failed_here and (self._loading is None or self._loading.done()):
                    self._loading = asyncio.get_running_loop().create_task(self._load(cur))
                await self._report()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the poller must survive transient errors
                log.warning("replica %s: model pointer poll failed: %s", self.replica, e)
            await asyncio.sleep(self.cfg.model_poll_interval_s)

    async def check_health(self) -> None:
        self._ensure_poller()

    async def _wait_ready(self) -> gen.LoadedModel:
        _, ready = self._sync()
        self._ensure_poller()
        if self.model is None:
            await asyncio.wait_for(ready.wait(), timeout=self.cfg.reload_timeout_s)
        assert self.model is not None
        return self.model

    # ---- requests
    async def info(self) -> dict[str, Any]:
        model = await self._wait_ready()
        return {**model.describe(), "replica": self.replica, "generation": self.loaded_key[1] if self.loaded_key else None}

    async def render(self, item: dict[str, Any]) -> dict[str, Any]:
        await self._wait_ready()
        return await self.render_batch(item)

    @serve.batch(max_batch_size=MAX_IMAGES_PER_REQUEST, batch_wait_timeout_s=0.01, batch_size_fn=_images_in)
    async def render_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = self.model  # snapshot: the whole batch uses one model even if a swap lands now
        assert model is not None
        results: list[dict[str, Any] | None] = [None] * len(items)
        seeds: list[int] = []
        psis: list[float] = []
        conds: list[list[int]] = []
        owners: list[int] = []
        for i, it in enumerate(items):
            attrs = it.get("attributes")
            cond = None
            if attrs is not None:
                if not model.conditional:
                    results[i] = {"ok": False, "status": 422, "error": (
                        f"model {model.version} is unconditional: it cannot generate by attributes; "
                        "omit 'attributes' (or serve a model trained with model.conditional=true)")}
                    continue
            if model.conditional:
                from facegen_ray.models import encode_attributes

                a = attrs or {}
                try:
                    cond = encode_attributes(a.get("age"), a.get("gender"), a.get("race"), model.cfg)[0].tolist()
                except UserError as e:
                    results[i] = {"ok": False, "status": 422, "error": str(e)}
                    continue
            for s in it["seeds"]:
                seeds.append(int(s))
                psis.append(float(it["truncation"]))
                conds.append(cond if cond is not None else [-1, -1, -1])
                owners.append(i)
        if seeds:
            import torch

            c = torch.tensor(conds, dtype=torch.long) if model.conditional else None  # [N,3]
            try:
                t_batch = time.perf_counter()
                images = await asyncio.to_thread(
                    gen.generate, model.G, seeds, psis, c, model.device, self.forward_batch
                )  # uint8 [N,H,W,3]
                serving_metrics().batch(model.version, len(seeds), len(set(owners)), time.perf_counter() - t_batch)
            except Exception as e:  # noqa: BLE001 - report per request, keep the replica alive
                log.exception("replica %s: generation failed", self.replica)
                images, err = None, f"generation failed: {e}"
            pos = 0
            for i in range(len(items)):
                if results[i] is not None:
                    continue
                k = len(items[i]["seeds"])
                if images is None:
                    results[i] = {"ok": False, "status": 500, "error": err}
                else:
                    results[i] = {
                        "ok": True,
                        "model": model.describe(),
                        "images": images[pos : pos + k],
                        "conditions": [conds[pos + j] for j in range(k)] if model.conditional else None,
                    }
                pos += k
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- ingress
api = FastAPI(title="facegen", docs_url=None, redoc_url=None, openapi_url=None)
api.add_middleware(RequestMetricsMiddleware)  # facegen_serve_requests / _request_seconds / _feedback


def _page_html() -> str:
    return resources.files("facegen_ray.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def _token_digest(token: str | None) -> str | None:
    return hashlib.sha256(token.encode("utf-8")).hexdigest() if token else None


def admin_digest(configured_sha256: str | None) -> str | None:
    """The admin token digest: from the app arguments, else this process's FACEGEN_ADMIN_TOKEN."""
    return configured_sha256 or _token_digest(os.environ.get(TOKEN_ENV))


def check_admin(authorization: str | None, digest: str | None) -> None:
    """Raise 403 when admin routes are disabled (no token configured) or the token is wrong,
    401 when the request carries no bearer token."""
    if not digest:
        raise HTTPException(403, f"admin routes are disabled: set {TOKEN_ENV} (or serve.admin_token) where the app runs")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(_token_digest(token.strip()) or "", digest):
        raise HTTPException(403, "invalid admin token")


def _validation_detail(e: ValidationError) -> list[dict[str, Any]]:
    return json.loads(e.json(include_url=False))


@serve.deployment(name=INGRESS_NAME)
@serve.ingress(api)
class FacegenIngress:
    """HTTP front door: validation, size limits, encoding, the feedback store, admin routes."""

    def __init__(self, generator, state, root: str, storage: dict, serve_cfg: dict, admin_token_sha256: str | None) -> None:
        self.generator = generator
        self.state = state
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.root = root
        self.storage = Storage(StorageConfig.model_validate(storage))
        self.store = FeedbackStore(self.storage, root)
        # the token itself never travels in deployment arguments: its digest, or this process's env
        self.admin_digest = admin_digest(admin_token_sha256)
        self.page = _page_html()

    # ---- helpers
    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        limit = self.cfg.max_request_bytes
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                declared = int(cl)
            except ValueError:
                raise HTTPException(400, "invalid Content-Length header") from None
            if declared > limit:
                raise HTTPException(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise HTTPException(413, f"request body exceeds the {limit}-byte limit")
        try:
            return model.model_validate_json(bytes(buf))
        except ValidationError as e:
            raise HTTPException(422, _validation_detail(e)) from None

    def _admin(self, request: Request) -> None:
        check_admin(request.headers.get("authorization"), self.admin_digest)

    async def _render(self, seed: int | None, k: int, truncation: float | None, attributes: dict | None, fmt: str):
        """Render k images and record each; -> (model describe dict, [(image_id, seed, bytes)])."""
        if seed is None:
            seed = secrets.randbelow(gen.MAX_SEED - MAX_IMAGES_PER_REQUEST)
        psi = gen.quantize_psi(self.cfg.default_truncation if truncation is None else truncation)
        item = {"seeds": list(range(seed, seed + k)), "truncation": psi, "attributes": attributes}
        res = await self.generator.render.remote(item)
        if not res["ok"]:
            raise HTTPException(res["status"], res["error"])
        model = res["model"]
        out = await asyncio.to_thread(self._record, model, item, res["images"], res["conditions"], fmt)
        return model, out

    def _record(self, model: dict, item: dict, images, conditions, fmt: str) -> list[tuple[str, int, bytes]]:
        out = []
        for j, seed in enumerate(item["seeds"]):
            cond = conditions[j] if conditions else None
            iid = gen.image_id(model["model_version"], model["weights_sha256"], seed, item["truncation"], cond)
            png = gen.encode_image(images[j], "png")
            meta = {
                "seed": seed, "truncation": item["truncation"], "attributes": item["attributes"], "condition": cond,
                "model_version": model["model_version"], "model_uri": model["model_uri"],
                "weights_sha256": model["weights_sha256"], "resolution": int(images[j].shape[0]),
            }
            stored = self.store.record_image(iid, png, meta)
            if fmt == "png":
                data = stored
            else:
                arr = images[j] if stored == png else gen.decode_png(stored)
                data = gen.encode_image(arr, "jpeg", self.cfg.image_format_quality)
            out.append((iid, seed, data))
        return out

    # ---- routes
    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.generator.info.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 - any failure means not healthy
            return JSONResponse({"status": "unavailable", "model_version": None, "error": str(e)}, status_code=503)
        return JSONResponse({"status": "ok", "model_version": info["model_version"], "model_uri": info["model_uri"],
                             "conditional": info["conditional"], "resolution": info["resolution"]})

    @api.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                       "script-src 'self' 'unsafe-inline'; connect-src 'self'",
            "Cache-Control": "no-store",
        })

    @api.post("/generate")
    async def generate_json(self, request: Request) -> JSONResponse:
        req: GenerateRequest = await self._body(request, GenerateRequest)
        attrs = req.attributes.model_dump() if req.attributes is not None else None
        model, out = await self._render(req.seed, req.num_images, req.truncation, attrs, req.format)
        return JSONResponse({
            "model_version": model["model_version"],
            "truncation": gen.quantize_psi(self.cfg.default_truncation if req.truncation is None else req.truncation),
            "format": req.format,
            "images": [{"image_id": iid, "seed": s, "data": base64.b64encode(b).decode("ascii")} for iid, s, b in out],
        })

    @api.get("/generate")
    async def generate_bytes(self, request: Request) -> Response:
        try:
            q = GenerateQuery.model_validate(dict(request.query_params))
        except ValidationError as e:
            raise HTTPException(422, _validation_detail(e)) from None
        attrs = q.attributes()
        model, out = await self._render(q.seed, 1, q.truncation, attrs.model_dump() if attrs else None, q.format)
        iid, seed, data = out[0]
        return Response(content=data, media_type=gen.CONTENT_TYPES[q.format], headers={
            "X-Image-Id": iid, "X-Seed": str(seed), "X-Model-Version": model["model_version"],
        })

    @api.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        req: FeedbackRequest = await self._body(request, FeedbackRequest)
        key = request.headers.get("idempotency-key")
        request.state.feedback_approved = req.approved  # for the feedback outcome metric
        try:
            res = await asyncio.to_thread(
                self.store.add_feedback, req.image_id, req.approved, req.rating, req.comment, key
            )
        except UnknownImage:
            raise HTTPException(404, f"unknown image_id {req.image_id}: only images generated here can get feedback") from None
        except ValueError as e:  # malformed Idempotency-Key
            raise HTTPException(422, str(e)) from None
        return JSONResponse({"feedback_id": res.feedback_id, "created": res.created}, status_code=201 if res.created else 200)

    async def _reload(self, ref: str) -> dict[str, Any]:
        try:
            uri, label = await asyncio.to_thread(gen.resolve_model, self.storage, ref, self.root)
            # test-load here so a broken model is refused before any replica swaps
            model = await asyncio.to_thread(gen.load_model, self.storage, ref, self.root, "cpu", resolved=(uri, label))
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        cur = await self.state.set_target.remote(ref, uri, label)
        key = (cur["epoch"], cur["generation"])
        max_age = max(5.0, 5 * self.cfg.model_poll_interval_s)
        deadline = time.time() + self.cfg.reload_timeout_s
        while True:
            reps = await self.state.replicas.remote(max_age)
            failed = [r for r in reps if r.get("failed") and (r["failed"]["epoch"], r["failed"]["generation"]) == key]
            if failed:
                raise HTTPException(500, f"replica {failed[0]['replica']} could not load {uri}: {failed[0]['failed']['error']}")
            done = [r for r in reps if (r.get("epoch"), r.get("generation")) == key]
            if len(done) == len(reps):  # none live (scaled to zero): new replicas load the target
                return {"model_version": model.version, "model_uri": uri, "generation": key[1], "replicas": len(done)}
            if time.time() > deadline:
                raise HTTPException(504, f"{len(done)}/{len(reps)} replicas switched to {model.version} within "
                                         f"{self.cfg.reload_timeout_s:.0f}s; the rest will follow when they can")
            await asyncio.sleep(0.2)

    @api.post("/admin/reload")
    async def admin_reload(self, request: Request) -> JSONResponse:
        self._admin(request)
        req: ReloadRequest = await self._body(request, ReloadRequest)
        return JSONResponse(await self._reload(req.model))

    @api.post("/admin/promote")
    async def admin_promote(self, request: Request) -> JSONResponse:
        self._admin(request)
        req: PromoteRequest = await self._body(request, PromoteRequest)
        from facegen_ray.serve.registry import Registry, RegistryError

        try:
            await asyncio.to_thread(Registry(self.storage, self.root).promote, req.version)
        except RegistryError as e:
            raise HTTPException(404 if "unknown" in str(e) else 422, str(e)) from None
        out = await self._reload(req.version)
        return JSONResponse({**out, "promoted": req.version})


# --------------------------------------------------------------------------- builders
def app_config(args: dict[str, Any]) -> tuple[FacegenConfig, str]:
    """App builder args -> (config, initial model ref).

    args: model (URI or version; default serve.model, else "serving"), root, config (YAML path),
    set (list of "a.b=c"), endpoint_url, and any ServeConfig field (e.g. max_replicas: 2)."""
    args = dict(args or {})
    overrides: list[str] = []
    if args.get("root"):
        overrides.append(f"storage.root={json.dumps(str(args['root']))}")
    if args.get("endpoint_url"):
        overrides.append(f"storage.endpoint_url={json.dumps(str(args['endpoint_url']))}")
    serve_fields = set(ServeConfig.model_fields)
    unknown = set(args) - serve_fields - {"model", "root", "config", "set", "endpoint_url"}
    if unknown:
        raise UserError(f"unknown facegen app arguments: {sorted(unknown)} (ServeConfig fields, model, root, config, set)")
    for k in sorted(serve_fields & set(args)):
        if k != "model":
            overrides.append(f"serve.{k}={json.dumps(args[k])}")
    overrides += list(args.get("set") or [])
    cfg = load_config(args.get("config"), overrides)
    model = args.get("model") or cfg.serve.model or "serving"
    return cfg, str(model)


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (deployments/serve.yaml: import_path facegen_ray.serve.app:build_app)."""
    cfg, model = app_config(args or {})
    sc = cfg.serve
    serve_cfg = sc.model_dump(mode="json", exclude={"admin_token"})
    storage = cfg.storage.model_dump(mode="json")
    root = cfg.storage.root
    autoscaling: dict[str, Any] = {
        "min_replicas": sc.min_replicas,
        "max_replicas": sc.max_replicas,
        "target_ongoing_requests": sc.target_ongoing_requests,
        "upscale_delay_s": sc.upscale_delay_s,
        "downscale_delay_s": sc.downscale_delay_s,
    }
    if sc.initial_replicas is not None:
        autoscaling["initial_replicas"] = sc.initial_replicas
    state = ModelState.bind()
    generator = GeneratorDeployment.options(
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus},
        max_ongoing_requests=max(sc.max_ongoing_requests, sc.max_batch_size),
        user_config={"model": model},
    ).bind(state, root, storage, serve_cfg)
    return FacegenIngress.options(
        num_replicas=sc.ingress_replicas,
        ray_actor_options={"num_cpus": sc.ingress_num_cpus},
        max_ongoing_requests=sc.ingress_max_ongoing_requests,
    ).bind(generator, state, root, storage, serve_cfg, _token_digest(sc.admin_token))


def serve_config_dict(args: dict[str, Any], host: str = "0.0.0.0", port: int = 8000) -> dict[str, Any]:
    """A Serve config (ServeDeploySchema) for `serve run`/`serve deploy` with this app; the model
    is set as a user_config override so that editing it is a lightweight update (no restart)."""
    cfg, model = app_config(args)
    sc = cfg.serve
    autoscaling: dict[str, Any] = {
        "min_replicas": sc.min_replicas, "max_replicas": sc.max_replicas,
        "target_ongoing_requests": sc.target_ongoing_requests,
        "upscale_delay_s": sc.upscale_delay_s, "downscale_delay_s": sc.downscale_delay_s,
    }
    if sc.initial_replicas is not None:
        autoscaling["initial_replicas"] = sc.initial_replicas
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": "facegen_ray.serve.app:build_app",
            "args": dict(args),
            "deployments": [
                {"name": GENERATOR_NAME, "user_config": {"model": model}, "autoscaling_config": autoscaling,
                 "ray_actor_options": {"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus}},
                {"name": INGRESS_NAME, "num_replicas": sc.ingress_replicas},
            ],
        }],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m facegen_ray.serve.app --root URI --model REF [--set serve.k=v] > serve.yaml`:
    write a Serve config for this app (what deployments/serve.yaml was generated with)."""
    import argparse

    import yaml

    p = argparse.ArgumentParser(prog="python -m facegen_ray.serve.app", description=main.__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--model", default="serving")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--arg", action="append", default=[], metavar="FIELD=VALUE",
                   help="a ServeConfig field as an app argument, e.g. --arg num_gpus=1 (YAML value)")
    a = p.parse_args(argv)
    args: dict[str, Any] = {"model": a.model, "root": a.root}
    for item in a.arg:
        k, _, v = item.partition("=")
        args[k.strip()] = yaml.safe_load(v)
    doc = serve_config_dict(args, host=a.host, port=a.port)
    print("# generated by: python -m facegen_ray.serve.app " + " ".join(argv if argv is not None else __import__("sys").argv[1:]))
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
