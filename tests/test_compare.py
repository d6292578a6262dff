"""Pairwise human evaluation: the comparison store (durable, idempotent, one vote per pair), the
/compare routes and the admin compare routes in process, the Wilson interval and the gate's
human rule. The live app (Serve, real replicas, Chromium) is in tests/test_serve.py, the gate
CLI with votes in tests/test_retrain.py.

The HTTP tests drive the ingress's real FastAPI app with a real ingress instance (real stores
on a tmp root, real registry, real tiny models) as tests/test_serve_hostile.py does; only the
generator deployment handle is an in-process stand-in that renders with the named model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import start_session, tiny_model_dict
from PIL import Image
from pydantic import ValidationError
from test_serve_hostile import InProcessGenerator, _Method, _stored

from facegen_ray.config import GateConfig, ModelConfig
from facegen_ray.data import comparison as cmp
from facegen_ray.lifecycle import human_votes as hv
from facegen_ray.models import Generator, save_model_dir
from facegen_ray.provenance import read_metadata
from facegen_ray.registry import Registry
from facegen_ray.serve import generation as gen
from facegen_ray.serve.ingress import Ingress, api
from facegen_ray.serve.messages import RenderRequest, RenderResult
from facegen_ray.storage import Storage

TOKEN = "compare-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ----------------------------------------------------------------------------- statistics
def test_wilson_interval_matches_hand_computed_values():
    # 8 of 10 at 95% (z = 1.959964): p = .8, z^2/n = .384146
    # centre = (.8 + .192073) / 1.384146 = .716739; half = z sqrt(.016 + .009604) / 1.384146 = .226581
    lo, hi = hv.wilson_interval(8, 10, 0.95)
    assert lo == pytest.approx(0.490158, abs=1e-5) and hi == pytest.approx(0.943319, abs=1e-5)
    # 0 of 10: the lower end is 0 and the upper end is z^2 / (n + z^2) = 3.841459 / 13.841459
    lo, hi = hv.wilson_interval(0, 10, 0.95)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.277533, abs=1e-5)
    # the interval of n-s is the mirror image of that of s; a lower confidence gives a narrower one
    lo, hi = hv.wilson_interval(2, 10, 0.95)
    assert (lo, hi) == pytest.approx((1 - 0.943319, 1 - 0.490158), abs=1e-5)
    lo90, hi90 = hv.wilson_interval(8, 10, 0.90)
    assert 0.490158 < lo90 < 0.8 < hi90 < 0.943319
    assert hv.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        hv.wilson_interval(11, 10)


def _tally(wins: int, losses: int, cant_tell: int) -> dict:
    return {
        "candidate": "v2",
        "baseline": "v1",
        "votes": wins + losses + cant_tell,
        "wins": wins,
        "losses": losses,
        "cant_tell": cant_tell,
        "comparisons": [],
    }


def test_human_verdict_counts_cant_tell_as_half_a_win_and_decides():
    # all "can't tell": a win rate of exactly 0.5, and every one counts toward min_votes
    v = hv.human_verdict(_tally(0, 0, 10), 0.2, 10)
    assert v["win_rate"] == 0.5 and v["votes"] == 10 and v["verdict"] == "pass"
    assert v["ci"] == pytest.approx(list(hv.wilson_interval(5, 10)))
    # 6 wins + 4 can't tell of 10: 8 successes -> the hand-computed interval above
    v = hv.human_verdict(_tally(6, 0, 4), 0.49, 10)
    assert v["win_rate"] == 0.8 and v["ci"][0] == pytest.approx(0.490158, abs=1e-5) and v["verdict"] == "pass"
    v = hv.human_verdict(_tally(6, 0, 4), 0.50, 10)
    assert v["verdict"] == "fail" and "FAILS" in v["reason"]
    # too few votes -> pending, whatever the rate
    v = hv.human_verdict(_tally(9, 0, 0), 0.1, 10)
    assert v["verdict"] == "pending" and "1 to go" in v["reason"]
    # min_votes unset -> DEFAULT_MIN_VOTES
    v = hv.human_verdict(_tally(20, 0, 0), 0.1, None)
    assert v["min_votes"] == cmp.DEFAULT_MIN_VOTES == 30 and v["verdict"] == "pending"
    # rule off: reported, never required
    v = hv.human_verdict(_tally(0, 3, 0), None, None)
    assert v["verdict"] == "off" and v["win_rate"] == 0.0 and v["min_votes"] is None
    v = hv.human_verdict(_tally(0, 0, 0), 0.4, 1)
    assert v["verdict"] == "pending" and v["win_rate"] is None and v["ci"] is None


@pytest.mark.parametrize(
    "automatic,verdict,expected",
    [
        ("promoted", None, "promoted"),
        ("promoted", "off", "promoted"),
        ("promoted", "pass", "promoted"),
        ("promoted", "fail", "rejected"),
        ("promoted", "pending", "pending"),
        ("rejected", "pass", "rejected"),
        ("rejected", "pending", "rejected"),
        ("rejected", "fail", "rejected"),
    ],
)
def test_gate_decision_with_the_human_verdict(automatic, verdict, expected):
    human = None if verdict is None else {"verdict": verdict}
    assert hv.combine_decision(automatic, human) == expected


def test_gate_config_human_rule_is_off_by_default():
    g = GateConfig()
    assert g.min_human_win_rate is None and g.min_votes is None and g.human_confidence == 0.95
    with pytest.raises(ValidationError, match="set gate.min_human_win_rate too"):
        GateConfig(min_votes=10)
    assert GateConfig(min_human_win_rate=0.4, min_votes=10).min_votes == 10
    for bad in ({"min_human_win_rate": 1.5}, {"min_human_win_rate": 0.4, "min_votes": 0}, {"human_confidence": 1.0}):
        with pytest.raises(ValidationError):
            GateConfig(**bad)


# ----------------------------------------------------------------------------- the store
def _side(version: str) -> dict:
    return {"version": version, "uri": f"/models/{version}", "weights_sha256": "0" * 64}


def _pair(store: cmp.ComparisonStore, comparison: dict, candidate_side: str = "left", ttl_s: float = 60.0) -> dict:
    other = "right" if candidate_side == "left" else "left"
    sides = {
        candidate_side: {"version": comparison["candidate"]["version"], "seed": 1},
        other: {"version": comparison["baseline"]["version"], "seed": 2},
    }
    return store.record_pair(comparison, candidate_side, sides, 0.7, ttl_s)


def test_store_votes_are_durable_idempotent_and_one_per_pair(tmp_path):
    root = str(tmp_path / "root")
    store = cmp.ComparisonStore(Storage(), root)
    with pytest.raises(cmp.CompareError, match="two different versions"):
        store.start(_side("v1"), _side("v1"))
    c = store.start(_side("v1"), _side("v2"))
    assert store.active()["comparison_id"] == c["comparison_id"] and c["stopped"] is None
    with pytest.raises(cmp.ComparisonConflict, match="stop it first"):
        store.start(_side("v1"), _side("v3"))
    p = _pair(store, c, "right")
    # an explicit key: the retry returns the stored vote, another key on the same pair is refused
    first = store.vote(p["pair_id"], "right", "alice:1")
    assert first.created and first.record["winner"] == "candidate" and first.record["winner_version"] == "v2"
    again = store.vote(p["pair_id"], "left", "alice:1")  # same key, even another body: the stored vote
    assert not again.created and again.vote_id == first.vote_id and again.record["choice"] == "right"
    with pytest.raises(cmp.ComparisonConflict, match="already has a vote"):
        store.vote(p["pair_id"], "right", "bob")
    # no key: derived from the body -> an exact retry collapses, another choice is refused
    q = _pair(store, c, "left")
    a = store.vote(q["pair_id"], "right")
    assert a.created and a.record["winner"] == "baseline" and a.record["winner_version"] == "v1"
    assert not store.vote(q["pair_id"], "right").created
    with pytest.raises(cmp.ComparisonConflict):
        store.vote(q["pair_id"], "cant_tell")
    # bad input
    with pytest.raises(cmp.UnknownPair):
        store.vote("a" * 32, "left")
    for bad_id in ("../" + "a" * 29, "A" * 32, "a" * 31):
        with pytest.raises(ValueError):
            store.vote(bad_id, "left")
    with pytest.raises(ValueError, match="Idempotency-Key"):
        store.vote(q["pair_id"], "left", "bad key!")
    with pytest.raises(cmp.CompareError, match="choice must be one of"):
        store.vote(q["pair_id"], "both")
    # durable: a fresh store (another process) reads the same records
    fresh = cmp.ComparisonStore(Storage(), root)
    assert fresh.get_vote(p["pair_id"]) == first.record
    assert fresh.get_pair(p["pair_id"])["candidate_side"] == "right"
    assert fresh.counts() == {c["comparison_id"]: {"votes": 2, "wins": 1, "losses": 1, "cant_tell": 0}}
    # expiry: a late vote is refused (410), but the replay of a vote stored in time still answers
    late = _pair(store, c, ttl_s=1e-6)
    with pytest.raises(cmp.PairExpired):
        store.vote(late["pair_id"], "left")
    # stopping: the pairs of a stopped comparison take no votes; stop twice -> conflict
    r = _pair(store, c)
    with pytest.raises(cmp.ComparisonConflict, match="is not the running one"):
        store.stop("b" * 32)
    stopped = store.stop(c["comparison_id"])
    assert stopped["stopped"] and store.active() is None
    with pytest.raises(cmp.ComparisonConflict, match="was stopped"):
        store.vote(r["pair_id"], "left")
    assert not store.vote(p["pair_id"], "right", "alice:1").created
    with pytest.raises(cmp.ComparisonConflict, match="no comparison is running"):
        store.stop()


def test_concurrent_votes_on_one_pair_store_exactly_one(tmp_path):
    store = cmp.ComparisonStore(Storage(), str(tmp_path / "root"))
    c = store.start(_side("v1"), _side("v2"))
    p = _pair(store, c)
    results: list = []
    lock = threading.Lock()

    def one(key: str, choice: str) -> None:
        try:
            res = store.vote(p["pair_id"], choice, key)
        except cmp.ComparisonConflict:
            res = "conflict"
        with lock:
            results.append((key, res))

    threads = [
        threading.Thread(target=one, args=(f"k{i % 4}", ("left", "right", "cant_tell")[i % 3])) for i in range(24)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [r for _, r in results if r != "conflict" and r.created]
    assert len(created) == 1
    winner_key = next(k for k, r in results if r != "conflict" and r.created)
    for key, res in results:  # the winner's retries replay its vote; every other key is refused
        if key == winner_key:
            assert res != "conflict" and res.vote_id == created[0].vote_id
        else:
            assert res == "conflict"
    assert [v["vote_id"] for v in store.iter_votes()] == [created[0].vote_id]


def test_tally_counts_both_orders_and_skips_garbage(tmp_path):
    root = str(tmp_path / "root")
    storage = Storage()
    store = cmp.ComparisonStore(storage, root)
    c1 = store.start(_side("v1"), _side("v2"))  # v2 the candidate
    for choice, side in [("left", "left"), ("left", "left"), ("right", "left"), ("cant_tell", "right")]:
        store.vote(_pair(store, c1, side)["pair_id"], choice)
    store.stop()
    c2 = store.start(_side("v2"), _side("v1"))  # the other way round: v1 the candidate
    store.vote(_pair(store, c2, "right")["pair_id"], "left")  # v2 (baseline here) chosen: a win for v2
    store.stop()
    c3 = store.start(_side("v1"), _side("v3"))  # another pair of versions: not counted
    store.vote(_pair(store, c3)["pair_id"], "left")
    junk = tmp_path / "root" / "feedback" / "compare" / "votes" / "ff"
    junk.mkdir(parents=True, exist_ok=True)  # a real pair id may start with "ff" too
    (junk / ("f" * 32 + ".json")).write_bytes(b'{"pair_id": "' + b"f" * 32)  # truncated: skipped
    t = hv.tally_votes(storage, root, "v2", "v1")
    assert (t["votes"], t["wins"], t["losses"], t["cant_tell"]) == (5, 3, 1, 1)
    assert t["comparisons"] == sorted([c1["comparison_id"], c2["comparison_id"]])
    t = hv.tally_votes(storage, root, "v1", "v2")
    assert (t["votes"], t["wins"], t["losses"], t["cant_tell"]) == (5, 1, 3, 1)
    assert hv.tally_votes(storage, root, "v2", "v2")["votes"] == 0
    assert [x["comparison_id"] for x in store.comparisons()] == [
        c1["comparison_id"],
        c2["comparison_id"],
        c3["comparison_id"],
    ]


# ----------------------------------------------------------------------------- HTTP, in process
class VersionsGenerator(InProcessGenerator):
    """The generator handle's stand-in, with render_version: renders with the named model."""

    def __init__(self, model: gen.LoadedModel, storage: Storage, root: str) -> None:
        super().__init__(model)
        self.storage, self.root = storage, root
        self.loaded: dict = {}
        self.render_version = _Method(self._render_version)

    async def _render_version(self, req: RenderRequest) -> RenderResult:
        key = (req.model.uri, req.model.label)
        if key not in self.loaded:
            self.loaded[key] = gen.load_model(self.storage, key[0], self.root, resolved=key)
        model = self.loaded[key]
        images = gen.generate(model.G, req.seeds, req.truncation)
        return RenderResult.success(model.describe(), images)


