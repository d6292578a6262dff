"""Raters, rate limits and the pages (a mixin of serve/ingress.py's Ingress, registered on the
same FastAPI app).

    GET /session              the caller's rater session (a new signed cookie when it has none)
    GET /  and  GET /compare  the pages; a first visit gets a session cookie with the page
    GET /static/<file>        the pages' scripts and styles (no inline code: CSP without 'unsafe-inline')

`_rater(request, required=True)` is what every route that records an opinion calls (401 without
an identity: serve/identity.py says where it comes from), `_limit(request, route, rater)` what
every costly route calls (429 with Retry-After; buckets per client address and per rater in the
app's guard actor, serve/ratelimit.py). New sessions per client address are a bucket too
("session"), so sessions are not free: a page load without a token left is served without a
cookie.

An ingress replica keeps at most GUARD_CALLS_IN_FLIGHT calls to the guard outstanding: a lone
request's take goes at once, alone; takes that arrive while those calls are out go together in
the next call (take_many, serve/hop.py's CallBatcher), so under load a request waits for one
guard round trip, not behind every other request's.

No request waits long on the guard: a call to it that has not answered within
serve.guard_timeout_s (its replica restarting, its host lost) is given up, and this replica's
own buckets answer for the next GUARD_RETRY_S seconds (limits still hold, per replica instead of
shared). The session secret has no such stand-in (a replica's own secret would sign cookies the
others reject): without FACEGEN_SESSION_SECRET, a replica that has not yet fetched it from the
guard answers 503 with Retry-After until the guard answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from facegen_ray.serve.hop import CallBatcher
from facegen_ray.serve.identity import (
    SESSION_COOKIE,
    Rater,
    SessionSigner,
    client_address,
    cookie_header,
    header_rater,
    secret_from_env,
)
from facegen_ray.serve.openapi_doc import _errors, api
from facegen_ray.serve.ratelimit import TokenBuckets, retry_after
from facegen_ray.serve.schemas import SessionResponse
from facegen_ray.serve.security_headers import PAGE_CSP

ASSETS = {  # /static/<name> -> content type (the only files served from static/)
    "index.js": "text/javascript; charset=utf-8",
    "index.css": "text/css; charset=utf-8",
    "compare.js": "text/javascript; charset=utf-8",
    "compare.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"}


log = logging.getLogger(__name__)

GUARD_RETRY_S = 10.0  # after a guard call failed or timed out, this replica's own buckets answer this long
GUARD_CALLS_IN_FLIGHT = 2  # per ingress replica
GUARD_MAX_TAKES = 512  # takes in one take_many call


def _static(name: str) -> str:
    return resources.files("facegen_ray.serve").joinpath(f"static/{name}").read_text(encoding="utf-8")


class SessionRoutes:
    """Rater identity, rate limits, pages; the Ingress supplies cfg and guard."""

    # class defaults, so a subclass that skips _init_sessions (benchmarks/poisoning.py) has them too
    _own_buckets: TokenBuckets | None = None  # stand-in while the guard does not answer
    _guard_down_until = 0.0  # time.monotonic() until which the guard is not asked
    _takes: CallBatcher | None = None  # the guard's take calls, micro-batched (created on first use)
    _guard_actor: Any = None  # the handle of the guard's GuardActor (serve/ratelimit.py)

    def _init_sessions(self) -> None:
        self.pages = {"index": _static("index.html"), "compare": _static("compare.html")}
        self.assets = {name: _static(name) for name in ASSETS}
        env = secret_from_env()  # UserError (replica start fails) when set but too short
        self._signer = SessionSigner(env, self.cfg.session_ttl_s) if env else None

    async def _guard_call(self, method: str, *args: Any) -> Any:
        """<the guard's actor>.<method>(*args), given up after serve.guard_timeout_s (TimeoutError).
        The actor's handle comes from the guard deployment once; a failed call drops it."""
        timeout = self.cfg.guard_timeout_s
        if self._guard_actor is None:
            self._guard_actor = await asyncio.wait_for(self.guard.actor_handle.remote(), timeout)
        actor = self._guard_actor
        try:
            return await asyncio.wait_for(getattr(actor, method).remote(*args), timeout)
        except Exception:
            if self._guard_actor is actor:  # the guard restarted or is gone: ask for its handle again
                self._guard_actor = None
            raise

    async def _take(self, route: str, keys: list[str], cost: float = 1.0) -> float:
        """Seconds until `route` has `cost` tokens for every key (0: taken): the guard's shared
        buckets, or this replica's own while the guard does not answer (module docstring)."""
        if time.monotonic() >= self._guard_down_until:
            if self._takes is None:
                self._takes = CallBatcher(
                    lambda take: self._guard_call("take", *take),
                    lambda takes: self._guard_call("take_many", takes),
                    max_in_flight=GUARD_CALLS_IN_FLIGHT,
                    max_items=GUARD_MAX_TAKES,
                )
            try:
                # bounded twice: here (queued for a call slot included) and per call (frees the slot)
                return await asyncio.wait_for(self._takes.submit((route, keys, cost)), self.cfg.guard_timeout_s)
            except Exception as e:  # noqa: BLE001 - whatever the guard's failure, limits go on here
                self._guard_down_until = time.monotonic() + GUARD_RETRY_S
                log.warning(
                    "rate-limit guard did not answer (%s: %s): this replica's own buckets answer for %.0f s",
                    type(e).__name__,
                    e,
                    GUARD_RETRY_S,
                )
        if self._own_buckets is None:
            self._own_buckets = TokenBuckets(self.cfg.rate_limits)
        return self._own_buckets.take(route, keys, cost)

    async def _session_signer(self) -> SessionSigner:
        if self._signer is None:  # no secret in this process's env: the guard's, shared by all replicas
            try:
                secret = await self._guard_call("session_secret")
            except Exception as e:  # noqa: BLE001 - no secret of our own would do (module docstring)
                log.warning("session secret: the guard did not answer (%s: %s)", type(e).__name__, e)
                raise HTTPException(
                    503, "rater sessions are unavailable for a moment: retry shortly", headers={"Retry-After": "5"}
                ) from None
            self._signer = SessionSigner(secret, self.cfg.session_ttl_s)
        return self._signer

    def _address(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.cfg.trusted_proxies)

    async def _source(self, request: Request, rater: Rater) -> str:
        """The opinion's source (serve/source.py): the client's network, keyed; behind the
        authenticating proxy the rater itself."""
        signer = await self._session_signer()
        if self.cfg.rater_header:
            return signer.source_id(rater=rater.rater_id)
        return signer.source_id(self._address(request))

    async def _rater(self, request: Request, required: bool = False) -> Rater | None:
        """The caller's rater: the trusted proxy header when serve.rater_header is set (only
        it), else a valid session cookie; 401 when `required` and there is none."""
        if self.cfg.rater_header:
            rater = header_rater(request.headers.get(self.cfg.rater_header))
            why = f"no {self.cfg.rater_header} header from the authenticating proxy"
        else:
            rater = (await self._session_signer()).verify(request.cookies.get(SESSION_COOKIE))
            why = "no valid rater session: GET /session first (the pages do this on load) and send its cookie"
        if rater is None and required:
            raise HTTPException(401, why)
        return rater

    async def _limit(self, request: Request, route: str, rater: Rater | None, cost: int = 1) -> float:
        """Take `cost` tokens of `route` for the client address (and the rater); 429 when out.
        -> the seconds the check took (Server-Timing `limit`: the guard's round trip)."""
        keys = [f"a:{self._address(request)}"] + ([f"r:{rater.rater_id}"] if rater else [])
        t0 = time.perf_counter()
        wait = await self._take(route, keys, cost)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many {route} requests: retry in {retry_after(wait)}s",
                headers={"Retry-After": retry_after(wait)},
            )
        return time.perf_counter() - t0

    async def _new_session(self, request: Request) -> tuple[str, Rater] | None:
        """A new session (cookie value, rater), or None when this address is out of sessions."""
        if await self._take("session", [f"a:{self._address(request)}"]) > 0:
            return None
        return (await self._session_signer()).issue()

    def _set_cookie(self, response: Response, value: str) -> None:
        response.headers.append(
            "Set-Cookie", cookie_header(value, self.cfg.session_ttl_s, self.cfg.session_cookie_secure)
        )

    async def _page(self, request: Request, name: str) -> HTMLResponse:
        resp = HTMLResponse(self.pages[name], headers=PAGE_HEADERS)
        if not self.cfg.rater_header and await self._rater(request) is None:
            new = await self._new_session(request)
            if new is not None:
                self._set_cookie(resp, new[0])
        return resp

    # ---- routes
    @api.get("/session", responses={200: {"model": SessionResponse}, **_errors(401, 429, 503)})
    async def session(self, request: Request) -> JSONResponse:
        rater = await self._rater(request, required=bool(self.cfg.rater_header))
        if rater is not None:
            return JSONResponse({"rater": rater.rater_id, "since": rater.since, "new": False})
        new = await self._new_session(request)
        if new is None:
            raise HTTPException(429, "too many new sessions from this address", headers={"Retry-After": "60"})
        resp = JSONResponse({"rater": new[1].rater_id, "since": new[1].since, "new": True})
        self._set_cookie(resp, new[0])
        return resp

    @api.get("/", response_class=HTMLResponse)
    async def page(self, request: Request) -> HTMLResponse:
        return await self._page(request, "index")

    @api.get("/compare", response_class=HTMLResponse)
    async def compare_page(self, request: Request) -> HTMLResponse:
        return await self._page(request, "compare")

    @api.get("/static/{name}", response_class=Response, responses=_errors(404))
    async def static_file(self, name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        headers: dict[str, Any] = {"Cache-Control": "no-cache"}
        return Response(self.assets[name], media_type=ASSETS[name], headers=headers)
