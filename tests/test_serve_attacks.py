"""The feedback loop under attack (issue 34): floods and hostile clients against the live app.

One deployment of the real Serve app (deployments/serve.yaml on a tmp root with tiny models, as
tests/test_serve.py deploys it) with TWO ingress replicas and the default rate limits
(serve.rate_limits), called over real HTTP through Serve's proxy: httpx, and raw sockets where
a client must lie about its body. Every scenario runs a concurrent honest client (its own
address, its own session) whose requests must all succeed; its request count and latency p99
are printed (`-s` shows them), never asserted against a time.

Addresses: every client binds its own loopback address (127.0.0.0/8 is all loopback on Linux),
so the per-address buckets see the attacker and the honest user as two hosts (each address on its
own /24, so each is its own opinion source too: serve/source.py), with no proxy
header involved. Honest raters hold sessions issued two hours ago (signed with the app's own
session secret, read from its guard actor): old enough for the merge's new-rater quarantine.
The attackers' sessions are new, as a flood's are.

    scenario                      protection it proves
    approval flood                per-address/per-rater feedback + session buckets (429), the
                                  merge's new-rater quarantine, min_approvals (distinct raters)
    vote flood                    pairs/vote buckets (429), pairs bound to their rater (403),
                                  one vote per pair: the gate's tally counts what got through
    slow-body clients             serve.body_timeout_s (408)
    cross-site form posts         JSON routes take application/json only (415)
    oversize flood, lying lengths serve.max_request_bytes (413), Content-Length checks (400/408)
    two ingress replicas          the buckets live in the guard actor, not per replica
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_serve import MAX_BODY, TOKEN, served_app

from facegen_ray.config import RetrainConfig
from facegen_ray.config.serve import _default_rate_limits
from facegen_ray.data.feedback import iter_feedback
from facegen_ray.data.feedback_merge import brakes_of, select_feedback
from facegen_ray.lifecycle.human_votes import tally_votes
from facegen_ray.serve.identity import SESSION_COOKIE, SessionSigner

BODY_TIMEOUT_S = 3.0
MIN_HONEST_STEPS = 6
LIMITS = {k: (v.burst, v.per_minute / 60.0) for k, v in _default_rate_limits().items()}  # route: (burst, /s)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM_TYPES = ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"]
_ADDRESSES = (f"127.{n // 250 + 1}.{n % 250 + 1}.2" for n in itertools.count())  # each its own /24: its own source


def _address() -> str:
    """A loopback address no other client of this module uses: its own rate-limit buckets."""
    return next(_ADDRESSES)


# ----------------------------------------------------------------------------- the app
def _defaults_two_ingress_replicas(doc: dict) -> None:
    """The deployment's default rate limits, one generator replica, two ingress replicas."""
    spec = doc["applications"][0]
    del spec["args"]["rate_limits"]  # the defaults: what a deployment gets
    spec["args"].update({"min_replicas": 1, "max_replicas": 1, "ingress_replicas": 2, "body_timeout_s": BODY_TIMEOUT_S})
    for d in spec["deployments"]:
        if d["name"] == "GeneratorDeployment":
            d["autoscaling_config"].update({"min_replicas": 1, "max_replicas": 1})
        if d["name"] == "FacegenIngress":
            d["num_replicas"] = 2


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    import ray
    from ray import serve

    root = str(tmp_path_factory.mktemp("attack-root"))
    with served_app(root, conditional_b=False, adjust=_defaults_two_ingress_replicas) as served:
        # the guard deployment owns the actor that holds the secret (serve/ratelimit.py)
        guard = serve.get_deployment_handle("FacegenGuard", app_name="facegen").actor_handle.remote().result()
        secret = ray.get(guard.session_secret.remote())
        yield {**served, "signer": SessionSigner(secret, 86400.0)}