def _save_tiny(storage: Storage, uri: str, seed: int, version: str) -> None:
    cfg = ModelConfig(**tiny_model_dict(16))
    torch.manual_seed(seed)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    save_model_dir(storage, uri, G, cfg, {"version": version})


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from ray import serve

    root = str(tmp_path_factory.mktemp("compare-root"))
    storage = Storage()
    reg = Registry(storage, root)
    for seed, version in ((1, "v1"), (2, "v2"), (3, "v3")):
        _save_tiny(storage, f"{root}/exports/{version}", seed, f"export-{version}")
        reg.register(f"{root}/exports/{version}", version)
    reg.promote("v1")
    storage.rm(f"{root}/models/v3/generator.pt")  # v3: registered, but broken
    serving = gen.load_model(storage, "v1", root)
    inst = Ingress(
        VersionsGenerator(serving, storage, root),
        None,
        root,
        {},
        {"max_request_bytes": 4096, "default_truncation": 0.7, "compare_pair_ttl_s": 600},
        hashlib.sha256(TOKEN.encode()).hexdigest(),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=inst))
        yield {"root": root, "storage": storage, "store": cmp.ComparisonStore(storage, root), "instance": inst}


@pytest.fixture
def client(app):
    from starlette.testclient import TestClient

    with TestClient(api, raise_server_exceptions=False) as c:
        start_session(c)
        yield c


