"""The HTTP front door (FastAPI under @serve.ingress): validation, size limits, encoding, the
feedback store, the feedback page and the admin routes.

    HTTP ──► FacegenIngress   /generate /feedback / /healthz /admin/reload /admin/promote
               │  handle.render.remote(request item)   (serve/replica.py: GeneratorDeployment)
               │  state.set_target / replicas          (serve/model_state.py: ModelState)

Admin routes need `Authorization: Bearer <token>` (ServeConfig.admin_token or
FACEGEN_ADMIN_TOKEN); only the token's sha256 travels in deployment arguments. Without a
configured token the admin routes answer 403.
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
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve

from facegen_ray.config import ServeConfig, StorageConfig
from facegen_ray.errors import UserError
from facegen_ray.observability.asgi import RequestMetricsMiddleware
from facegen_ray.serve import generation as gen
from facegen_ray.serve.admin_client import TOKEN_ENV
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

INGRESS_NAME = "FacegenIngress"


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

