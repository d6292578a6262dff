"""The FastAPI app of the front door and its OpenAPI document: the `api` object every route
module registers on (serve/ingress.py, serve/session_routes.py, serve/admin_routes.py), its
middleware (request metrics, security headers), the 5xx text non-admins see, and the hand-written
request-body and parameter declarations (routes read their bodies themselves).
"""

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from facegen_ray.data.feedback import CLIENT_KEY_RE
from facegen_ray.observability.asgi import RequestMetricsMiddleware
from facegen_ray.serve.schemas import (
    CompareStartRequest,
    CompareStopRequest,
    CompareVoteRequest,
    ErrorResponse,
    FeedbackRequest,
    GenerateRequest,
    PromoteRequest,
    ReloadRequest,
)
from facegen_ray.serve.security_headers import SecurityHeadersMiddleware, public_error

# The OpenAPI schema is not served (openapi_url=None); `api.openapi()` builds it for the
# schema-fuzzing tests. Routes read their bodies themselves (size limit, strict JSON), so the
# request bodies and query parameters are declared here by hand from the pydantic models.
api = FastAPI(title="facegen", docs_url=None, redoc_url=None, openapi_url=None)
api.add_middleware(RequestMetricsMiddleware)  # facegen_serve_requests / _request_seconds / _feedback
api.add_middleware(SecurityHeadersMiddleware)  # outermost: every response, errors included

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
    401: "no bearer token (admin) / no rater session (GET /session first)",
    403: "admin routes disabled or wrong token / the pair was served to another rater",
    404: "unknown image, pair, model or version",
    409: "not now: no comparison running / one running already / the pair's comparison stopped or it has a vote",
    410: "the pair expired",
    408: "request body not received in time (serve.body_timeout_s)",
    413: "request body too large",
    415: "body not sent as Content-Type: application/json",
    422: "malformed request (not UTF-8 JSON, or fails the schema)",
    429: "rate limited (per client address and per rater): retry after Retry-After seconds",
    500: "a replica could not load the model",
    503: "rater sessions unavailable for a moment (the app's guard not answering): retry after Retry-After",
    504: "replicas did not all switch in time",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": CLIENT_KEY_RE.pattern},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


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


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    """HTTP errors as FastAPI writes them, with a 5xx detail made public_error's."""
    status, detail = public_error(exc.status_code, exc.detail, request.url.path)
    if detail is not exc.detail:
        exc = HTTPException(status, detail, headers=exc.headers)
    return await http_exception_handler(request, exc)
