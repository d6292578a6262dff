"""Request input and admin authentication for the HTTP front door (serve/ingress.py), kept apart
from the routes: every body is parsed here, strictly, before any model or store sees it
(UTF-8 only, finite numbers, no lone surrogates, then pydantic), error details are made
plain JSON, and the admin bearer token is checked against its sha256 (constant time).
No Ray and no FastAPI app here: the parsers are tested directly (tests/test_serve_hostile.py).
"""

import hashlib
import hmac
import json
import math
import os
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from facegen_ray.serve.admin_client import TOKEN_ENV


def _token_digest(token: str | None) -> str | None:
    return hashlib.sha256(token.encode("utf-8")).hexdigest() if token else None


def admin_digest(configured_sha256: str | None) -> str | None:
    """The admin token digest: from the app arguments, else this process's FACEGEN_ADMIN_TOKEN."""
    return configured_sha256 or _token_digest(os.environ.get(TOKEN_ENV))


def check_admin(authorization: str | None, digest: str | None) -> None:
    """Raise 403 when admin routes are disabled (no token configured) or the token is wrong,
    401 when the request carries no bearer token."""
    if not digest:
        raise HTTPException(
            403, f"admin routes are disabled: set {TOKEN_ENV} (or serve.admin_token) where the app runs"
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "missing bearer token (Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(_token_digest(token.strip()) or "", digest):
        raise HTTPException(403, "invalid admin token")


# ---- hostile input
def json_safe(value: Any) -> Any:
    """value as plain JSON that any encoder accepts: non-finite floats, bytes, lone surrogates
    and other objects become text (error details must never fail to serialise)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    return json_safe(str(value))


def validation_detail(e: ValidationError) -> list[dict[str, Any]]:
    """A 422 detail for a ValidationError: type, loc, msg (and ctx), JSON-safe; the offending
    input is never echoed (it may be bytes, NaN, or just large)."""
    out = []
    for err in e.errors(include_url=False, include_input=False):
        item = {"type": err["type"], "loc": list(err["loc"]), "msg": err["msg"]}
        if err.get("ctx"):
            item["ctx"] = err["ctx"]
        out.append(json_safe(item))
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed: JSON numbers must be finite (no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range (JSON numbers must be finite)")
    return value


def _check_strings(obj: Any) -> None:
    """ValueError when a string or key holds a lone UTF-16 surrogate (a \\ud800 escape): such
    text cannot be stored or echoed as UTF-8."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)") from None


def parse_json_body(raw: bytes, model: type[BaseModel]) -> Any:
    """Request body bytes -> a validated `model`, or HTTPException 422 whose detail is plain JSON.

    Stricter than JSON parsers usually are: the bytes must be UTF-8, NaN/Infinity/-Infinity and
    numbers that overflow a float are refused, and so are lone surrogate escapes. Only a body
    that passes all that reaches pydantic (in JSON mode, so field rules are unchanged)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPException(
            422, f"request body is not valid UTF-8 (byte {e.start}): send a JSON object encoded as UTF-8"
        ) from None
    try:
        _check_strings(json.loads(text, parse_constant=_no_constants, parse_float=_finite_float))
    except RecursionError:
        raise HTTPException(422, "request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError included; its message says where
        raise HTTPException(422, f"request body is not valid JSON: {json_safe(str(e))}") from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise HTTPException(422, validation_detail(e)) from None
