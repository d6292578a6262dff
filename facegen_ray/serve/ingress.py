"""The HTTP front door (FastAPI under @serve.ingress): validation, size limits, encoding, the
feedback store, the feedback page, the pairwise comparison page and the admin routes.

    HTTP ──► FacegenIngress   /generate /feedback / /healthz /admin/reload /admin/promote
                              /compare (page + votes) /compare/pairs /admin/compare[/start|/stop]
               │  handle.render[_many].remote(...)     (serve/replica.py: GeneratorDeployment;
               │    micro-batched by serve/hop.py       serve/messages.py)
               │  handle.render_version.remote(...)     (a /compare pair: a given version)
               │  state.set_target / replicas          (serve/model_state.py: ModelState)

Feedback, pairs and votes need a rater (a session cookie or the proxy's header) and every
costly route is rate limited: serve/session_routes.py. Admin routes: serve/admin_routes.py;
the FastAPI app, its middleware and OpenAPI declarations: serve/openapi_doc.py; request
parsing and the admin token check: serve/http_input.py.
"""

import asyncio
import base64
import logging
import secrets
import time
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve

from facegen_ray.config import ServeConfig, StorageConfig
from facegen_ray.data import comparison as cmpstore
from facegen_ray.data.feedback import FeedbackStore, UnknownImage
from facegen_ray.errors import UserError
from facegen_ray.models.latent import MAX_EDIT_STRENGTH, Control
from facegen_ray.serve import generation as gen
from facegen_ray.serve.admin_routes import AdminRoutes
from facegen_ray.serve.hop import CallBatcher
from facegen_ray.serve.http_input import admin_digest, parse_json_body, validation_detail
from facegen_ray.serve.messages import ModelRef, RenderRequest, server_timing
from facegen_ray.serve.openapi_doc import _BINARY, _IDEMPOTENCY_KEY, _errors, _json_body, _query_params, api
from facegen_ray.serve.ratelimit import LocalGuard
from facegen_ray.serve.schemas import (
    MAX_IMAGES_PER_REQUEST,
    ComparePairResponse,
    CompareVoteRequest,
    CompareVoteResponse,
    FeedbackRequest,
    FeedbackResponse,
    GenerateQuery,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
)
from facegen_ray.serve.security_headers import read_body, require_json
from facegen_ray.serve.session_routes import SessionRoutes
from facegen_ray.storage import Storage

log = logging.getLogger("ray.serve")

INGRESS_NAME = "FacegenIngress"


