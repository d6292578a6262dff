"""Who may approve, vote and spend, without Ray: rate-limit buckets, signed rater sessions, one
opinion per rater per image, the merge's quarantine / review / cap, pairs bound to their rater,
the security headers and body rules of the front door (in process), and the start-up refusals.
The same protections against the live app (Serve, 2 ingress replicas, real HTTP): tests/test_serve_attacks.py.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from facegen_ray.config import ServeConfig, load_config
from facegen_ray.data import comparison as cmp
from facegen_ray.data import feedback as fbmod
from facegen_ray.data.feedback import FeedbackStore, summarize_feedback
from facegen_ray.data.feedback_brakes import Brakes, merge_cap
from facegen_ray.data.feedback_merge import apply_cap, select_feedback
from facegen_ray.errors import UserError
from facegen_ray.serve.admin_routes import under_root
from facegen_ray.serve.identity import SessionSigner, client_address, header_rater, secret_from_env
from facegen_ray.serve.ratelimit import TokenBuckets
from facegen_ray.storage import Storage

SECRET = b"s" * 40


# ----------------------------------------------------------------------------- rate limits
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_burst_refill_and_all_or_nothing():
    clock = Clock()
    b = TokenBuckets({"feedback": {"per_minute": 60, "burst": 3}}, clock=clock)
    assert [b.take("feedback", ["a:1", "r:x"]) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take("feedback", ["a:1", "r:x"])
    assert wait == pytest.approx(1.0)  # 1 token/s
    # another rater from the same address is limited too (the address bucket is empty) ...
    assert b.take("feedback", ["a:1", "r:y"]) > 0
    # ... and the refused request took nothing from r:y: from another address it passes
    assert b.take("feedback", ["a:2", "r:y"]) == 0.0
    clock.t += 1.0
    assert b.take("feedback", ["a:1", "r:x"]) == 0.0
    assert b.take("generate", ["a:1"]) == 0.0  # no bucket configured: not limited


def test_token_bucket_cost_and_bounded_table():
    clock = Clock()
    b = TokenBuckets({"generate": {"per_minute": 60, "burst": 16}}, clock=clock, max_keys=100)
    assert b.take("generate", ["a:1"], cost=16) == 0.0
    assert b.take("generate", ["a:1"], cost=4) == pytest.approx(4.0)
    assert b.take("generate", ["a:1"], cost=1000) > 0  # charged as the burst, still refused
    for i in range(1000):
        b.take("generate", [f"a:flood-{i}"])
    assert len(b) <= 100


# ----------------------------------------------------------------------------- identity
def test_session_cookie_signed_and_checked():
    signer = SessionSigner(SECRET, ttl_s=3600)
    value, rater = signer.issue(now=10_000)
    assert rater.rater_id.startswith("s-") and rater.since == 10_000
    assert signer.verify(value, now=10_100) == rater
    sid_part = value.split(".")[1]
    forged = value.replace(sid_part, "0" * 32)
    assert signer.verify(forged, now=10_100) is None  # another session id, same signature
    assert signer.verify(value[:-1] + ("0" if value[-1] != "0" else "1"), now=10_100) is None
    assert signer.verify(value, now=10_000 + 3601) is None  # expired
    assert SessionSigner(b"t" * 40, 3600).verify(value, now=10_100) is None  # other secret
    for junk in ("", "v1", "v1.x.y.z", value + "x", "v1." + "a" * 300):
        assert signer.verify(junk, now=10_100) is None
    with pytest.raises(ValueError):
        SessionSigner(b"short", 3600)
    clock = Clock()  # a simulated clock stands in for the wall clock when no `now` is passed
    timed = SessionSigner(SECRET, ttl_s=3600, clock=clock)
    value, rater = timed.issue()
    assert rater.since == 1000 and timed.verify(value) == rater
    clock.t += 3601
    assert timed.verify(value) is None


def test_secret_env_and_header_identity(monkeypatch):
    monkeypatch.setenv("FACEGEN_SESSION_SECRET", "too-short")
    with pytest.raises(UserError, match="at least 32"):
        secret_from_env()
    monkeypatch.setenv("FACEGEN_SESSION_SECRET", "x" * 32)
    assert secret_from_env() == b"x" * 32
    monkeypatch.delenv("FACEGEN_SESSION_SECRET")
    assert secret_from_env() is None
    a, b = header_rater("alice@example.org"), header_rater("bob")
    assert a.rater_id.startswith("h-") and a != b and a == header_rater("alice@example.org")
    assert header_rater("") is None and header_rater("bad\nvalue") is None
    # X-Forwarded-For counts only from a trusted proxy, and only its right-most untrusted hop
    assert client_address("203.0.113.9", "1.2.3.4", []) == "203.0.113.9"
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.7", ["10.0.0.2"]) == "198.51.100.7"


def test_start_refuses_short_admin_token_and_unknown_limits():
    from facegen_ray.serve.app import check_secrets

    with pytest.raises(UserError, match="at least 32"):
        check_secrets(ServeConfig(admin_token="short-token"))
    check_secrets(ServeConfig(admin_token="a" * 32))
    with pytest.raises(ValueError, match="rate_limits"):
        ServeConfig(rate_limits={"everything": {"per_minute": 1, "burst": 1}})
    assert load_config(None).retrain.min_approvals >= 2


def test_reload_uri_must_be_under_the_root(tmp_path):
    root = str(tmp_path / "root")
    assert under_root(f"{root}/exports/m", root)
    assert not under_root(f"{root}/../elsewhere", root)
    assert not under_root(str(tmp_path / "rootless"), root)
    assert not under_root("http://169.254.169.254/latest", root)
    assert under_root("s3://b/facegen/models/v1", "s3://b/facegen") and not under_root("s3://b/other", "s3://b/facegen")


# ----------------------------------------------------------------------------- counting and brakes
def _image(store: FeedbackStore, n: int) -> str:
    iid = f"{n:032x}"
    png = fbmod._dumps({"n": n})  # any bytes: selection never decodes the image
    store.record_image(iid, png, {"seed": n, "model_version": "v1"})
    return iid


@pytest.fixture
def clock(monkeypatch):
    """Feedback records stamped with a controllable time."""
    now = {"t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}
    monkeypatch.setattr(fbmod, "_now", lambda: now["t"].isoformat(timespec="milliseconds"))
    return now


def test_one_opinion_per_rater_per_image(tmp_path, clock):
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    iid = _image(store, 1)
    for k in range(5):  # one rater, five keys: one approval
        store.add_feedback(iid, True, client_key=f"k{k}", rater="s-mallory", rater_since=0)
    s = summarize_feedback(Storage(), root)[iid]
    assert (s["approvals"], s["rejections"]) == (1, 0)
    for k in range(5):  # rejections from one rater do not stack either
        store.add_feedback(iid, False, client_key=f"r{k}", rater="s-eve", rater_since=0)
    s = summarize_feedback(Storage(), root)[iid]
    assert (s["approvals"], s["rejections"]) == (1, 1)
    clock["t"] += dt.timedelta(seconds=5)  # a rater's latest opinion is the one that counts
    store.add_feedback(iid, True, client_key="changed-mind", rater="s-eve", rater_since=0)
    s = summarize_feedback(Storage(), root)[iid]
    assert (s["approvals"], s["rejections"]) == (2, 0) and s["raters"] == {"s-eve": True, "s-mallory": True}


def test_store_clock_stamps_records(tmp_path):
    """A simulation's clock (benchmarks/poisoning.py) stamps "created" as the wall clock would."""
    t = {"now": dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp()}
    store = FeedbackStore(Storage(), str(tmp_path), clock=lambda: t["now"])
    iid = _image(store, 1)
    t["now"] += 90.5
    fid = store.add_feedback(iid, True, rater="s-a", rater_since=0).feedback_id
    assert store.get_image_record(iid)["created"] == "2026-03-01T12:00:00.000+00:00"
    assert store.get_feedback(fid)["created"] == "2026-03-01T12:01:30.500+00:00"


