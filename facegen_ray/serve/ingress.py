"""The HTTP front door (FastAPI under @serve.ingress): validation, size limits, encoding, the
feedback store, the feedback page, the pairwise comparison page and the admin routes.

    HTTP ──► FacegenIngress   /generate /feedback / /healthz /admin/reload /admin/promote
                              /compare (page + votes) /compare/pairs /admin/compare[/start|/stop]
               │  handle.render.remote(RenderRequest)  (serve/replica.py: GeneratorDeployment;
               │  handle.render_version.remote(...)     serve/messages.py; a /compare pair: a version)
               │  state.set_target / replicas          (serve/model_state.py: ModelState)

Admin routes need `Authorization: Bearer <token>` (ServeConfig.admin_token or
FACEGEN_ADMIN_TOKEN); only the token's sha256 travels in deployment arguments. Without a
configured token the admin routes answer 403.

Over 400 lines: the routes of the one class that @serve.ingress wraps, each with its OpenAPI
declaration; request parsing and the admin token check live in serve/http_input.py.
"""

import asyncio
import base64
import logging
import secrets
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from ray import serve

from facegen_ray.config import ServeConfig, StorageConfig
from facegen_ray.data import comparison as cmpstore
from facegen_ray.data.feedback import CLIENT_KEY_RE, FeedbackStore, UnknownImage
from facegen_ray.errors import UserError
from facegen_ray.models.latent import MAX_EDIT_STRENGTH, Control
from facegen_ray.observability.asgi import RequestMetricsMiddleware
from facegen_ray.registry import Registry, RegistryError
from facegen_ray.serve import generation as gen
from facegen_ray.serve.http_input import admin_digest, check_admin, parse_json_body, validation_detail
from facegen_ray.serve.messages import ModelRef, RenderRequest
from facegen_ray.serve.schemas import (
    MAX_IMAGES_PER_REQUEST,
    ComparePairResponse,
    CompareStartRequest,
    CompareStatusResponse,
    CompareStopRequest,
    CompareVoteRequest,
    CompareVoteResponse,
    ComparisonInfo,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    GenerateQuery,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    PromoteRequest,
    ReloadRequest,
    ReloadResponse,
)
from facegen_ray.storage import Storage

log = logging.getLogger("ray.serve")

INGRESS_NAME = "FacegenIngress"


# The OpenAPI schema is not served (openapi_url=None); `api.openapi()` builds it for the
# schema-fuzzing tests. Routes read their bodies themselves (size limit, strict JSON), so the
# request bodies and query parameters are declared here by hand from the pydantic models.
api = FastAPI(title="facegen", docs_url=None, redoc_url=None, openapi_url=None)
api.add_middleware(RequestMetricsMiddleware)  # facegen_serve_requests / _request_seconds / _feedback