def _old_cookie(app) -> tuple[str, str]:
    """(Cookie header, rater id) of a session issued two hours ago by the app's own secret."""
    value, rater = app["signer"].issue(now=time.time() - 7200)
    return f"{SESSION_COOKIE}={value}", rater.rater_id


def _client(app, address: str, cookie: str | None = None) -> httpx.Client:
    headers = {"Cookie": cookie} if cookie else {}
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=app["url"], timeout=120, transport=transport, headers=headers)


def _aclient(app, address: str, concurrency: int = 8) -> httpx.AsyncClient:
    """An attacker's client: no cookie jar use (each request names its session), own address."""
    limits = httpx.Limits(max_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(local_address=address, limits=limits)
    return httpx.AsyncClient(base_url=app["url"], timeout=120, transport=transport)


async def _new_session(app, address: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET /session as a first-time visitor from `address`: a fresh client (no cookie jar that
    would send back an earlier answer's cookie) on a fresh connection."""
    async with _aclient(app, address, 1) as c:
        return await c.get("/session", headers={"Connection": "close", **(headers or {})})


def _cookie_of(r: httpx.Response) -> str:
    return f"{SESSION_COOKIE}={r.cookies[SESSION_COOKIE]}"


async def _all(calls, concurrency: int = 8) -> list[httpx.Response]:
    """Run the coroutines with at most `concurrency` in flight; responses in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(call):
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


def _codes(responses) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in responses:
        out[r.status_code] = out.get(r.status_code, 0) + 1
    return out


def _check_429s(responses) -> int:
    """How many were refused with 429; each must say when to retry (whole seconds >= 1)."""
    refused = [r for r in responses if r.status_code == 429]
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1, r.headers
    return len(refused)


def _most_admitted(route: str, elapsed_s: float) -> float:
    """What one bucket lets through in `elapsed_s`: its burst plus the refill (one token of slack)."""
    burst, rate = LIMITS[route]
    return burst + rate * elapsed_s + 1


def _stored(root: str) -> set[str]:
    """Every object below the feedback prefix (images, records, pairs, votes), relative paths."""
    base = Path(root) / "feedback"
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} if base.exists() else set()


# ----------------------------------------------------------------------------- the honest user
class Honest:
    """A real user during an attack, in a thread: `raters` sessions (each issued two hours ago,
    each on its own address), one request at a time with a short pause; `step(self, n)` is its
    n-th action. Every answer must be 2xx; what it stored is kept so a test can tell its writes
    from an attacker's."""

    def __init__(self, app, step, raters: int = 1, pause_s: float = 0.3) -> None:
        self.app, self.step, self.pause_s = app, step, pause_s
        self.raters = []
        for _ in range(raters):
            cookie, rater = _old_cookie(app)
            self.raters.append((_client(app, _address(), cookie), rater))
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.paths: set[str] = set()  # objects its requests stored (below feedback/)
        self.steps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def call(self, method: str, path: str, rater: int = 0, **kw) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            r = self.raters[rater][0].request(method, path, **kw)
        except httpx.HTTPError as e:
            self.failures.append(f"{method} {path}: {e!r}")
            return None
        self.latencies.append(time.perf_counter() - t0)
        if not 200 <= r.status_code < 300:
            self.failures.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
            return None
        return r

    def generate(self) -> str | None:
        r = self.call("POST", "/generate", json={"num_images": 1})
        if r is None:
            return None
        iid = r.json()["images"][0]["image_id"]
        self.paths |= {f"images/{iid[:2]}/{iid}.png", f"images/{iid[:2]}/{iid}.json"}
        return iid

    def approve(self, iid: str, rater: int = 0) -> bool:
        r = self.call("POST", "/feedback", rater, json={"image_id": iid, "approved": True})
        if r is not None:
            fid = r.json()["feedback_id"]
            self.paths.add(f"records/{fid[:2]}/{fid}.json")
        return r is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(self, self.steps)
            self.steps += 1
            self._stop.wait(self.pause_s)

    def wait_for(self, steps: int, timeout_s: float = 120.0) -> None:
        deadline = time.time() + timeout_s
        while self.steps < steps and time.time() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        assert self.steps >= steps, f"the honest client made {self.steps} of {steps} steps: {self.failures[:3]}"

    def __enter__(self) -> Honest:
        self._thread.start()
        self.wait_for(1)  # it is running before the attack starts
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.wait_for(MIN_HONEST_STEPS)  # a short attack still has company throughout
        self._stop.set()
        self._thread.join(timeout=120)
        for c, _ in self.raters:
            c.close()

    def report(self, scenario: str) -> None:
        """Print what the honest user saw; assert it was all served."""
        ms = np.array(self.latencies) * 1000
        p50, p99 = np.percentile(ms, [50, 99]) if len(ms) else (float("nan"), float("nan"))
        print(
            f"\n[{scenario}] honest client: {len(ms)} requests, {len(self.failures)} failed, "
            f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        )
        assert not self.failures, f"{scenario}: the honest client was not served: {self.failures[:5]}"
        assert len(ms) >= 2, f"{scenario}: the honest client made {len(ms)} requests"


def _generating(h: Honest, n: int) -> None:
    h.generate()


def _generating_and_rating(h: Honest, n: int) -> None:
    iid = h.generate()
    if iid is not None and n % 3 == 0 and n < 30:  # under its own feedback bucket
        h.approve(iid)


# ----------------------------------------------------------------------------- 1. approval flood
def test_approval_flood_moves_neither_the_rate_limit_nor_the_merge(app):
    """One address, many fresh sessions, every session approving every image the attacker made:
    most requests are refused (429 + Retry-After), what got through is quarantined (new raters)
    and the merge selection admits none of it; the honest raters' approvals are merged."""
    honest_approved: list[str] = []

    def step(h: Honest, n: int) -> None:
        iid = h.generate()
        if iid is not None and n < 8 and h.approve(iid, 0) and h.approve(iid, 1):
            honest_approved.append(iid)

    atk = _address()

    async def attack():
        async with _aclient(app, atk) as c:
            made = [await c.post("/generate", json={"num_images": 5}) for _ in range(2)]
            assert all(r.status_code == 200 for r in made), [r.text for r in made]
            images = [im["image_id"] for r in made for im in r.json()["images"]]
            t0 = time.perf_counter()
            sessions = await _all([_new_session(app, atk) for _ in range(15)], 4)
            t_sessions = time.perf_counter() - t0
            cookies = [(_cookie_of(r), r.json()["rater"]) for r in sessions if r.status_code == 200]
            t0 = time.perf_counter()
            floods = await _all(
                [
                    c.post("/feedback", json={"image_id": iid, "approved": True}, headers={"Cookie": ck})
                    for iid in images
                    for ck, _ in cookies
                ],
                10,
            )
            return images, sessions, t_sessions, cookies, floods, time.perf_counter() - t0

    with Honest(app, step, raters=2) as h:
        images, sessions, t_sessions, cookies, floods, elapsed = asyncio.run(attack())
        h.wait_for(8)  # its approvals are in
    h.report("approval flood")

    # sessions per address are a bucket too: 15 asked, `burst` (+ refill) given
    assert _check_429s(sessions) >= 1 and len(cookies) <= _most_admitted("session", t_sessions)
    codes = _codes(floods)
    print(f"[approval flood] {len(cookies)} attacker sessions, {len(floods)} approvals sent: {codes} in {elapsed:.1f}s")
    assert set(codes) <= {201, 429}, codes
    assert _check_429s(floods) > len(floods) / 2
    assert codes.get(201, 0) <= _most_admitted("feedback", elapsed)
    attackers = {rater for _, rater in cookies}
    stored = [r for r in iter_feedback(app["storage"], app["root"]) if r.get("rater") in attackers]
    assert len(stored) == codes.get(201, 0)  # exactly what was admitted, once each

    rc = RetrainConfig()  # the retrain's defaults: min_approvals 2, quarantine 60 min / 60 per hour
    merged, skipped = select_feedback(app["storage"], app["root"], rc.min_approvals, rc.min_rating, brakes_of(rc))
    merged_ids = {it.image_id for it in merged}
    print(f"[approval flood] merge selection: {len(merged_ids)} images, skipped {skipped}")
    assert merged_ids.isdisjoint(images), "an attacker's image would be merged"
    assert honest_approved and set(honest_approved) <= merged_ids
    # two brakes stood between the flood and the merge: its sessions are new (the quarantine) and
    # all its approvals come from one network, one source (min_approvals counts sources)
    raters_per_image: dict[str, set] = {}
    for r in stored:
        if r["approved"]:
            raters_per_image.setdefault(r["image_id"], set()).add(r["rater"])
    assert any(len(v) >= 2 for v in raters_per_image.values()), "the flood got no image 2 raters: no proof"
    assert len({r.get("source") for r in stored}) == 1 and None not in {r.get("source") for r in stored}
    assert skipped["quarantined"] >= 1
    unbraked, _ = select_feedback(app["storage"], app["root"], rc.min_approvals)
    assert not {it.image_id for it in unbraked} & set(images)  # the source rule alone stops one address


# ----------------------------------------------------------------------------- 2. vote flood
def _comparison(app) -> dict[str, Any]:
    """The running comparison (v2 against the serving v1), started when none runs."""
    with httpx.Client(base_url=app["url"], timeout=60, headers=AUTH) as c:
        active = c.get("/admin/compare").json()["active"]
        if active is not None:
            return active
        r = c.post("/admin/compare/start", json={"candidate": "v2"})
        assert r.status_code == 201, r.text
        return r.json()


def test_vote_flood_is_limited_and_counted_once(app):
    """Pairs and "can't tell" votes flooded from one address and session: 429s; votes on pairs
    served to the honest rater: 403 (whether it already voted or not); the gate's tally holds
    one vote per pair and no more attacker votes than the limits let through."""
    _comparison(app)
    honest_pairs: list[tuple[str, str | None]] = []  # (pair id, its vote)

    def step(h: Honest, n: int) -> None:
        if n >= 6:
            h.generate()
            return
        r = h.call("POST", "/compare/pairs", json={})
        if r is None:
            return
        pid, choice = r.json()["pair_id"], ("left" if n % 2 == 0 else None)
        if choice and h.call("POST", "/compare", json={"pair_id": pid, "choice": choice}) is None:
            return
        honest_pairs.append((pid, choice))

    atk = _address()

    async def attack():
        s = await _new_session(app, atk)
        assert s.status_code == 200, s.text
        ck, rater = _cookie_of(s), s.json()["rater"]
        async with _aclient(app, atk) as c:
            hdr = {"Cookie": ck}
            t_start = time.perf_counter()
            steal = [
                await c.post("/compare", json={"pair_id": pid, "choice": ch}, headers=hdr)
                for pid, voted in list(honest_pairs)
                for ch in ([voted] if voted else []) + ["cant_tell"]
            ]
            t0 = time.perf_counter()
            pairs = await _all([c.post("/compare/pairs", json={}, headers=hdr) for _ in range(36)], 6)
            t_pairs = time.perf_counter() - t0
            mine = [r.json()["pair_id"] for r in pairs if r.status_code == 201]
            t0 = time.perf_counter()
            votes = await _all(
                [
                    c.post(
                        "/compare",
                        json={"pair_id": pid, "choice": "cant_tell"},
                        headers={**hdr, "Idempotency-Key": f"k{i}"},
                    )
                    for pid in mine
                    for i in range(2)
                ]
                + [
                    c.post("/compare", json={"pair_id": uuid.uuid4().hex, "choice": "cant_tell"}, headers=hdr)
                    for _ in range(10)
                ],
                8,
            )
            return rater, steal, pairs, t_pairs, mine, votes, time.perf_counter() - t_start

    with Honest(app, step) as h:
        h.wait_for(4)  # pairs the attacker can try to vote on: voted and not yet voted
        rater, steal, pairs, t_pairs, mine, votes, t_all = asyncio.run(attack())
        h.wait_for(6)
    h.report("vote flood")

    print(f"[vote flood] steal {_codes(steal)}, pairs {_codes(pairs)}, votes {_codes(votes)}")
    assert steal and all(r.status_code == 403 for r in steal), [(r.status_code, r.text) for r in steal]
    assert _check_429s(pairs) >= 1 and set(_codes(pairs)) <= {201, 429}
    assert len(mine) <= _most_admitted("pairs", t_pairs)
    assert _check_429s(votes) >= 1 and set(_codes(votes)) <= {201, 404, 409, 429}, _codes(votes)
    created = sum(r.status_code == 201 for r in votes)
    assert created <= len(mine)  # one vote per pair
    assert len(steal) + len(votes) - _check_429s(votes) <= _most_admitted("vote", t_all)

    tally = tally_votes(app["storage"], app["root"], "v2", "v1")
    honest_votes = sum(1 for _, v in honest_pairs if v)
    print(f"[vote flood] gate tally: {tally['votes']} votes, by rater {tally['by_rater']}")
    assert tally["by_rater"].get(rater, 0) == created  # what the limits let through, each once
    assert tally["votes"] == created + honest_votes
    assert tally["cant_tell"] == created and tally["wins"] + tally["losses"] == honest_votes


# ----------------------------------------------------------------------------- 3. slow bodies
async def _raw(app, address: str, head: str, body: bytes, trickle_s: float | None = None) -> tuple[int | None, int]:
    """Send a request head and then `body` over a raw socket (one byte per `trickle_s` when set,
    else at once, then nothing more); -> (the response status or None when the server closed
    without one, body bytes sent before the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app["port"], local_addr=(address, 0))
    writer.write(head.encode("latin-1") + b"\r\n")
    await writer.drain()
    sent = 0
    answer = asyncio.ensure_future(reader.readline())

    async def send() -> None:
        nonlocal sent
        step = 1 if trickle_s else len(body)
        while sent < len(body) and not answer.done():
            writer.write(body[sent : sent + step])
            await writer.drain()
            sent += step
            if trickle_s:
                await asyncio.sleep(trickle_s)

    sender = asyncio.ensure_future(send())
    try:
        line = await asyncio.wait_for(answer, timeout=60)  # a hang fails the test
    finally:
        sender.cancel()
        writer.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    return (int(m.group(1)) if m else None), sent


def _head(path: str, length: int | str | None, cookie: str | None = None, extra: str = "") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return "\r\n".join(lines) + "\r\n" + extra


def test_slow_body_clients_get_408_and_the_honest_user_is_served(app):
    """Clients that send their headers, then their body one byte every 0.3 s (80 s for the
    whole body): each is answered 408 once serve.body_timeout_s has passed, long before its
    body is in; the honest user meanwhile is served."""
    body = b" " * 260 + b'{"seed": 1}'
    atk = _address()

    async def attack():
        s = await _new_session(app, atk)
        ck = _cookie_of(s)
        heads = [_head("/generate", len(body))] * 3 + [_head(p, len(body), ck) for p in ("/feedback", "/compare")]
        return await asyncio.gather(*(_raw(app, atk, head, body, trickle_s=0.3) for head in heads))

    with Honest(app, _generating) as h:
        results = asyncio.run(attack())
    h.report("slow-body clients")
    print(f"[slow-body clients] (status, body bytes sent of {len(body)}): {results}")
    for status, sent in results:
        assert status == 408, results
        assert sent < len(body)  # answered while the body was still trickling in


# ----------------------------------------------------------------------------- 4. cross-site posts
def test_cross_site_form_posts_get_415_and_store_nothing(app):
    """What an HTML form on another site can send (form, text/plain, multipart), with the
    victim's cookie and a body that is valid JSON (the text/plain trick): 415, nothing stored,
    no pair rendered."""
    atk = _address()
    s = asyncio.run(_new_session(app, atk))
    ck = _cookie_of(s)
    _comparison(app)
    with _client(app, atk, ck) as c:  # the victim's own image and pair, made the JSON way
        iid = c.post("/generate", json={"num_images": 1}).json()["images"][0]["image_id"]
        pid = c.post("/compare/pairs", json={}).json()["pair_id"]
    bodies = {
        "/generate": {"seed": 424242, "num_images": 4},
        "/feedback": {"image_id": iid, "approved": True, "rating": 5},
        "/compare": {"pair_id": pid, "choice": "cant_tell"},
        "/compare/pairs": {},  # would spend the victim's renders and store a pair
    }
    before = _stored(app["root"])
    with Honest(app, _generating_and_rating) as h, _client(app, atk, ck) as c:
        answers = [
            (
                path,
                ctype,
                c.post(
                    path, content=json.dumps(body), headers={"Content-Type": ctype, "Origin": "https://evil.example"}
                ),
            )
            for path, body in bodies.items()
            for ctype in FORM_TYPES
        ]
    h.report("cross-site form posts")
    for path, ctype, r in answers:
        assert r.status_code == 415, (path, ctype, r.status_code, r.text)
    assert _stored(app["root"]) - before <= h.paths, "a cross-site post stored something"


# ----------------------------------------------------------------------------- 5. oversize
def test_oversize_flood_and_lying_lengths_are_refused_and_store_nothing(app):
    """Bodies over serve.max_request_bytes: 413 (or 429 where the route's bucket is taken first);
    Content-Length lies: declared huge (413 before the body), missing with a chunked flood (413),
    shorter than the body (the declared part alone is parsed: 4xx), longer than the body (408),
    not a number (400). Nothing is stored."""
    atk = _address()
    s = asyncio.run(_new_session(app, atk))
    ck = _cookie_of(s)
    big = json.dumps({"seed": 1, "comment": "x" * (2 * MAX_BODY)}).encode()

    async def flood():
        async with _aclient(app, atk) as c:
            sends = [
                c.post(path, content=big, headers={"Content-Type": "application/json", "Cookie": ck})
                for _ in range(10)
                for path in ("/generate", "/feedback", "/compare")
            ]
            return await _all(sends, 8)

    async def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async def chunked():
        async with _aclient(app, atk) as c:
            return await c.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})

    lies = {
        "declared huge, body small": (_head("/generate", 10**9), b'{"seed": 1}', 413),
        "declared shorter than the body": (_head("/generate", 30), big, None),
        "declared longer than the body": (_head("/generate", 1000), b'{"seed": 1', 408),
        "declared not a number": (_head("/generate", "12abc"), b'{"seed": 1}', 400),
        "declared twice, differently": (_head("/generate", 11, extra="Content-Length: 12\r\n"), b'{"seed": 1} ', 400),
    }
    before = _stored(app["root"])
    with Honest(app, _generating_and_rating) as h:
        flooded = asyncio.run(flood())
        streamed = asyncio.run(chunked())
        lied = {k: asyncio.run(_raw(app, atk, head, body)) for k, (head, body, _) in lies.items()}
    h.report("oversize flood")
    print(f"[oversize flood] {_codes(flooded)}; chunked {streamed.status_code}; lies {lied}")
    for r in flooded:
        assert r.status_code in (413, 429), (r.request.url, r.status_code, r.text)
        assert r.status_code == 413 or r.request.url.path != "/generate"  # /generate reads the body first
    assert _codes(flooded).get(413, 0) >= 10
    _check_429s(flooded)
    assert streamed.status_code == 413
    for name, (_, _, want) in lies.items():
        status, _ = lied[name]
        assert (status == want) if want else (status is None or 400 <= status < 500), (name, status)
    assert _stored(app["root"]) - before <= h.paths, "an oversize or lying request stored something"


# ----------------------------------------------------------------------------- 6. two replicas
def _replica_of_requests(request_ids: set[str]) -> dict[str, str]:
    """request id -> the FacegenIngress replica that handled it (from the replicas' Serve logs)."""
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    out: dict[str, str] = {}
    for f in logs.glob("replica_facegen_FacegenIngress_*.log"):
        replica = f.stem.rsplit("_", 1)[-1]
        for line in f.read_text(errors="replace").splitlines():
            for rid in request_ids & set(line.split()):
                out[rid] = replica
    return out


def test_rate_limits_hold_across_two_ingress_replicas(app):
    """Two ingress replicas run; a burst from one address (new sessions) and one from one
    session (feedback), every request on a fresh connection, reaches both replicas, and the
    total let through is one bucket's burst plus its refill, not one bucket per replica."""
    from ray import serve

    st = serve.status().applications["facegen"].deployments["FacegenIngress"]
    assert {str(k).rsplit(".", 1)[-1]: v for k, v in st.replica_states.items()} == {"RUNNING": 2}, st
    sess_addr, fb_addr = _address(), _address()
    s = asyncio.run(_new_session(app, fb_addr))
    ck = _cookie_of(s)
    with _client(app, fb_addr) as c:
        iid = c.post("/generate", json={"num_images": 1}).json()["images"][0]["image_id"]
    tags: dict[str, list[str]] = {"session": [], "feedback": []}

    def tagged(kind: str) -> dict[str, str]:
        rid = uuid.uuid4().hex
        tags[kind].append(rid)
        return {"X-Request-ID": rid, "Connection": "close"}

    async def burst():
        async with _aclient(app, fb_addr, 10) as b:
            t0 = time.perf_counter()
            sessions = await _all([_new_session(app, sess_addr, tagged("session")) for _ in range(30)], 10)
            t_sessions = time.perf_counter() - t0
            t0 = time.perf_counter()
            feedback = await _all(
                [
                    b.post(
                        "/feedback",
                        json={"image_id": iid, "approved": True},
                        headers={"Cookie": ck, "Idempotency-Key": f"burst-{i}", **tagged("feedback")},
                    )
                    for i in range(50)
                ],
                10,
            )
            return sessions, t_sessions, feedback, time.perf_counter() - t0

    with Honest(app, _generating) as h:
        sessions, t_sessions, feedback, t_feedback = asyncio.run(burst())
    h.report("two ingress replicas")
    time.sleep(1.0)  # the replicas' log lines are written after the responses
    where = _replica_of_requests(set(tags["session"] + tags["feedback"]))
    per_replica = {rep: sum(1 for r in where.values() if r == rep) for rep in set(where.values())}
    print(
        f"[two ingress replicas] sessions {_codes(sessions)} in {t_sessions:.1f}s, feedback "
        f"{_codes(feedback)} in {t_feedback:.1f}s; requests per replica {per_replica}"
    )
    assert len(per_replica) == 2, f"the burst did not reach both ingress replicas: {per_replica}"
    for kind, answers, t in (("session", sessions, t_sessions), ("feedback", feedback, t_feedback)):
        admitted = sum(200 <= r.status_code < 300 for r in answers)
        assert _check_429s(answers) == len(answers) - admitted, _codes(answers)
        burst_size = LIMITS[kind][0]
        assert burst_size <= admitted <= _most_admitted(kind, t), (kind, admitted, t)
        assert admitted < 2 * burst_size  # one bucket, not one per replica
