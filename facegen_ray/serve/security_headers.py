"""Response headers and request-body rules every route of the front door shares.

- SecurityHeadersMiddleware (plain ASGI): every response gets nosniff, X-Frame-Options DENY,
  Referrer-Policy no-referrer and a Content-Security-Policy: the pages' (own scripts and styles
  from /static, data: images, no inline code, frame-ancestors 'none') when the route set one,
  else `default-src 'none'; frame-ancestors 'none'` (JSON and images need nothing).
- read_json_body: JSON routes take `Content-Type: application/json` only (415 otherwise: a
  cross-site HTML form can only send form or text types), within max_request_bytes (413) and
  within body_timeout_s from the first byte wait to the last (408: a client trickling its body
  holds a slot of the ingress replica for that long at most).
- public_error: what a 5xx says to a caller who is not an admin (no storage URIs, no exception
  text; the full text goes to the replica log under an error id).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from fastapi import HTTPException, Request

log = logging.getLogger("ray.serve")

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response (a route's own CSP is kept)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _HEADERS if k not in have]
                if b"content-security-policy" not in have:
                    headers.append((b"content-security-policy", API_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def require_json(request: Request) -> None:
    """415 unless the request says its body is JSON (application/json, any parameters)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the body as JSON with Content-Type: application/json")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body: 400 for a bad Content-Length, 413 over `limit` bytes (declared or
    sent), 408 when it has not all arrived within `timeout_s`."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            declared = int(cl)
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
        if declared > limit:
            raise HTTPException(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise HTTPException(413, f"request body exceeds the {limit}-byte limit")
    except TimeoutError:
        raise HTTPException(408, f"request body not received within {timeout_s:g}s") from None
    return bytes(buf)


def public_error(status: int, detail: Any, path: str) -> tuple[int, Any]:
    """(status, detail) as a non-admin caller sees it: a 5xx detail is replaced by a generic
    text and an error id (the original is logged with that id); 4xx details stay (they describe
    the caller's own request)."""
    if status < 500 or path.startswith("/admin/"):
        return status, detail
    eid = secrets.token_hex(6)
    log.warning("error %s on %s (%d): %s", eid, path, status, detail)
    return status, f"the server could not answer this request (error id {eid}; the operator's log has the details)"


__all__ = ["API_CSP", "PAGE_CSP", "SecurityHeadersMiddleware", "public_error", "read_body", "require_json"]