_REQUEST_MODELS = (
    GenerateRequest,
    FeedbackRequest,
    ReloadRequest,
    PromoteRequest,
    CompareVoteRequest,
    CompareStartRequest,
    CompareStopRequest,
)
_REASONS = {
    400: "bad request header",
    401: "no bearer token",
    403: "admin routes disabled or wrong token",
    404: "unknown image, pair, model or version",
    409: "not now: no comparison running / one running already / the pair's comparison stopped or it has a vote",
    410: "the pair expired",
    413: "request body too large",
    422: "malformed request (not UTF-8 JSON, or fails the schema)",
    500: "a replica could not load the model",
    504: "replicas did not all switch in time",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": CLIENT_KEY_RE.pattern},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def server_timing(call_s: float, record_s: float, replica: dict[str, float] | None) -> str:
    """The Server-Timing header of a generated response (ms; browsers' dev tools show it, and
    benchmarks/serve_load.py splits latency with it): `hop` (the handle call to the generator
    replica and back, Ray's part), `queue` (in the replica before its batch ran: the batch wait
    and earlier batches), `forward` (the batch's generator pass), `record` (PNG encoding with
    provenance and the durable image record). Without the replica's split: `generator` + `record`."""
    parts: list[tuple[str, float]]
    if replica and "replica_s" in replica:
        fwd = float(replica.get("forward_s", 0.0))
        parts = [
            ("hop", call_s - float(replica["replica_s"])),
            ("queue", float(replica["replica_s"]) - fwd),
            ("forward", fwd),
        ]
    else:
        parts = [("generator", call_s)]
    parts.append(("record", record_s))
    return ", ".join(f"{name};dur={max(0.0, v) * 1000:.2f}" for name, v in parts)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": _REASONS[c]} for c in codes}


def _json_body(model: type[BaseModel], **extra: Any) -> dict[str, Any]:
    """openapi_extra of a route that reads a `model` JSON body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        },
        **extra,
    }


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Optional query parameters from a model's fields (null is never sent in a query string)."""
    out = []
    for name, schema in model.model_json_schema()["properties"].items():
        schema = dict(schema)
        options = [o for o in schema.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            schema.update(options[0])
        schema.pop("default", None)
        out.append({"name": name, "in": "query", "required": False, "schema": schema})
    return out


def _openapi() -> dict[str, Any]:
    if api.openapi_schema is None:
        doc = get_openapi(title=api.title, version=api.version, routes=api.routes)
        _, defs = models_json_schema(
            [(m, "validation") for m in _REQUEST_MODELS], ref_template="#/components/schemas/{model}"
        )
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        api.openapi_schema = doc
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


def _page_html(name: str = "index.html") -> str:
    return resources.files("facegen_ray.serve").joinpath(f"static/{name}").read_text(encoding="utf-8")


PAGE_HEADERS = {  # the pages' CSP: own scripts and data: images only, nothing from elsewhere
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; connect-src 'self'",
    "Cache-Control": "no-store",
}


class Ingress:
    """HTTP front door: validation, size limits, encoding, the feedback store, admin routes.

    The plain class (its routes are registered on `api`); the Serve deployment is
    FacegenIngress below. Tests drive `api` in process with an instance of this class."""

    def __init__(
        self, generator, state, root: str, storage: dict, serve_cfg: dict, admin_token_sha256: str | None
    ) -> None:
        self.generator = generator
        self.state = state
        self.cfg = ServeConfig.model_validate(serve_cfg)
        self.root = root
        self.storage = Storage(StorageConfig.model_validate(storage))
        self.store = FeedbackStore(self.storage, root)
        self.compare = cmpstore.ComparisonStore(self.storage, root)
        # the token itself never travels in deployment arguments: its digest, or this process's env
        self.admin_digest = admin_digest(admin_token_sha256)
        self.page = _page_html()
        self.compare_page_html = _page_html("compare.html")

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
        return parse_json_body(bytes(buf), model)

    def _admin(self, request: Request) -> None:
        check_admin(request.headers.get("authorization"), self.admin_digest)

    async def _render(
        self,
        seed: int | None,
        k: int,
        truncation: float | None,
        attributes: dict | None,
        fmt: str,
        controls: dict[str, Any] | None = None,
    ):
        """Render k images and record each; -> (model describe dict, [(image_id, seed, bytes)]).
        controls: {"mix", "interpolate", "edit"} of the request (values None when absent)."""
        if seed is None:
            seed = secrets.randbelow(gen.MAX_SEED - MAX_IMAGES_PER_REQUEST)
        psi = gen.quantize_psi(self.cfg.default_truncation if truncation is None else truncation)
        item = {"seeds": list(range(seed, seed + k)), "truncation": psi, "attributes": attributes}
        try:
            ctl = Control.from_item(controls or {})
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        if ctl is not None:
            item["control"] = ctl.describe()  # quantised: what the image id, the record and the replica use
            item.update(item["control"])
        req = RenderRequest(item["seeds"], psi, attributes, item.get("control"))
        t0 = time.perf_counter()
        res = await self.generator.render.remote(req)
        t1 = time.perf_counter()
        if not res.ok:
            raise HTTPException(res.status, res.error)
        model = res.model
        out = await asyncio.to_thread(self._record, model, item, res.images, res.conditions, fmt)
        timing = {"replica_s": res.timing.replica_s, "forward_s": res.timing.forward_s} if res.timing else None
        return model, out, server_timing(t1 - t0, time.perf_counter() - t1, timing)

    def _record(self, model: dict, item: dict, images, conditions, fmt: str) -> list[tuple[str, int, bytes]]:
        out = []
        for j, seed in enumerate(item["seeds"]):
            cond = conditions[j] if conditions else None
            control = item.get("control")
            iid = gen.image_id(model["model_version"], model["weights_sha256"], seed, item["truncation"], cond, control)
            png = gen.encode_image(images[j], "png", provenance=gen.image_provenance(model, item, seed, iid))
            meta = {
                "seed": seed,
                "truncation": item["truncation"],
                "attributes": item["attributes"],
                "condition": cond,
                "model_version": model["model_version"],
                "model_uri": model["model_uri"],
                "weights_sha256": model["weights_sha256"],
                "resolution": int(images[j].shape[0]),
            }
            if control:  # mix / interpolate / edit parameters: feedback on this face refers to them
                meta["control"] = control
            stored = self.store.record_image(iid, png, meta)
            if fmt == "png":
                data = stored
            else:
                arr = images[j] if stored == png else gen.decode_png(stored)
                data = gen.encode_image(
                    arr, "jpeg", self.cfg.image_format_quality, provenance=gen.image_provenance(model, item, seed, iid)
                )
            out.append((iid, seed, data))
        return out

    # ---- routes
    @api.get(
        "/healthz",
        responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse, "description": "no model loaded"}},
    )
    async def healthz(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.generator.info.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 - any failure means not healthy
            return JSONResponse({"status": "unavailable", "model_version": None, "error": str(e)}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "model_version": info["model_version"],
                "model_uri": info["model_uri"],
                "conditional": info["conditional"],
                "resolution": info["resolution"],
                "num_ws": info.get("num_ws"),
                "style_mixing": info.get("style_mixing"),
                "directions": info.get("directions"),
                "max_edit_strength": MAX_EDIT_STRENGTH,
            }
        )

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page, headers=PAGE_HEADERS)

    @api.post(
        "/generate",
        responses={200: {"model": GenerateResponse}, **_errors(400, 413, 422)},
        openapi_extra=_json_body(GenerateRequest),
    )
    async def generate_json(self, request: Request) -> JSONResponse:
        req: GenerateRequest = await self._body(request, GenerateRequest)
        attrs = req.attributes.model_dump() if req.attributes is not None else None
        model, out, timing = await self._render(
            req.seed, req.num_images, req.truncation, attrs, req.format, req.controls()
        )
        return JSONResponse(
            headers={"Server-Timing": timing},
            content={
                "model_version": model["model_version"],
                "truncation": gen.quantize_psi(
                    self.cfg.default_truncation if req.truncation is None else req.truncation
                ),
                "format": req.format,
                "provenance": gen.response_provenance(
                    model, req.truncation if req.truncation is not None else self.cfg.default_truncation
                ),
                "images": [
                    {"image_id": iid, "seed": s, "data": base64.b64encode(b).decode("ascii")} for iid, s, b in out
                ],
            },
        )

    @api.get(
        "/generate",
        response_class=Response,
        responses={
            200: {"description": "the image", "content": {"image/png": _BINARY, "image/jpeg": _BINARY}},
            **_errors(422),
        },
        openapi_extra={"parameters": _query_params(GenerateQuery)},
    )
    async def generate_bytes(self, request: Request) -> Response:
        try:
            q = GenerateQuery.model_validate(dict(request.query_params))
        except ValidationError as e:
            raise HTTPException(422, validation_detail(e)) from None
        attrs = q.attributes()
        model, out, timing = await self._render(
            q.seed, 1, q.truncation, attrs.model_dump() if attrs else None, q.format
        )
        iid, seed, data = out[0]
        return Response(
            content=data,
            media_type=gen.CONTENT_TYPES[q.format],
            headers={
                "X-Image-Id": iid,
                "X-Seed": str(seed),
                "X-Model-Version": model["model_version"],
                "X-Synthetic": "true",
                "Server-Timing": timing,
            },
        )

    @api.post(
        "/feedback",
        status_code=201,
        openapi_extra=_json_body(FeedbackRequest, parameters=[_IDEMPOTENCY_KEY]),
        responses={
            200: {"model": FeedbackResponse, "description": "the same feedback was already stored"},
            201: {"model": FeedbackResponse},
            **_errors(400, 404, 413, 422),
        },
    )
    async def feedback(self, request: Request) -> JSONResponse:
        req: FeedbackRequest = await self._body(request, FeedbackRequest)
        key = request.headers.get("idempotency-key")
        request.state.feedback_approved = req.approved  # for the feedback outcome metric
        try:
            res = await asyncio.to_thread(
                self.store.add_feedback, req.image_id, req.approved, req.rating, req.comment, key
            )
        except UnknownImage:
            raise HTTPException(
                404, f"unknown image_id {req.image_id}: only images generated here can get feedback"
            ) from None
        except ValueError as e:  # malformed Idempotency-Key
            raise HTTPException(422, str(e)) from None
        return JSONResponse(
            {"feedback_id": res.feedback_id, "created": res.created}, status_code=201 if res.created else 200
        )

    # ---- pairwise comparison (data/comparison.py: the store, the tally the gate reads)
    @api.get("/compare", response_class=HTMLResponse)
    async def compare_page(self) -> HTMLResponse:
        return HTMLResponse(self.compare_page_html, headers=PAGE_HEADERS)

    @api.post("/compare/pairs", status_code=201, responses={201: {"model": ComparePairResponse}, **_errors(409, 500)})
    async def compare_pair(self) -> JSONResponse:
        """Two faces of the running comparison, one per version, sides and seeds drawn at random;
        the pair is recorded (which side is which) before it is answered."""
        cmp = await asyncio.to_thread(self.compare.active)
        if cmp is None:
            raise HTTPException(409, "no comparison is running: an admin starts one (POST /admin/compare/start)")
        psi = gen.quantize_psi(self.cfg.default_truncation)
        cand_side = cmpstore.SIDES[secrets.randbelow(2)]
        plan = {side: cmp["candidate" if side == cand_side else "baseline"] for side in cmpstore.SIDES}
        seeds = {side: secrets.randbelow(gen.MAX_SEED + 1) for side in cmpstore.SIDES}
        answers = await asyncio.gather(
            *(
                self.generator.render_version.remote(
                    RenderRequest((seeds[side],), psi, model=ModelRef(plan[side]["uri"], plan[side]["version"]))
                )
                for side in cmpstore.SIDES
            )
        )
        for res in answers:
            if not res.ok:
                raise HTTPException(res.status, res.error)
        rendered = dict(zip(cmpstore.SIDES, answers))

        def record() -> tuple[dict[str, Any], dict[str, bytes]]:
            sides = {}
            for side, res in rendered.items():
                m = res.model
                cond = res.conditions[0] if res.conditions else None
                sides[side] = {
                    "version": m["model_version"],
                    "seed": seeds[side],
                    "weights_sha256": m["weights_sha256"],
                    "image_id": gen.image_id(m["model_version"], m["weights_sha256"], seeds[side], psi, cond),
                    "condition": cond,
                }
            pair = self.compare.record_pair(cmp, cand_side, sides, psi, self.cfg.compare_pair_ttl_s)
            from facegen_ray.provenance import provenance_record

            pngs = {
                side: gen.encode_image(
                    res.images[0],
                    "png",
                    provenance=provenance_record(
                        cmpstore.BLIND_LABEL, cmpstore.blind_image_id(pair["pair_id"], side), None, psi
                    ),
                )
                for side, res in rendered.items()
            }
            return pair, pngs

        pair, pngs = await asyncio.to_thread(record)
        return JSONResponse(
            {
                "pair_id": pair["pair_id"],
                "expires": pair["expires"],
                **{side: {"data": base64.b64encode(pngs[side]).decode("ascii")} for side in cmpstore.SIDES},
            },
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    @api.post(
        "/compare",
        status_code=201,
        openapi_extra=_json_body(CompareVoteRequest, parameters=[_IDEMPOTENCY_KEY]),
        responses={
            200: {"model": CompareVoteResponse, "description": "this vote was already stored"},
            201: {"model": CompareVoteResponse},
            **_errors(400, 404, 409, 410, 413, 422),
        },
    )
    async def compare_vote(self, request: Request) -> JSONResponse:
        req: CompareVoteRequest = await self._body(request, CompareVoteRequest)
        key = request.headers.get("idempotency-key")
        try:
            res = await asyncio.to_thread(self.compare.vote, req.pair_id, req.choice, key)
        except cmpstore.CompareError as e:
            raise HTTPException(e.status, str(e)) from None
        except ValueError as e:  # malformed Idempotency-Key
            raise HTTPException(422, str(e)) from None
        return JSONResponse(
            {"vote_id": res.vote_id, "pair_id": req.pair_id, "choice": res.record["choice"], "created": res.created},
            status_code=201 if res.created else 200,
        )

    def _version(self, reg, version: str) -> dict[str, Any]:
        """A registered version as a comparison side, test-loaded (a broken model is refused now,
        not on every pair): {"version", "uri", "weights_sha256"}."""
        try:
            entry = reg.get(reg.check_version(version))
            model = gen.load_model(self.storage, version, self.root, "cpu", resolved=(entry["uri"], version))
        except RegistryError as e:
            raise HTTPException(404 if "unknown" in str(e) else 422, str(e)) from None
        except UserError as e:
            raise HTTPException(422, f"version {version} cannot be loaded: {e}") from None
        return {"version": version, "uri": entry["uri"], "weights_sha256": model.digest}

    @api.post(
        "/admin/compare/start",
        status_code=201,
        responses={201: {"model": ComparisonInfo}, **_errors(400, 401, 403, 404, 409, 413, 422)},
        openapi_extra=_json_body(CompareStartRequest, security=[{"bearer": []}]),
    )
    async def admin_compare_start(self, request: Request) -> JSONResponse:
        self._admin(request)
        req: CompareStartRequest = await self._body(request, CompareStartRequest)

        def start() -> dict[str, Any]:
            reg = Registry(self.storage, self.root)
            baseline = req.baseline or reg.serving()
            if not baseline:
                raise HTTPException(422, 'no model is serving: name the baseline version ({"baseline": ...})')
            if baseline == req.candidate:
                raise HTTPException(422, f"baseline and candidate are both {baseline}: compare two different versions")
            sides = self._version(reg, baseline), self._version(reg, req.candidate)
            try:
                return cmpstore.comparison_info(self.compare.start(*sides), {})
            except cmpstore.CompareError as e:
                raise HTTPException(e.status, str(e)) from None

        return JSONResponse(await asyncio.to_thread(start), status_code=201)

    @api.post(
        "/admin/compare/stop",
        responses={200: {"model": ComparisonInfo}, **_errors(400, 401, 403, 409, 413, 422)},
        openapi_extra=_json_body(CompareStopRequest, security=[{"bearer": []}]),
    )
    async def admin_compare_stop(self, request: Request) -> JSONResponse:
        self._admin(request)
        req: CompareStopRequest = await self._body(request, CompareStopRequest)

        def stop() -> dict[str, Any]:
            try:
                cmp = self.compare.stop(req.comparison_id)
            except cmpstore.CompareError as e:
                raise HTTPException(e.status, str(e)) from None
            return cmpstore.comparison_info(cmp, self.compare.counts())

        return JSONResponse(await asyncio.to_thread(stop))

    @api.get(
        "/admin/compare",
        responses={200: {"model": CompareStatusResponse}, **_errors(401, 403)},
        openapi_extra={"security": [{"bearer": []}]},
    )
    async def admin_compare_status(self, request: Request) -> JSONResponse:
        self._admin(request)

        def status() -> dict[str, Any]:
            counts = self.compare.counts()
            active = self.compare.active()
            return {
                "active": cmpstore.comparison_info(active, counts) if active else None,
                "comparisons": [cmpstore.comparison_info(c, counts) for c in self.compare.comparisons()],
            }

        return JSONResponse(await asyncio.to_thread(status))

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
                raise HTTPException(
                    500, f"replica {failed[0]['replica']} could not load {uri}: {failed[0]['failed']['error']}"
                )
            done = [r for r in reps if (r.get("epoch"), r.get("generation")) == key]
            if len(done) == len(reps):  # none live (scaled to zero): new replicas load the target
                return {"model_version": model.version, "model_uri": uri, "generation": key[1], "replicas": len(done)}
            if time.time() > deadline:
                raise HTTPException(
                    504,
                    f"{len(done)}/{len(reps)} replicas switched to {model.version} within "
                    f"{self.cfg.reload_timeout_s:.0f}s; the rest will follow when they can",
                )
            await asyncio.sleep(0.2)

    @api.post(
        "/admin/reload",
        responses={200: {"model": ReloadResponse}, **_errors(400, 401, 403, 413, 422, 500, 504)},
        openapi_extra=_json_body(ReloadRequest, security=[{"bearer": []}]),
    )
    async def admin_reload(self, request: Request) -> JSONResponse:
        self._admin(request)
        req: ReloadRequest = await self._body(request, ReloadRequest)
        return JSONResponse(await self._reload(req.model))

    @api.post(
        "/admin/promote",
        responses={200: {"model": ReloadResponse}, **_errors(400, 401, 403, 404, 413, 422, 500, 504)},
        openapi_extra=_json_body(PromoteRequest, security=[{"bearer": []}]),
    )
    async def admin_promote(self, request: Request) -> JSONResponse:
        self._admin(request)
        req: PromoteRequest = await self._body(request, PromoteRequest)

        try:
            await asyncio.to_thread(Registry(self.storage, self.root).promote, req.version)
        except RegistryError as e:
            raise HTTPException(404 if "unknown" in str(e) else 422, str(e)) from None
        out = await self._reload(req.version)
        return JSONResponse({**out, "promoted": req.version})


# the deployment (Serve keeps its own copy of the class; `Ingress` stays the module's)
FacegenIngress = serve.deployment(name=INGRESS_NAME)(serve.ingress(api)(Ingress))
