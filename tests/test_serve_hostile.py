"""Hostile input against the Serve ingress, in process (no Ray cluster): bodies that are not
UTF-8, JSON with NaN/Infinity, lone surrogates, deep nesting; schema fuzzing (schemathesis) of
every route of the app's OpenAPI schema; property tests (hypothesis) of the body parser, the
request schemas and the feedback-store record reader.

The app under test is the ingress's real FastAPI app (`facegen_ray.serve.ingress.api`) with a
real FacegenIngress instance behind it (real feedback store on a tmp root, real tiny model);
only the generator deployment handle is replaced by an in-process stand-in that renders with
that model, and the Serve replica context is pointed at the instance. The same cases against
the live Serve app (over HTTP, through Serve's proxy) are in tests/test_serve.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from conftest import start_session, tiny_model_dict
from fastapi import HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from serve_fuzz import openapi_schema, send_and_validate

from facegen_ray.config import ModelConfig
from facegen_ray.data.feedback import FeedbackStore, UnknownImage, iter_feedback, iter_images, summarize_feedback
from facegen_ray.models import Generator, save_model_dir
from facegen_ray.serve import generation as gen
from facegen_ray.serve.http_input import json_safe, parse_json_body, validation_detail
from facegen_ray.serve.ingress import Ingress, api
from facegen_ray.serve.messages import RenderRequest, RenderResult
from facegen_ray.serve.schemas import MAX_COMMENT_CHARS, CompareVoteRequest, FeedbackRequest, GenerateRequest
from facegen_ray.storage import Storage

TOKEN = "hostile-test-token-0123456789abcdef"
HOSTILE_BODIES = [
    pytest.param(b"\x00\xff\xfe\xfd", id="not-utf8"),
    pytest.param(b'{"seed": 1, "comment": "\xc3\x28"}', id="invalid-utf8-inside-json"),
    pytest.param(b'{"truncation": NaN}', id="nan"),
    pytest.param(b'{"truncation": Infinity}', id="infinity"),
    pytest.param(b'{"truncation": -Infinity}', id="minus-infinity"),
    pytest.param(b'{"seed": Infinity}', id="infinity-int-field"),
    pytest.param(b'{"truncation": 1e999}', id="float-overflow"),
    pytest.param(b'{"comment": "\\ud800"}', id="lone-surrogate"),
    pytest.param(b"[" * 3000 + b"]" * 3000, id="deep-nesting"),
    pytest.param(b'{"seed": ' + b"9" * 5000 + b"}", id="huge-integer"),
    pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
]


class _Method:
    """`handle.method.remote(...)` of a Serve handle, run in process."""

    def __init__(self, fn) -> None:
        self.remote = fn


class InProcessGenerator:
    """Stands in for the GeneratorDeployment handle: renders with the real (unconditional) tiny
    model in this process and answers what GeneratorDeployment.render answers."""

    def __init__(self, model: gen.LoadedModel) -> None:
        self.model = model
        self.render = _Method(self._render)
        self.render_many = _Method(self._render_many)  # the ingress's micro-batched calls (serve/hop.py)
        self.info = _Method(self._info)

    async def _render_many(self, reqs: list[RenderRequest]) -> list[RenderResult]:
        return [await self._render(r) for r in reqs]

    async def _render(self, req: RenderRequest) -> RenderResult:
        if req.attributes is not None:
            return RenderResult.failure(422, f"model {self.model.version} is unconditional")
        images = gen.generate(self.model.G, req.seeds, req.truncation)
        return RenderResult.success(self.model.describe(), images)

    async def _info(self) -> dict:
        return {**self.model.describe(), "replica": "in-process", "generation": 1}


def _ingress_instance(generator, root: str, token_digest: str | None):
    """A real ingress (the class FacegenIngress deploys), without Serve."""
    unlimited = {k: {"per_minute": 1e6, "burst": 10_000} for k in ("generate", "feedback", "pairs", "vote", "session")}
    cfg = {"max_request_bytes": 16_384, "default_truncation": 0.7, "rate_limits": unlimited}
    return Ingress(generator, None, root, {}, cfg, token_digest)


@pytest.fixture(scope="module")
def ingress(tmp_path_factory):
    """The ingress app bound to a real FacegenIngress instance; yields {"root", "store", ...}."""
    import hashlib

    from ray import serve

    root = str(tmp_path_factory.mktemp("hostile-root"))
    cfg = ModelConfig(**tiny_model_dict(16))
    torch.manual_seed(0)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    save_model_dir(Storage(), f"{root}/exports/m", G, cfg, {"version": "h1"})
    model = gen.load_model(Storage(), f"{root}/exports/m", root)
    inst = _ingress_instance(InProcessGenerator(model), root, hashlib.sha256(TOKEN.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as mp:
        # Serve's class-based routes take `self` from the replica context
        mp.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=inst))
        yield {"root": root, "store": FeedbackStore(Storage(), root), "instance": inst}


@pytest.fixture
def client(ingress):
    from starlette.testclient import TestClient

    with TestClient(api, raise_server_exceptions=False) as c:
        start_session(c)
        yield c


def _stored(root: str) -> dict[str, bytes]:
    """Every object of the feedback store, by path (to prove a request changed nothing)."""
    base = Path(root) / "feedback"
    return {str(p): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()} if base.exists() else {}


def _assert_readable_4xx(r: httpx.Response, code: int = 422) -> None:
    assert r.status_code == code, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = json.loads(r.content.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in a response"))
    assert body["detail"], body
    json.dumps(body, allow_nan=False)


# ----------------------------------------------------------------------------- hostile bodies
def test_in_process_app_serves_the_happy_path(client, ingress):
    """The harness itself: a real image and a real feedback record go through the same app."""
    r = client.post("/generate", json={"seed": 3, "num_images": 2, "truncation": 0.5})
    assert r.status_code == 200, r.text
    ids = [im["image_id"] for im in r.json()["images"]]
    assert r.json()["model_version"] == "h1" and len(set(ids)) == 2
    f = client.post("/feedback", json={"image_id": ids[0], "approved": True, "rating": 4})
    assert f.status_code == 201, f.text
    assert ingress["store"].get_feedback(f.json()["feedback_id"])["rating"] == 4


@pytest.mark.parametrize("route", ["/generate", "/feedback", "/compare"])
@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_get_422_and_store_nothing(client, ingress, route, body):
    client.post("/generate", json={"seed": 1})  # the store holds something to leave alone
    before = _stored(ingress["root"])
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    _assert_readable_4xx(r)
    assert _stored(ingress["root"]) == before


@pytest.mark.parametrize(
    "body",
    [
        {"image_id": "a" * 32, "approved": True, "rating": 1.5},
        {"image_id": "a" * 32, "approved": True, "comment": "x" * (MAX_COMMENT_CHARS + 1)},
        {"image_id": "A" * 32, "approved": True},
    ],
)
def test_feedback_validation_errors_are_plain_json(client, body):
    r = client.post("/feedback", json=body)
    _assert_readable_4xx(r)
    detail = r.json()["detail"]
    assert isinstance(detail, list) and all({"type", "loc", "msg"} <= set(d) for d in detail)
    assert all("input" not in d for d in detail)  # the offending input is not echoed


def test_nan_in_a_query_string_is_422(client):
    for value in ["nan", "inf", "-inf", "NaN", "1e999"]:
        _assert_readable_4xx(client.get("/generate", params={"truncation": value}))


def test_admin_routes_check_hostile_bodies_after_the_token(client):
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    assert (
        client.post(
            "/admin/reload", content=b'{"model": NaN}', headers={"content-type": "application/json"}
        ).status_code
        == 401
    )
    _assert_readable_4xx(client.post("/admin/reload", content=b'{"model": NaN}', headers=auth))
    _assert_readable_4xx(client.post("/admin/promote", content=b"\xff\xfe", headers=auth))
    _assert_readable_4xx(client.post("/admin/compare/start", content=b'{"candidate": NaN}', headers=auth))
    _assert_readable_4xx(client.post("/admin/compare/stop", content=b"\xff", headers=auth))


# ----------------------------------------------------------------------------- the parser, directly
def test_parse_json_body_rejects_what_json_does_not_allow():
    assert parse_json_body(b'{"seed": 5, "truncation": 0.25}', GenerateRequest).seed == 5
    for raw in [b'{"truncation": NaN}', b"\xff", b'{"a": "\\udc00"}', b'{"truncation": 1e400}']:
        with pytest.raises(HTTPException) as e:
            parse_json_body(raw, GenerateRequest)
        assert e.value.status_code == 422 and isinstance(e.value.detail, str)


def test_validation_detail_is_json_safe():
    with pytest.raises(ValidationError) as e:  # python-mode input: NaN, bytes, a lone surrogate
        GenerateRequest.model_validate({"truncation": float("nan"), "seed": b"\xff", "format": "\ud800"})
    detail = validation_detail(e.value)
    text = json.dumps(detail, allow_nan=False)
    text.encode("utf-8")
    assert {tuple(d["loc"]) for d in detail} >= {("truncation",), ("seed",), ("format",)}
    assert json_safe({"x": [float("inf"), b"\xff", "\udc80"]}) == {"x": ["inf", "\\xff", "\\udc80"]}


# ----------------------------------------------------------------------------- schema fuzzing
SCHEMA = openapi_schema()


def _fuzz(case) -> None:
    from starlette.testclient import TestClient

    with TestClient(api, raise_server_exceptions=False) as client:
        start_session(client)  # so feedback / vote bodies get past the rater check
        send_and_validate(client, case, "http://testserver")


@SCHEMA.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_in_process(case, ingress):
    """Every route and method of the app's OpenAPI schema, in process (the FastAPI app object
    over ASGI: the live app would spend most of the budget in Serve's proxy on 2 cores); a
    bounded number of examples per operation. No 5xx, every answer as the schema documents.
    Admin routes are fuzzed without the token (so they answer 401/403 before reading a body)."""
    _fuzz(case)


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_in_process_long(case, ingress):
    """As test_openapi_fuzz_in_process, 25x the examples."""
    _fuzz(case)


# ----------------------------------------------------------------------------- property tests
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text()
)
_json_like = st.recursive(
    _json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "seed",
        "num_images",
        "truncation",
        "attributes",
        "format",
        "image_id",
        "approved",
        "rating",
        "comment",
        "age",
        "pair_id",
        "choice",
    ]
)
_bodyish = st.dictionaries(_field_names, _json_like, max_size=5)


def _expect_model_or_422(raw: bytes, model) -> None:
    try:
        parsed = parse_json_body(raw, model)
    except HTTPException as e:
        assert e.status_code == 422
        json.dumps({"detail": e.detail}, allow_nan=False).encode("utf-8")
    else:
        assert isinstance(parsed, model)
        # what passes is plain, storable data
        json.dumps(parsed.model_dump(mode="json"), allow_nan=False, ensure_ascii=False).encode("utf-8")


@given(raw=st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_bytes_parse_or_422(raw):
    for model in (GenerateRequest, FeedbackRequest, CompareVoteRequest):
        _expect_model_or_422(raw, model)


@given(body=_bodyish)
@settings(max_examples=300, deadline=None)
def test_json_with_nan_surrogates_and_wrong_types_parse_or_422(body):
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    for model in (GenerateRequest, FeedbackRequest, CompareVoteRequest):
        _expect_model_or_422(raw, model)
    has_nonfinite = "NaN" in raw.decode("utf-8", "replace") or "Infinity" in raw.decode("utf-8", "replace")
    if has_nonfinite:
        with pytest.raises(HTTPException):
            parse_json_body(raw, GenerateRequest)


@given(
    seed=st.integers(0, gen.MAX_SEED - 16),
    k=st.integers(1, 16),
    psi=st.floats(0, 1),
    fmt=st.sampled_from(["png", "jpeg"]),
)
@settings(max_examples=100, deadline=None)
def test_valid_generate_bodies_round_trip(seed, k, psi, fmt):
    req = parse_json_body(
        json.dumps({"seed": seed, "num_images": k, "truncation": psi, "format": fmt}).encode(), GenerateRequest
    )
    assert (req.seed, req.num_images, req.truncation, req.format) == (seed, k, psi, fmt)


@given(comment=st.text(max_size=MAX_COMMENT_CHARS), rating=st.none() | st.integers(1, 5), approved=st.booleans())
@settings(max_examples=100, deadline=None)
def test_valid_feedback_bodies_round_trip(comment, rating, approved):
    raw = json.dumps(
        {"image_id": "0" * 32, "approved": approved, "rating": rating, "comment": comment}, ensure_ascii=False
    ).encode("utf-8", "surrogatepass")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in comment):  # not UTF-8 text: refused, never stored
        with pytest.raises(HTTPException):
            parse_json_body(raw, FeedbackRequest)
        return
    req = parse_json_body(raw, FeedbackRequest)
    assert (req.approved, req.rating, req.comment) == (approved, rating, comment)


# ----------------------------------------------------------------------------- stored records read back
def _good_store(root: str) -> tuple[FeedbackStore, str, str]:
    store = FeedbackStore(Storage(), root)
    iid = gen.image_id("v1", "d", 1, 0.7, None)
    store.record_image(iid, gen.encode_image(np.zeros((4, 4, 3), np.uint8)), {"seed": 1, "model_version": "v1"})
    fid = store.add_feedback(iid, True, 5, "good", client_key="k1").feedback_id
    return store, iid, fid


_garbage = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda d, n: d[:n], st.just(b'{"format": 1, "feedback_id": "'), st.integers(0, 30)),  # truncated
    _json_like.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),
)


@given(garbage=_garbage, which=st.sampled_from(["records", "images"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_record_files_are_skipped_never_crash_a_read(tmp_path_factory, garbage, which):
    root = str(tmp_path_factory.mktemp("garbage"))
    store, iid, fid = _good_store(root)
    bad_id = "f" * 32
    folder = Path(store.records_dir if which == "records" else store.images_dir) / bad_id[:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{bad_id}.json").write_bytes(garbage)
    feedback = list(iter_feedback(Storage(), root))
    images = list(iter_images(Storage(), root))
    assert fid in {r["feedback_id"] for r in feedback}  # the good record survives
    assert iid in {r["image_id"] for r in images}
    summary = summarize_feedback(Storage(), root)
    assert summary[iid]["approvals"] == 1
    for rec in feedback:
        assert isinstance(rec["approved"], bool) and (rec["rating"] is None or 1 <= rec["rating"] <= 5)
    if which == "images":
        rec = store.get_image_record(bad_id)
        assert rec is None or rec["image_id"] == bad_id


def test_truncated_image_record_reads_as_unknown_image(tmp_path):
    root = str(tmp_path / "root")
    store, iid, _ = _good_store(root)
    Path(store.image_record_uri(iid)).write_bytes(b'{"format": 1, "image_id": "')
    assert store.get_image_record(iid) is None
    assert list(iter_images(Storage(), root)) == []
    with pytest.raises(UnknownImage):  # new feedback on it is refused (404), not a crash (500)
        store.add_feedback(iid, False, client_key="k2")