def _detail(r) -> str:
    return json.dumps(r.json()["detail"])


def test_compare_http_flow(client, app):
    store = app["store"]
    page = client.get("/compare")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "Can't tell" in page.text and "v1" not in page.text and "v2" not in page.text
    assert client.post("/compare/pairs", json={}).status_code == 409  # nothing running yet
    # admin: token first, then readable 4xx for bad versions
    start = {"candidate": "v2"}
    assert client.post("/admin/compare/start", json=start).status_code == 401
    assert client.post("/admin/compare/start", json=start, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get("/admin/compare").status_code == 401
    for body, code, fragment in [
        ({"candidate": "v9"}, 404, "unknown model version"),
        ({"candidate": "../v2"}, 422, "invalid model version"),
        ({"candidate": "v1"}, 422, "two different versions"),
        ({"candidate": "v3"}, 422, "cannot be loaded"),
        ({"candidate": "v2", "baseline": "v9"}, 404, "unknown model version"),
        ({"candidate": "v2", "colour": 1}, 422, "extra"),
        ({}, 422, "missing"),
    ]:
        r = client.post("/admin/compare/start", json=body, headers=AUTH)
        assert r.status_code == code and fragment in _detail(r), (body, r.status_code, r.text)
    assert store.active() is None and store.comparisons() == []
    r = client.post("/admin/compare/start", json=start, headers=AUTH)
    assert r.status_code == 201, r.text
    info = r.json()
    assert (info["baseline"], info["candidate"], info["votes"], info["stopped"]) == ("v1", "v2", 0, None)
    assert client.post("/admin/compare/start", json={"candidate": "v2"}, headers=AUTH).status_code == 409

    # pairs: two faces, the versions hidden, the sides recorded before the answer; the sides are
    # random, so pairs are drawn until both sides had the candidate (40 draws: fails by chance 2^-39)
    sides_seen: set = set()
    for _ in range(40):
        if len(sides_seen) == 2:
            break
        r = client.post("/compare/pairs", json={})
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"pair_id", "expires", "left", "right"}
        assert set(body["left"]) == set(body["right"]) == {"data"}  # base64 only: nothing names a model
        pair = store.get_pair(body["pair_id"])
        assert pair["comparison_id"] == info["comparison_id"] and pair["candidate"] == "v2"
        sides_seen.add(pair["candidate_side"])
        assert pair["left"]["seed"] != pair["right"]["seed"]
        for side in ("left", "right"):
            png = base64.b64decode(body[side]["data"])
            meta = read_metadata(png)
            with Image.open(io.BytesIO(png)) as im:
                text = json.dumps(im.text)
            assert not any(v in text for v in ("v1", "v2", "export-", app["root"]))
            assert meta["model_version"] == cmp.BLIND_LABEL and meta["seed"] is None
            assert meta["image_id"] == cmp.blind_image_id(body["pair_id"], side)
            # the recorded version really drew this side: its rendering at the recorded seed
            rec = pair[side]
            model = app["instance"].generator.loaded[(f"{app['root']}/models/{rec['version']}", rec["version"])]
            want = gen.generate(model.G, [rec["seed"]], 0.7)[0]
            assert np.abs(gen.decode_png(png).astype(int) - want.astype(int)).max() <= 1
            assert rec["image_id"] == gen.image_id(rec["version"], model.digest, rec["seed"], 0.7, None)
    assert sides_seen == {"left", "right"}

    # votes
    pid = body["pair_id"]
    r1 = client.post("/compare", json={"pair_id": pid, "choice": "cant_tell"}, headers={"Idempotency-Key": "u1:x"})
    assert r1.status_code == 201, r1.text
    vid = r1.json()["vote_id"]
    r2 = client.post("/compare", json={"pair_id": pid, "choice": "cant_tell"}, headers={"Idempotency-Key": "u1:x"})
    assert r2.status_code == 200 and r2.json() == {**r1.json(), "created": False}
    r3 = client.post("/compare", json={"pair_id": pid, "choice": "left"}, headers={"Idempotency-Key": "u2"})
    assert r3.status_code == 409 and "already has a vote" in _detail(r3)
    assert store.get_vote(pid)["vote_id"] == vid and store.get_vote(pid)["winner"] == "cant_tell"
    before = _stored(app["root"])
    for body_, code in [
        ({"pair_id": "0" * 32, "choice": "left"}, 404),
        ({"pair_id": pid, "choice": "up"}, 422),
        ({"pair_id": pid.upper(), "choice": "left"}, 422),
        ({"pair_id": pid}, 422),
        ({"pair_id": "../" + pid[3:], "choice": "left"}, 422),
        ({"pair_id": pid, "choice": "left", "extra": 1}, 422),
        ([pid, "left"], 422),
    ]:
        r = client.post("/compare", json=body_)
        assert r.status_code == code and r.json()["detail"], (body_, r.status_code, r.text)
    r = client.post("/compare", json={"pair_id": pid, "choice": "left"}, headers={"Idempotency-Key": "bad key!"})
    assert r.status_code == 422
    assert _stored(app["root"]) == before
    late = _pair(store, store.active(), ttl_s=1e-6)
    before = _stored(app["root"])
    r = client.post("/compare", json={"pair_id": late["pair_id"], "choice": "left"})
    assert r.status_code == 410 and "expired" in _detail(r)
    assert _stored(app["root"]) == before  # refused votes store nothing

    # a vote for the candidate: the server knows its side
    r = client.post("/compare/pairs", json={})
    p2 = store.get_pair(r.json()["pair_id"])
    assert client.post("/compare", json={"pair_id": p2["pair_id"], "choice": p2["candidate_side"]}).status_code == 201
    assert store.get_vote(p2["pair_id"])["winner_version"] == "v2"
    status = client.get("/admin/compare", headers=AUTH).json()
    assert status["active"]["votes"] == 2 and status["active"]["wins"] == 1 and status["active"]["cant_tell"] == 1
    assert [c["comparison_id"] for c in status["comparisons"]] == [info["comparison_id"]]

    # stop: pairs and votes refused, the votes stay
    assert client.post("/admin/compare/stop", json={"comparison_id": "c" * 32}, headers=AUTH).status_code == 409
    r = client.post("/admin/compare/stop", json={}, headers=AUTH)
    assert r.status_code == 200 and r.json()["stopped"] and r.json()["votes"] == 2
    p3 = _pair(store, store.get_comparison(info["comparison_id"]))
    r = client.post("/compare", json={"pair_id": p3["pair_id"], "choice": "left"})
    assert r.status_code == 409 and "stopped" in _detail(r)
    assert client.post("/compare/pairs", json={}).status_code == 409
    assert client.post("/admin/compare/stop", json={}, headers=AUTH).status_code == 409
    assert client.get("/admin/compare", headers=AUTH).json()["active"] is None
    t = hv.tally_votes(app["storage"], app["root"], "v2", "v1")
    assert (t["votes"], t["wins"], t["losses"], t["cant_tell"]) == (2, 1, 0, 1)


def test_votes_carry_their_network_and_the_tally_counts_networks(tmp_path):
    """A vote stores the voter's source (serve/source.py); the gate's tally reports how many
    networks voted and the busiest one's share (a vote without a source counts as its rater's)."""
    root = str(tmp_path / "root")
    storage = Storage()
    store = cmp.ComparisonStore(storage, root)
    c = store.start(_side("v1"), _side("v2"))
    votes = [("r1", "net-a"), ("r2", "net-a"), ("r3", "net-a"), ("r4", "net-b"), ("r5", None)]
    for rater, source in votes:
        res = store.vote(_pair(store, c)["pair_id"], "left", rater=rater, source=source)
        assert res.record["source"] == source
    t = hv.tally_votes(storage, root, "v2", "v1")
    assert (t["votes"], t["raters"], t["networks"]) == (5, 5, 3)
    assert t["top_network_share"] == 0.6 and t["top_rater_share"] == 0.2
    verdict = hv.human_verdict(t, 0.5, 1, 0.95)
    assert "3 network(s), the busiest cast 60%" in verdict["reason"]