def test_quarantine_review_and_cap(tmp_path, clock):
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    t0 = clock["t"].timestamp()
    honest = [_image(store, n) for n in range(3)]
    poisoned = [_image(store, 100 + n) for n in range(4)]
    for who in ("h-alice", "h-bob"):  # known for two hours before they approve
        clock["t"] += dt.timedelta(hours=2)
        for iid in honest:
            store.add_feedback(iid, True, rater=who, rater_since=t0)
    # fresh sessions approve the poisoned images minutes after they were issued
    since = clock["t"].timestamp()
    for s in range(3):
        for iid in poisoned:
            store.add_feedback(iid, True, rater=f"s-fresh{s}", rater_since=since)
    brakes = Brakes(quarantine_new_rater_minutes=60, quarantine_approvals_per_hour=100)
    report: dict = {}
    items, skipped = select_feedback(Storage(), root, 2, None, brakes, report)
    assert [i.image_id for i in items] == honest and skipped["quarantined"] == len(poisoned)
    assert report["held_back_raters"] == 3 and report["raters"] == 2
    assert {r["rater"]: r["merged_images"] for r in report["by_rater"]} == {"h-alice": 3, "h-bob": 3}
    # without the quarantine the fresh sessions would decide
    items, _ = select_feedback(Storage(), root, 2)
    assert {i.image_id for i in items} == set(honest + poisoned)
    # an old rater flooding approvals (more than M within an hour) is held back entirely
    clock["t"] += dt.timedelta(days=1)
    flood = [_image(store, 200 + n) for n in range(6)]
    for who in ("h-old1", "h-old2"):
        for iid in flood:
            store.add_feedback(iid, True, rater=who, rater_since=t0)
    items, skipped = select_feedback(Storage(), root, 2, None, Brakes(60, 5))
    assert not set(flood) & {i.image_id for i in items} and skipped["quarantined"] >= len(flood)
    # a review list limits the merge to what a person kept
    items, skipped = select_feedback(Storage(), root, 2, None, Brakes(60, 100, frozenset(honest[:1])))
    assert [i.image_id for i in items] == honest[:1] and skipped["not_reviewed"] == 2 + len(flood)
    # the cap: images and share of the base
    assert merge_cap(1000, 500, 0.05) == 50 and merge_cap(100_000, 500, 0.05) == 500 and merge_cap(10, 500, 0.05) == 1
    # over the cap: the most-approved first (ties by id), the rest skipped as over_cap
    store.add_feedback(honest[2], True, rater="h-carol", rater_since=t0)
    items, skipped = select_feedback(Storage(), root, 2)
    kept = apply_cap(items, 2, skipped)
    assert [i.image_id for i in kept] == sorted([honest[2], poisoned[0]]) and skipped["over_cap"] == len(items) - 2
    assert apply_cap(items, len(items), skipped) == items


