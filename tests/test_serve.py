"""The Serve app over real HTTP: deployed from deployments/serve.yaml (patched to a tmp root and
tiny CPU models) on the session's Ray instance, called with httpx and headless Chromium.

Tests in this module share one app and run in file order; the model-swap test comes last but
one (it changes the serving model) and the page test last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from conftest import free_port, start_session, tiny_model_dict
from hypothesis import HealthCheck, settings
from PIL import Image
from serve_fuzz import openapi_schema, send_and_validate
from test_control import synthetic_directions

from facegen_ray.config import ModelConfig
from facegen_ray.data.feedback import FeedbackStore, approved_images, iter_feedback
from facegen_ray.models import Generator, save_model_dir
from facegen_ray.models.directions import save_directions
from facegen_ray.registry import Registry
from facegen_ray.serve.generation import decode_png, generate, load_model
from facegen_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-admin-token-123-0123456789abcdef"
MAX_BODY = 4096


def _save_tiny(storage: Storage, uri: str, conditional: bool, seed: int, version: str) -> None:
    cfg = ModelConfig(**tiny_model_dict(16, conditional=conditional))
    torch.manual_seed(seed)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    with torch.no_grad():  # a non-zero w_avg so truncation changes the image
        G.mapping.w_avg.normal_()
    save_model_dir(storage, uri, G, cfg, {"version": version})
    doc = synthetic_directions(cfg.w_dim, seed=seed)  # so the page has sliders and edits work
    doc["weights_sha256"] = hashlib.sha256(storage.read_bytes(f"{uri}/generator.pt")).hexdigest()
    save_directions(storage, uri, doc)


def _serve_config(root: str, port: int) -> dict:
    """deployments/serve.yaml with the test's root, models and CPU sizes."""
    doc = yaml.safe_load((REPO / "deployments" / "serve.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["http_options"] = {"host": "127.0.0.1", "port": port}
    app = doc["applications"][0]
    app["args"].update(
        {
            "root": root,
            "model": "v1",
            "num_gpus": 0,
            "num_cpus": 0.5,
            "min_replicas": 2,
            "max_replicas": 2,
            "admin_token": TOKEN,
            "max_request_bytes": MAX_BODY,
            "max_batch_size": 8,
            "model_poll_interval_s": 0.5,
            "ingress_num_cpus": 0.5,
            # these tests exercise the routes, not the abuse limits (test_feedback_brakes.py and
            # test_serve_hostile.py do): buckets far above what one test sends
            "rate_limits": {
                k: {"per_minute": 1_000_000, "burst": 100_000}
                for k in ("generate", "feedback", "pairs", "vote", "session")
            },
        }
    )
    for d in app["deployments"]:
        if d["name"] == "GeneratorDeployment":
            d["user_config"] = {"model": "v1"}
            d["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
            d["autoscaling_config"].update({"min_replicas": 2, "max_replicas": 2})
    return doc


def _deploy(doc: dict, timeout: float = 240.0) -> None:
    """What `serve run deployments/serve.yaml` does: submit the config to the controller."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(doc))
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = serve.status().applications.get("facegen")
        if st is not None and st.status == "RUNNING":
            return
        if st is not None and st.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy failed: {st.message}")
        time.sleep(0.5)
    raise TimeoutError("facegen app not RUNNING in time")


@contextlib.contextmanager
def served_app(root: str, *, conditional_b: bool, adjust: Callable[[dict], None] | None = None):
    """Two tiny registered models below `root` (v1 serving, v2 conditional or not), Serve on a
    free port, the app deployed from the patched deployments/serve.yaml (then `adjust`ed in
    place), healthy; deleted and Serve shut down on exit. Yields url, port, root, storage, doc."""
    from ray import serve

    storage = Storage()
    _save_tiny(storage, f"{root}/exports/a", conditional=False, seed=1, version="a")
    _save_tiny(storage, f"{root}/exports/b", conditional=conditional_b, seed=2, version="b")
    reg = Registry(storage, root)
    reg.register(f"{root}/exports/a", "v1")
    reg.register(f"{root}/exports/b", "v2")
    reg.promote("v1")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        doc = _serve_config(root, port)
        if adjust is not None:
            adjust(doc)
        _deploy(doc)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as c:
            deadline = time.time() + 60
            while time.time() < deadline and c.get("/healthz").status_code != 200:
                time.sleep(0.5)
        yield {"url": url, "port": port, "root": root, "storage": storage, "doc": doc}
    finally:
        try:
            serve.delete("facegen")
        finally:
            serve.shutdown()


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("serve-root"))
    with served_app(root, conditional_b=True) as served:
        yield {**served, "store": FeedbackStore(served["storage"], root)}


@pytest.fixture
def client(app):
    with httpx.Client(base_url=app["url"], timeout=120) as c:
        start_session(c)
        yield c


def _png(data_b64: str) -> np.ndarray:
    return decode_png(base64.b64decode(data_b64))


# ----------------------------------------------------------------------------- generate
def test_healthz_and_page(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["model_version"] == "v1"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="static/index.js"' in page.text and "approve" in page.text.lower()
    script = client.get("/static/index.js")
    assert script.status_code == 200 and '"feedback"' in script.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN


def test_generate_json_records_every_image(client, app):
    r = client.post("/generate", json={"seed": 10, "num_images": 3, "truncation": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "v1"
    assert [im["seed"] for im in body["images"]] == [10, 11, 12]
    ids = [im["image_id"] for im in body["images"]]
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    for im in body["images"]:
        arr = _png(im["data"])
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
        rec = app["store"].get_image_record(im["image_id"])
        assert rec["seed"] == im["seed"] and rec["truncation"] == 0.5 and rec["model_version"] == "v1"
        assert rec["attributes"] is None and rec["created"]
        assert app["store"].read_image(im["image_id"]) == base64.b64decode(im["data"])


def test_generate_bytes_and_determinism(client, app):
    j = client.post("/generate", json={"seed": 77, "truncation": 0.6}).json()["images"][0]
    g1 = client.get("/generate", params={"seed": 77, "truncation": 0.6})
    g2 = client.get("/generate", params={"seed": 77, "truncation": 0.6})
    assert g1.status_code == 200 and g1.headers["content-type"] == "image/png"
    assert g1.headers["x-image-id"] == j["image_id"] == g2.headers["x-image-id"]
    assert g1.content == g2.content == base64.b64decode(j["data"])
    # where the request's time went (ms), from the live replica and ingress
    timing = {e.split(";")[0].strip(): float(e.split("dur=")[1]) for e in g1.headers["server-timing"].split(",")}
    # limit: the rate-limit check (the guard's round trip); slot: waiting in the ingress for a call
    # slot (serve/hop.py micro-batching)
    parts = ["limit", "slot", "hop", "queue", "forward", "record"]
    assert list(timing) == parts and all(v >= 0 for v in timing.values())
    assert timing["forward"] > 0 and timing["record"] > 0 and timing["limit"] > 0
    # the served face is the seed's face: matches a local rendering (up to 1 level of float rounding)
    model = load_model(app["storage"], "v1", app["root"])
    local = generate(model.G, [77], 0.6)[0].astype(int)
    assert np.abs(decode_png(g1.content).astype(int) - local).max() <= 1
    # another psi or seed -> another image
    other = client.get("/generate", params={"seed": 77, "truncation": 0.9})
    assert other.headers["x-image-id"] != j["image_id"] and other.content != g1.content
    # jpeg
    jp = client.get("/generate", params={"seed": 77, "truncation": 0.6, "format": "jpeg"})
    assert jp.status_code == 200 and jp.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jp.content)).format == "JPEG"
    assert jp.headers["x-image-id"] == j["image_id"]
    # no seed -> a random one (two requests almost surely differ)
    s1 = client.post("/generate", json={}).json()["images"][0]["seed"]
    s2 = client.post("/generate", json={}).json()["images"][0]["seed"]
    assert s1 != s2


@pytest.mark.parametrize(
    "body",
    [
        {"num_images": 0},
        {"num_images": 17},
        {"truncation": 1.5},
        {"truncation": -0.1},
        {"format": "gif"},
        {"seed": -1},
        {"seed": "abc"},
        {"colour": "red"},
        {"attributes": {"age": 30, "mood": 1}},
    ],
)
def test_generate_rejects_malformed(client, body):
    r = client.post("/generate", json=body)
    assert r.status_code == 422, (body, r.text)


def test_generate_other_bad_inputs(client):
    r = client.post("/generate", json={"seed": 1, "attributes": {"age": 30}})
    assert r.status_code == 422 and "unconditional" in r.json()["detail"]
    assert (
        client.post("/generate", content=b"not json", headers={"content-type": "application/json"}).status_code == 422
    )
    assert client.get("/generate", params={"truncation": "abc"}).status_code == 422
    assert client.get("/generate", params={"sed": 3}).status_code == 422
    big = json.dumps({"seed": 1, "pad": "x" * (MAX_BODY + 10)})
    assert client.post("/generate", content=big, headers={"content-type": "application/json"}).status_code == 413


# ----------------------------------------------------------------------------- feedback
def _new_image(client) -> str:
    return client.post("/generate", json={}).json()["images"][0]["image_id"]


def test_feedback_happy_path_and_idempotency(client, app):
    iid = _new_image(client)
    r1 = client.post(
        "/feedback",
        json={"image_id": iid, "approved": True, "rating": 5, "comment": "nice"},
        headers={"Idempotency-Key": "user-1:abc"},
    )
    assert r1.status_code == 201, r1.text
    fid = r1.json()["feedback_id"]
    r2 = client.post(
        "/feedback",
        json={"image_id": iid, "approved": True, "rating": 5, "comment": "nice"},
        headers={"Idempotency-Key": "user-1:abc"},
    )
    assert r2.status_code == 200 and r2.json()["feedback_id"] == fid
    r3 = client.post("/feedback", json={"image_id": iid, "approved": False}, headers={"Idempotency-Key": "user-2"})
    assert r3.status_code == 201 and r3.json()["feedback_id"] != fid
    # no key: derived from the body -> an exact retry collapses, another opinion does not
    a = client.post("/feedback", json={"image_id": iid, "approved": True})
    b = client.post("/feedback", json={"image_id": iid, "approved": True})
    c = client.post("/feedback", json={"image_id": iid, "approved": True, "rating": 2})
    assert (a.status_code, b.status_code, c.status_code) == (201, 200, 201)
    assert a.json()["feedback_id"] == b.json()["feedback_id"] != c.json()["feedback_id"]
    rec = app["store"].get_feedback(fid)
    assert rec["image_id"] == iid and rec["approved"] is True and rec["rating"] == 5 and rec["comment"] == "nice"
    assert rec["model_version"] == "v1"
    mine = [f for f in iter_feedback(app["storage"], app["root"]) if f["image_id"] == iid]
    assert len(mine) == 4
    ok = {x["image_id"]: x for x in approved_images(app["storage"], app["root"])}
    # four records, one rater (this client's session): only its latest opinion counts
    assert ok[iid]["approvals"] == 1 and ok[iid]["rejections"] == 0


def _count(app) -> int:
    return sum(1 for _ in iter_feedback(app["storage"], app["root"]))


def test_feedback_bad_inputs_store_nothing(client, app):
    iid = _new_image(client)
    before = _count(app)
    assert client.post("/feedback", json={"image_id": "0" * 32, "approved": True}).status_code == 404
    for body in [
        {"image_id": "../../../etc/passwd", "approved": True},
        {"image_id": "../" + iid[3:], "approved": True},
        {"image_id": iid.upper(), "approved": True},
        {"image_id": iid + "/x", "approved": True},
        {"image_id": iid[:31], "approved": True},
        {"image_id": iid, "approved": "yes"},
        {"image_id": iid},
        {"image_id": iid, "approved": True, "rating": 6},
        {"image_id": iid, "approved": True, "rating": 0},
        {"image_id": iid, "approved": True, "rating": 2.5},
        {"image_id": iid, "approved": True, "comment": "x" * 2001},
        {"image_id": iid, "approved": True, "extra": 1},
        [iid],
    ]:
        r = client.post("/feedback", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
    assert client.post("/feedback", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/feedback", content=b"", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/feedback", content=b"").status_code == 415  # JSON routes need application/json
    r = client.post("/feedback", json={"image_id": iid, "approved": True}, headers={"Idempotency-Key": "bad key!"})
    assert r.status_code == 422
    # too big: honest Content-Length ...
    big = json.dumps({"image_id": iid, "approved": True, "comment": "x" * MAX_BODY}).encode()
    assert client.post("/feedback", content=big, headers={"content-type": "application/json"}).status_code == 413

    # ... and streamed without one (chunked): the actual size counts
    def chunks():
        for _ in range(8):
            yield b" " * 1024

    r = client.post("/feedback", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _count(app) == before
    assert client.post("/feedback", json={"image_id": iid, "approved": True, "comment": "x" * 2000}).status_code == 201


def test_feedback_1000_concurrent_posts_stored_exactly_once(app):
    with httpx.Client(base_url=app["url"], timeout=60) as c:
        images = [_new_image(c) for _ in range(5)]
    before = {f["feedback_id"] for f in iter_feedback(app["storage"], app["root"])}
    # 800 distinct (image, key) pairs + 200 repeats of the first 200
    posts = [(images[i % 5], f"burst-{i}", i % 3 != 0) for i in range(800)]
    posts += posts[:200]

    async def run():
        sem = asyncio.Semaphore(50)
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=app["url"], timeout=120, limits=limits) as ac:
            (await ac.get("/session")).raise_for_status()

            async def one(img, key, approved):
                async with sem:
                    r = await ac.post(
                        "/feedback", json={"image_id": img, "approved": approved}, headers={"Idempotency-Key": key}
                    )
                    return key, r.status_code, r.json().get("feedback_id")

            return await asyncio.gather(*(one(*p) for p in posts))

    results = asyncio.run(run())
    assert all(code in (200, 201) for _, code, _ in results), {code for _, code, _ in results}
    assert sum(code == 201 for _, code, _ in results) == 800
    by_key: dict[str, set] = {}
    for key, _, fid in results:
        by_key.setdefault(key, set()).add(fid)
    assert len(by_key) == 800 and all(len(v) == 1 for v in by_key.values())
    returned = {next(iter(v)) for v in by_key.values()}
    stored = [f for f in iter_feedback(app["storage"], app["root"]) if f["feedback_id"] not in before]
    assert len(stored) == 800 and {f["feedback_id"] for f in stored} == returned


# ----------------------------------------------------------------------------- admin + swaps
def test_admin_routes_need_the_token(client):
    assert client.post("/admin/reload", json={"model": "v1"}).status_code == 401
    assert (
        client.post("/admin/reload", json={"model": "v1"}, headers={"Authorization": "Bearer nope"}).status_code == 403
    )
    assert (
        client.post("/admin/promote", json={"version": "v1"}, headers={"Authorization": "Basic abc"}).status_code == 401
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/admin/reload", json={}, headers=auth).status_code == 422
    r = client.post("/admin/reload", json={"model": "no-such-model"}, headers=auth)
    assert r.status_code == 422 and "neither a registered model version" in r.json()["detail"]
    assert client.post("/admin/promote", json={"version": "v99"}, headers=auth).status_code == 404


# ----------------------------------------------------------------------------- hostile input
def _feedback_objects(app) -> dict[str, bytes]:
    base = Path(app["root"]) / "feedback"
    return {str(p): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("route", ["/generate", "/feedback", "/compare"])
def test_hostile_bodies_get_readable_422_and_store_nothing(client, app, route):
    """Not UTF-8, NaN/Infinity/-Infinity, a float overflow: through Serve's proxy, each gets a
    422 with a JSON message (was 500: the error handler could not serialise the input)."""
    _new_image(client)
    before = _feedback_objects(app)
    for body in [
        b"\x00\xff\xfe\xfd",
        b'{"truncation": NaN}',
        b'{"seed": Infinity}',
        b'{"truncation": -Infinity}',
        b'{"image_id": "' + b"a" * 32 + b'", "approved": true, "rating": NaN}',
        b'{"truncation": 1e999}',
    ]:
        r = client.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert isinstance(r.json()["detail"], (str, list)) and r.json()["detail"]
    assert _feedback_objects(app) == before


_LIVE_SCHEMA = openapi_schema()


@_LIVE_SCHEMA.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_live(case, app):
    """Schema fuzzing of every route and method against the live app (over HTTP, through Serve's
    proxy), a few examples per operation (the in-process run in test_serve_hostile.py does more).
    No admin token is sent, so the serving model is never changed by the fuzzer."""
    with httpx.Client(timeout=120) as c:
        send_and_validate(c, case, app["url"])


def test_controls_live(client, app):
    """Mix / interpolate / edit through Serve: requests with and without controls sent together
    (so the continuous batcher gathers them) all answer, plain faces are the faces a plain request gives,
    records keep the controls, bad controls are 422 with a message."""
    info = client.get("/healthz").json()
    assert info["directions"] == ["age", "gender", "race_white"] and info["num_ws"] == 6
    plain_alone = client.post("/generate", json={"seed": 70, "num_images": 2}).json()["images"]
    bodies = [
        {"seed": 70, "num_images": 2},
        {"seed": 70, "num_images": 2, "mix": {"seed": 90, "crossover": 2}},
        {"seed": 70, "edit": {"age": 2.0}},
        {"seed": 70, "interpolate": {"seed_b": 90, "t": 0.5, "space": "z"}},
        {"seed": 70, "edit": {"age": 2.0}, "mix": {"seed": 90, "crossover": 5}},
    ] * 2

    async def together():
        async with httpx.AsyncClient(base_url=app["url"], timeout=120) as ac:
            return await asyncio.gather(*[ac.post("/generate", json=b) for b in bodies])

    answers = asyncio.run(together())
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    assert [im["image_id"] for im in answers[0].json()["images"]] == [im["image_id"] for im in plain_alone]
    for a, b in zip(answers[:5], answers[5:]):  # the same request twice -> the same ids
        assert [im["image_id"] for im in a.json()["images"]] == [im["image_id"] for im in b.json()["images"]]
    ids = {im["image_id"] for r in answers[:5] for im in r.json()["images"]}
    assert len(ids) == 2 + 2 + 1 + 1 + 1
    rec = app["store"].get_image_record(answers[4].json()["images"][0]["image_id"])
    assert rec["control"] == {"edit": {"age": 2.0}, "mix": {"seed": 90, "crossover": 5}}
    from facegen_ray.models.latent import mix_ws, seed_ws, synthesize

    model = load_model(app["storage"], "v1", app["root"])  # what the replicas serve
    want = synthesize(model.G, mix_ws(seed_ws(model.G, [70, 71], 0.7), seed_ws(model.G, [90], 0.7), 2))
    got = np.stack([_png(im["data"]) for im in answers[1].json()["images"]])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # batch composition may move the last bit
    for body, fragment in [
        ({"seed": 1, "mix": {"seed": 2, "crossover": 6}}, "between 1 and 5"),
        ({"seed": 1, "edit": {"smile": 1}}, "unknown attribute"),
        ({"seed": 1, "edit": {"age": 9}}, "less than or equal to 5"),
        ({"seed": 1, "mix": {"seed": 2, "crossover": 1}, "interpolate": {"seed_b": 3, "t": 0}}, "cannot be combined"),
    ]:
        r = client.post("/generate", json=body)
        assert r.status_code == 422 and fragment in json.dumps(r.json()["detail"]), r.text


def test_model_swaps_mid_traffic_drop_nothing(app, monkeypatch):
    """user_config change (declarative redeploy), admin reload and `facegen promote --serve-url`
    while a request loop runs: every request succeeds and the served version follows."""
    from facegen_ray.cli import main as cli_main

    url = app["url"]
    log: list[tuple[float, float, int, str | None]] = []  # (sent, answered, status, version or error)
    stop = asyncio.Event()
    marks: dict[str, float] = {}

    async def traffic():
        async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
            n = 0
            while not stop.is_set() and n < 3000:
                n += 1
                t0 = time.time()
                try:
                    r = await ac.post("/generate", json={"seed": n % 50, "num_images": 1 + n % 3})
                    v = r.json().get("model_version") if r.status_code == 200 else r.text
                    log.append((t0, time.time(), r.status_code, v))
                except httpx.HTTPError as e:
                    log.append((t0, time.time(), -1, repr(e)))

    async def wait_version(v: str, timeout: float = 120.0) -> float:
        t0 = time.time()
        async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
            while time.time() - t0 < timeout:
                versions = {(await ac.get("/healthz")).json()["model_version"] for _ in range(6)}
                if versions == {v}:
                    return time.time()
                await asyncio.sleep(0.3)
        raise AssertionError(f"version {v} not served within {timeout}s")

    async def scenario():
        loops = [asyncio.create_task(traffic()) for _ in range(3)]
        await asyncio.sleep(2)
        # 1) user_config: the operator edits serve.yaml's GeneratorDeployment.user_config.model
        doc = copy.deepcopy(app["doc"])
        for d in doc["applications"][0]["deployments"]:
            if d["name"] == "GeneratorDeployment":
                d["user_config"] = {"model": "v2"}
        marks["deploy"] = time.time()
        await asyncio.to_thread(_deploy, doc)
        marks["v2"] = await wait_version("v2")
        await asyncio.sleep(2)
        # 2) admin reload back to v1: returns once every replica holds it
        marks["reload"] = time.time()
        async with httpx.AsyncClient(base_url=url, timeout=300) as ac:
            r = await ac.post("/admin/reload", json={"model": "v1"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "v1" and r.json()["replicas"] == 2
        marks["v1"] = time.time()
        await asyncio.sleep(2)
        # 3) facegen promote v2 --serve-url: registry + reload
        monkeypatch.setenv("FACEGEN_ADMIN_TOKEN", TOKEN)
        marks["promote"] = time.time()
        rc = await asyncio.to_thread(cli_main, ["promote", "v2", "--root", app["root"], "--serve-url", url])
        assert rc == 0
        marks["promoted"] = time.time()
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*loops)

    asyncio.run(scenario())
    failures = [e for e in log if e[2] != 200]
    assert not failures, failures[:5]

    def versions(after: float, before: float) -> list[str]:
        return [v for sent, done, _, v in log if sent > after and done < before]

    phases = {
        "before": versions(0, marks["deploy"]),
        "user_config": versions(marks["v2"] + 0.5, marks["reload"]),
        "reload": versions(marks["v1"], marks["promote"]),
        "promote": versions(marks["promoted"], float("inf")),
    }
    expected = {"before": "v1", "user_config": "v2", "reload": "v1", "promote": "v2"}
    for name, vs in phases.items():
        assert vs and set(vs) == {expected[name]}, (name, len(vs), sorted(set(vs)))
    assert Registry(app["storage"], app["root"]).serving() == "v2"
    # v2 is conditional: attributes now work and are recorded
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/generate", json={"seed": 5, "attributes": {"age": 34, "gender": 1, "race": 2}})
        assert r.status_code == 200, r.text
        im = r.json()["images"][0]
        rec = app["store"].get_image_record(im["image_id"])
        assert rec["model_version"] == "v2" and rec["condition"] == [3, 1, 2]
        assert rec["attributes"] == {"age": 34, "gender": 1, "race": 2}
        other = c.post("/generate", json={"seed": 5, "attributes": {"age": 70, "gender": 0, "race": 0}}).json()
        assert other["images"][0]["image_id"] != im["image_id"]
        assert c.get("/generate", params={"seed": 5, "gender": 1}).status_code == 200


# ----------------------------------------------------------------------------- page
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_page_flow_in_chromium(app, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app["url"] + "/", timeout=60_000)
            page.wait_for_selector("body[data-loaded='true']", timeout=60_000)
            cards = page.locator(".face")
            assert cards.count() == 4
            first = cards.nth(0)
            image_id = first.get_attribute("data-image-id")
            first.locator("button.approve").click()
            page.wait_for_selector(".face .status.ok", timeout=30_000)
            status = first.locator(".status")
            assert "Approved" in status.inner_text()
            fid = status.get_attribute("data-feedback-id")
            cards.nth(1).locator("button.reject").click()
            page.wait_for_selector(".face:nth-child(2) .status.ok", timeout=30_000)
            # a direction slider: the same faces re-rendered with the edit; feedback records it
            page.wait_for_selector("#controls[data-ready='true']", timeout=30_000)
            sliders = page.locator("#sliders input.direction")
            assert sliders.count() == 3 and sliders.nth(0).get_attribute("data-name") == "age"
            seed_before = cards.nth(0).locator(".seed").inner_text()
            sliders.nth(0).evaluate(
                "el => { el.value = '2'; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }"
            )
            # a selector wait, not wait_for_function: the page's CSP forbids eval, which a string
            # predicate needs (the CSP is part of what this test runs against)
            page.wait_for_selector(".face .control:has-text('age +2')", timeout=60_000)
            page.wait_for_selector("body[data-loaded='true']", timeout=60_000)
            edited = page.locator(".face").nth(0)
            assert edited.locator(".seed").inner_text() == seed_before
            edited_id = edited.get_attribute("data-image-id")
            assert edited_id != image_id
            edited.locator("button.approve").click()
            page.wait_for_selector(".face:nth-child(1) .status.ok", timeout=30_000)
            edited_fid = edited.locator(".status").get_attribute("data-feedback-id")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    rec = app["store"].get_feedback(fid)
    assert rec is not None and rec["image_id"] == image_id and rec["approved"] is True
    edited_rec = app["store"].get_feedback(edited_fid)
    assert edited_rec["image_id"] == edited_id and edited_rec["control"] == {"edit": {"age": 2.0}}
    assert app["store"].get_image_record(edited_id)["control"] == {"edit": {"age": 2.0}}
    assert (tmp_path / "page.png").stat().st_size > 0


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_compare_page_in_chromium(app, client, tmp_path):
    """The pairwise comparison through Serve: an admin starts v3 (unconditional) vs v2
    (conditional: rendered with unknown attributes; the serving model after the swap test, a
    second model held by the replicas when run alone), the page shows a pair rendered by the
    real replicas (render_version) from the two versions the pair record names, a click and a
    key press vote, and the stored votes say which version won."""
    from playwright.sync_api import sync_playwright

    from facegen_ray.data.comparison import ComparisonStore

    storage, root = app["storage"], app["root"]
    store = ComparisonStore(storage, root)
    _save_tiny(storage, f"{root}/exports/c", conditional=False, seed=3, version="c")
    reg = Registry(storage, root)
    reg.register(f"{root}/exports/c", "v3")
    baseline = "v2"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/admin/compare/start", json={"candidate": "v3", "baseline": baseline}, headers=auth)
    assert r.status_code == 201, r.text
    assert (r.json()["baseline"], r.json()["candidate"]) == (baseline, "v3")
    shown: list[tuple[str, dict[str, str]]] = []  # (pair id, side -> base64 PNG as the page showed it)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app["url"] + "/compare", timeout=60_000)
            page.wait_for_selector("body[data-loaded='true']", timeout=60_000)
            text = page.inner_text("body")  # (the markup holds the images' base64, where any string may occur)
            assert baseline not in text and "v3" not in text

            def current() -> tuple[str, dict[str, str]]:
                pid = page.locator("body").get_attribute("data-pair-id")
                imgs = {
                    side: page.locator(f"#img-{side}").get_attribute("src").split(",", 1)[1]
                    for side in ("left", "right")
                }
                return pid, imgs

            shown.append(current())
            page.locator("#choose-left").click()
            page.wait_for_selector(f"#status.ok[data-pair-id='{shown[0][0]}']", timeout=30_000)
            vote_id = page.locator("#status").get_attribute("data-vote-id")
            # the next pair comes by itself; vote "can't tell" on it with the keyboard
            page.wait_for_selector(f"body[data-loaded='true']:not([data-pair-id='{shown[0][0]}'])", timeout=60_000)
            shown.append(current())
            page.keyboard.press("ArrowDown")
            page.wait_for_selector(f"#status.ok[data-pair-id='{shown[1][0]}']", timeout=30_000)
            page.wait_for_selector(f"body[data-loaded='true']:not([data-pair-id='{shown[1][0]}'])", timeout=60_000)
            assert (
                "1 vote" not in page.locator("#count").inner_text() and "2 votes" in page.locator("#count").inner_text()
            )
            page.screenshot(path=str(tmp_path / "compare-page.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    first = store.get_vote(shown[0][0])
    pair = store.get_pair(shown[0][0])
    assert first["vote_id"] == vote_id and first["choice"] == "left"
    assert first["winner"] == ("candidate" if pair["candidate_side"] == "left" else "baseline")
    assert (
        first["winner_version"]
        == pair[
            pair["candidate_side"]
            if first["winner"] == "candidate"
            else ("right" if pair["candidate_side"] == "left" else "left")
        ]["version"]
    )
    assert {pair["left"]["version"], pair["right"]["version"]} == {baseline, "v3"}
    assert store.get_vote(shown[1][0])["choice"] == "cant_tell"
    # what the page showed is what the recorded versions draw at the recorded seeds
    for pid, imgs in shown:
        rec = store.get_pair(pid)
        for side, data in imgs.items():
            model = load_model(storage, rec[side]["version"], root)
            c = torch.full((1, 3), -1, dtype=torch.long) if model.conditional else None
            assert rec[side]["condition"] == ([-1, -1, -1] if model.conditional else None)
            want = generate(model.G, [rec[side]["seed"]], rec["truncation"], c)[0].astype(int)
            assert np.abs(_png(data).astype(int) - want).max() <= 1, (side, rec[side]["version"])
    status = client.get("/admin/compare", headers=auth).json()["active"]
    assert (status["votes"], status["cant_tell"]) == (2, 1)
    assert client.post("/admin/compare/stop", json={}, headers=auth).status_code == 200
    assert client.post("/compare/pairs", json={}).status_code == 409
    assert (tmp_path / "compare-page.png").stat().st_size > 0
