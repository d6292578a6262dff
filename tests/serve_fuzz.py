"""Schema fuzzing helpers shared by the in-process (test_serve_hostile.py) and live
(test_serve.py) runs: the app's OpenAPI schema for schemathesis, the checks every answer must
pass, and a sender that uses httpx."""

from __future__ import annotations

import httpx
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from facegen_ray.serve.ingress import api

# no 5xx; every status, content type and body as the schema documents; invalid input refused
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def openapi_schema():
    """The app's OpenAPI schema (built from the FastAPI app; not served over HTTP), generating
    valid and invalid requests."""
    schema = schemathesis.openapi.from_dict(api.openapi())
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


def send_and_validate(client: httpx.Client, case, base_url: str) -> httpx.Response | None:
    """Send a schemathesis case with an httpx client and run CHECKS on the answer; None when
    the client itself refuses to send it (over a socket, h11 refuses header values that HTTP
    forbids; the in-process client sends everything). (Not case.call_and_validate:
    schemathesis's requests transport breaks on the urllib3-future that this environment
    installs as `urllib3`.)"""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    kwargs.pop("cookies", None)  # the app reads no cookies; httpx has no per-request cookies
    if isinstance(kwargs.get("data"), (bytes, str)):
        kwargs["content"] = kwargs.pop("data")
    try:
        response = client.request(**kwargs)
    except httpx.LocalProtocolError:  # e.g. a header value "Bearer ": no HTTP client sends it
        return None
    case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
    return response