class Ingress(SessionRoutes, AdminRoutes):
    """HTTP front door: validation, size limits, encoding, the feedback store; raters, rate
    limits and pages (SessionRoutes), admin routes (AdminRoutes).

    The plain class (its routes are registered on `api`); the Serve deployment is
    FacegenIngress below. Tests drive `api` in process with an instance of this class."""

    def __init__(
        self,
        generator,
        state,
        root: str,
        storage: dict,
        serve_cfg: dict,
        admin_token_sha256: str | None,
        guard=None,
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
        # rate limits + session secret: the app's guard actor (shared by every replica), else
        # in this process (tests driving the app in process)
        self.guard = guard if guard is not None else LocalGuard(serve_cfg)
        self._init_sessions()
        self.hop: CallBatcher | None = None  # serve/hop.py: micro-batched render calls (created on first use)

    # ---- helpers
    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        require_json(request)
        return parse_json_body(await read_body(request, self.cfg.max_request_bytes, self.cfg.body_timeout_s), model)

    async def _render(
        self,
        seed: int | None,
        k: int,
        truncation: float | None,
        attributes: dict | None,
        fmt: str,
        controls: dict[str, Any] | None = None,
        limit_s: float = 0.0,
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
        res, slot_s = await self._call_render(req)
        t1 = time.perf_counter()
        if not res.ok:
            raise HTTPException(res.status, res.error)
        model = res.model
        out = await asyncio.to_thread(self._record, model, item, res.images, res.conditions, fmt)
        timing = {"replica_s": res.timing.replica_s, "forward_s": res.timing.forward_s} if res.timing else None
        return model, out, server_timing(t1 - t0, time.perf_counter() - t1, timing, slot_s, limit_s)

    async def _call_render(self, req: RenderRequest) -> tuple[Any, float]:
        """(RenderResult, seconds waited for a call slot): through the micro-batching hop, or one
        call per request with serve.ingress_micro_batch off."""
        if not self.cfg.ingress_micro_batch:
            return await self.generator.render.remote(req), 0.0
        if self.hop is None:
            self.hop = CallBatcher(
                self.generator.render.remote,
                self.generator.render_many.remote,
                max_in_flight=self.cfg.calls_in_flight(),
                max_items=self.cfg.max_batch_size,
                size_of=lambda r: r.images,
            )
        return await self.hop.submit_timed(req)

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
    async def healthz(self, request: Request) -> JSONResponse:
        """Model facts; its storage URI and a failure's text only for an admin (bearer token)."""
        try:
            admin = request.headers.get("authorization") is not None and self._admin(request) is None
        except HTTPException:
            admin = False
        try:
            info = await asyncio.wait_for(self.generator.info.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 - any failure means not healthy
            log.warning("healthz: generator unavailable: %s", e)
            err = str(e) if admin else "no generator replica answered"
            return JSONResponse({"status": "unavailable", "model_version": None, "error": err}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "model_version": info["model_version"],
                "model_uri": info["model_uri"] if admin else None,
                "conditional": info["conditional"],
                "resolution": info["resolution"],
                "num_ws": info.get("num_ws"),
                "style_mixing": info.get("style_mixing"),
                "directions": info.get("directions"),
                "max_edit_strength": MAX_EDIT_STRENGTH,
            }
        )

    @api.post(
        "/generate",
        responses={200: {"model": GenerateResponse}, **_errors(400, 408, 413, 415, 422, 429, 503)},
        openapi_extra=_json_body(GenerateRequest),
    )
    async def generate_json(self, request: Request) -> JSONResponse:
        req: GenerateRequest = await self._body(request, GenerateRequest)
        limit_s = await self._limit(request, "generate", await self._rater(request), cost=req.num_images)
        attrs = req.attributes.model_dump() if req.attributes is not None else None
        model, out, timing = await self._render(
            req.seed, req.num_images, req.truncation, attrs, req.format, req.controls(), limit_s
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
            **_errors(422, 429, 503),
        },
        openapi_extra={"parameters": _query_params(GenerateQuery)},
    )
    async def generate_bytes(self, request: Request) -> Response:
        try:
            q = GenerateQuery.model_validate(dict(request.query_params))
        except ValidationError as e:
            raise HTTPException(422, validation_detail(e)) from None
        limit_s = await self._limit(request, "generate", await self._rater(request))
        attrs = q.attributes()
        model, out, timing = await self._render(
            q.seed, 1, q.truncation, attrs.model_dump() if attrs else None, q.format, None, limit_s
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
            **_errors(400, 401, 404, 408, 413, 415, 422, 429, 503),
        },
    )
    async def feedback(self, request: Request) -> JSONResponse:
        rater = await self._rater(request, required=True)
        await self._limit(request, "feedback", rater)
        req: FeedbackRequest = await self._body(request, FeedbackRequest)
        key = request.headers.get("idempotency-key")
        request.state.feedback_approved, src = req.approved, await self._source(request, rater)
        try:
            fb = (req.image_id, req.approved, req.rating, req.comment, key, rater.rater_id, rater.since, src)
            res = await asyncio.to_thread(self.store.add_feedback, *fb)
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
    @api.post(
        "/compare/pairs",
        status_code=201,
        responses={201: {"model": ComparePairResponse}, **_errors(401, 409, 415, 429, 500, 503)},
    )
    async def compare_pair(self, request: Request) -> JSONResponse:
        """Two faces of the running comparison, one per version, sides and seeds drawn at random;
        the pair is recorded (which side is which, and the rater it was served to) before it is
        answered. JSON Content-Type required (body unread): no cross-site form spends renders."""
        require_json(request)
        rater = await self._rater(request, required=True)
        await self._limit(request, "pairs", rater)
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
            pair = self.compare.record_pair(cmp, cand_side, sides, psi, self.cfg.compare_pair_ttl_s, rater.rater_id)
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
            **_errors(400, 401, 403, 404, 408, 409, 410, 413, 415, 422, 429, 503),
        },
    )
    async def compare_vote(self, request: Request) -> JSONResponse:
        rater = await self._rater(request, required=True)
        await self._limit(request, "vote", rater)
        req: CompareVoteRequest = await self._body(request, CompareVoteRequest)
        key = request.headers.get("idempotency-key")
        try:
            src = await self._source(request, rater)
            res = await asyncio.to_thread(self.compare.vote, req.pair_id, req.choice, key, rater.rater_id, src)
        except cmpstore.CompareError as e:
            raise HTTPException(e.status, str(e)) from None
        except ValueError as e:  # malformed Idempotency-Key
            raise HTTPException(422, str(e)) from None
        return JSONResponse(
            {"vote_id": res.vote_id, "pair_id": req.pair_id, "choice": res.record["choice"], "created": res.created},
            status_code=201 if res.created else 200,
        )


# the deployment (Serve keeps its own copy of the class; `Ingress` stays the module's)
FacegenIngress = serve.deployment(name=INGRESS_NAME)(serve.ingress(api)(Ingress))