def test_review_file_round_trip(tmp_path, clock):
    from facegen_ray.cli import main as cli_main
    from facegen_ray.data.feedback_review import read_review

    root = str(tmp_path / "root")
    store = FeedbackStore(Storage(), root)
    iid = _image(store, 7)
    for who in ("h-a", "h-b"):
        store.add_feedback(iid, True, rater=who, rater_since=0)
    out = tmp_path / "review.json"
    sets = ["--set", "retrain.quarantine_new_rater_minutes=0"]
    assert cli_main(["feedback", "review", "--root", root, "--out", str(out), *sets]) == 0
    assert read_review(str(out)) == [iid] and json.loads(out.read_text())["images"][0]["approvals"] == 2
    out.write_text("{not json")
    with pytest.raises(UserError):
        read_review(str(out))


# ----------------------------------------------------------------------------- pairs bound to a rater
def test_a_pair_takes_a_vote_from_its_rater_only(tmp_path):
    store = cmp.ComparisonStore(Storage(), str(tmp_path))
    c = store.start(
        {"version": "v1", "uri": "u1", "weights_sha256": "a"}, {"version": "v2", "uri": "u2", "weights_sha256": "b"}
    )
    side = {"version": "v1", "seed": 1, "image_id": "0" * 32, "weights_sha256": "a"}
    pair = store.record_pair(c, "left", {"left": side, "right": {**side, "version": "v2"}}, 0.7, 60, rater="s-alice")
    with pytest.raises(cmp.NotYourPair):
        store.vote(pair["pair_id"], "cant_tell", "k1", rater="s-mallory")
    with pytest.raises(cmp.NotYourPair):
        store.vote(pair["pair_id"], "cant_tell", "k1")  # no rater at all
    assert store.vote(pair["pair_id"], "left", "k1", rater="s-alice").record["rater"] == "s-alice"
    # once voted: another rater's "retry" (same key, or no key and the same choice) is refused,
    # never answered with the stored vote (that would tell them what alice chose)
    for key in ("k1", None):
        with pytest.raises(cmp.NotYourPair):
            store.vote(pair["pair_id"], "left", key, rater="s-mallory")
    assert not store.vote(pair["pair_id"], "left", "k1", rater="s-alice").created  # alice's retry still replays
    with pytest.raises(cmp.ComparisonConflict):  # one vote per pair, even from its rater
        store.vote(pair["pair_id"], "right", "k2", rater="s-alice")


def test_gate_tally_lists_votes_per_rater(tmp_path):
    from facegen_ray.lifecycle.human_votes import human_verdict, tally_votes

    store = cmp.ComparisonStore(Storage(), str(tmp_path))
    c = store.start(
        {"version": "v1", "uri": "u1", "weights_sha256": "a"}, {"version": "v2", "uri": "u2", "weights_sha256": "b"}
    )
    side = {"version": "v1", "seed": 1, "image_id": "0" * 32, "weights_sha256": "a"}
    for i, who in enumerate(["s-a"] * 8 + ["s-b"] * 2):
        p = store.record_pair(c, "left", {"left": side, "right": side}, 0.7, 60, rater=who)
        store.vote(p["pair_id"], "left" if i % 2 else "cant_tell", rater=who)
    t = tally_votes(Storage(), str(tmp_path), "v2", "v1")
    assert t["raters"] == 2 and t["top_rater_share"] == 0.8 and t["by_rater"] == {"s-a": 8, "s-b": 2}
    assert "2 rater(s), the busiest cast 80%" in human_verdict(t, 0.4, 5)["reason"]
