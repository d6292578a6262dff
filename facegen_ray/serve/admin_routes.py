"""The admin routes of the front door (a mixin of serve/ingress.py's Ingress; registered on the
same FastAPI app): model reload and promotion, and starting / stopping / listing pairwise
comparisons. Every route checks `Authorization: Bearer <token>` first (serve/http_input.py).

Reload names a registry version (or serving / latest), or a model URI under storage.root;
other URIs (file:// elsewhere, http://, another bucket) are refused with 422 unless
serve.reload_outside_root is set, so the admin token cannot be used to make the app fetch
arbitrary addresses.
"""

import asyncio
import time
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from facegen_ray.data import comparison as cmpstore
from facegen_ray.errors import UserError
from facegen_ray.registry import Registry, RegistryError
from facegen_ray.serve import generation as gen
from facegen_ray.serve.http_input import check_admin
from facegen_ray.serve.openapi_doc import _errors, _json_body, api
from facegen_ray.serve.schemas import (
    CompareStartRequest,
    CompareStatusResponse,
    CompareStopRequest,
    ComparisonInfo,
    PromoteRequest,
    ReloadRequest,
    ReloadResponse,
)
from facegen_ray.storage import normalize


def under_root(uri: str, root: str) -> bool:
    """Whether a model URI lies below the storage root (no `..` segments, same scheme)."""
    u, r = normalize(uri), normalize(root).rstrip("/")
    return ".." not in u.split("/") and u.startswith(r + "/")


class AdminRoutes:
    """Admin routes; the Ingress supplies storage, root, cfg, compare, state, admin_digest, _body."""

    def _admin(self, request: Request) -> None:
        check_admin(request.headers.get("authorization"), self.admin_digest)

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
            if not label and not self.cfg.reload_outside_root and not under_root(uri, self.root):
                raise UserError(
                    f"{ref} is neither a registry version nor under the storage root: register it first "
                    "(`facegen promote`), or set serve.reload_outside_root"
                )
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
