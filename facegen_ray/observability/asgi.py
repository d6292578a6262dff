"""ASGI middleware that records each HTTP request of the Serve ingress (facegen_serve_requests,
facegen_serve_request_seconds, and facegen_serve_feedback for POST /feedback).

The route tag is the matched route's template (`/generate`, `/admin/reload`), never the raw
path, so unknown paths cannot blow up the number of series: they are counted as "other".
A handler may put `feedback_approved` (bool) in `request.state` so the feedback outcome can
tell approved from rejected; every other outcome follows from the status code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from facegen_ray.observability.metrics import serving_metrics

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
FEEDBACK_ROUTE = "/feedback"


def route_of(scope: Scope) -> str:
    """The template of the route that handled the request, else "other"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "other"


class RequestMetricsMiddleware:
    """Wraps an ASGI app: times every HTTP request and counts it by route, method and status."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_and_watch(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:  # an exception escaping the app is answered 500 by the server
            self._record(scope, status["code"], time.perf_counter() - t0)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        try:
            metrics = serving_metrics()
            route = route_of(scope)
            method = str(scope.get("method", "")).upper()
            metrics.request(route, method if method in METHODS else "other", status, seconds)
            if route == FEEDBACK_ROUTE and method == "POST":
                state = scope.get("state") or {}
                metrics.feedback(status, state.get("feedback_approved"))
        except Exception as e:  # noqa: BLE001 - never let metrics break a request
            log.warning("recording request metrics failed (ignored): %s", e)
