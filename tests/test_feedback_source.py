"""Opinion sources (serve/source.py) and the distinct-source approval rule (data/feedback.py)."""

from facegen_ray.data.feedback import approval_verdict, summarize_records
from facegen_ray.serve.source import network_of, source_id

SECRET = b"k" * 40


def test_ipv4_groups_by_24():
    assert network_of("203.0.113.7") == "203.0.113.0/24"
    assert source_id(SECRET, "203.0.113.7") == source_id(SECRET, "203.0.113.200")
    assert source_id(SECRET, "203.0.113.7") != source_id(SECRET, "203.0.114.7")
    assert source_id(SECRET, "::ffff:203.0.113.9") == source_id(SECRET, "203.0.113.7")


def test_ipv6_groups_by_56():
    assert network_of("2001:db8:0:ab12::1") == "2001:db8:0:ab00::/56"
    assert source_id(SECRET, "2001:db8:0:ab12::1") == source_id(SECRET, "2001:db8:0:abff::9")
    assert source_id(SECRET, "2001:db8:0:ab12::1") != source_id(SECRET, "2001:db8:0:ac12::1")


def test_keyed_short_and_proxy_mode():
    s = source_id(SECRET, "203.0.113.7")
    assert len(s) == 16 and "203" not in s
    assert s != source_id(b"j" * 40, "203.0.113.7")
    assert source_id(SECRET, rater="h-a") != source_id(SECRET, rater="h-b")
    assert source_id(SECRET, "1.2.3.4", rater="h-a") == source_id(SECRET, "9.9.9.9", rater="h-a")


def _rec(i, rater, approved=True, source=None):
    r = {"feedback_id": f"{i:032x}", "image_id": "a" * 32, "approved": approved, "rater": rater, "created": str(i)}
    if source is not None:
        r["source"] = source
    return r


def test_two_sessions_one_source_do_not_approve():
    s = summarize_records([_rec(1, "s-1", source="x"), _rec(2, "s-2", source="x")])["a" * 32]
    assert s["approvals"] == 2 and s["sources"] == ["src-x"]
    assert approval_verdict(s, 2) == "too_few_approvals"
    s = summarize_records([_rec(1, "s-1", source="x"), _rec(2, "s-2", source="y")])["a" * 32]
    assert approval_verdict(s, 2) is None


def test_records_without_source_count_as_their_rater():
    s = summarize_records([_rec(1, "s-1"), _rec(2, "s-2")])["a" * 32]
    assert approval_verdict(s, 2) is None
    s = summarize_records([_rec(1, "s-1"), _rec(2, "s-2", source="x"), _rec(3, "s-3", False, "y")])["a" * 32]
    assert approval_verdict(s, 2) is None  # 2 approving sources, 2 approvals > 1 rejection


def test_per_source_cap_bounds_one_network():
    from facegen_ray.data.feedback_merge import apply_cap
    from facegen_ray.data.feedback_rows import FeedbackImage

    def item(i, sources):
        return FeedbackImage(f"{i:032x}", {}, "", len(sources), 0, None, [], sources)

    items = [item(i, ["src-a", "src-b"]) for i in range(10)] + [item(100 + i, ["src-c", "src-d"]) for i in range(3)]
    skipped = {"over_cap": 0}
    kept = apply_cap(items, 500, skipped, per_source=4, min_sources=2)
    assert len(kept) == 7 and skipped["over_cap"] == 6
    assert len(apply_cap(items, 500, {"over_cap": 0})) == 13


def test_signer_keys_sources_without_exposing_its_secret():
    """The ingress asks its SessionSigner for a source id; the id equals source_id under the
    signer's secret, and differs under another secret (so ids do not outlive a rotation)."""
    from facegen_ray.serve.identity import SessionSigner

    signer = SessionSigner(SECRET, ttl_s=60)
    assert signer.source_id("203.0.113.7") == source_id(SECRET, "203.0.113.7")
    assert signer.source_id(rater="h-a") == source_id(SECRET, rater="h-a")
    assert SessionSigner(b"m" * 40, ttl_s=60).source_id("203.0.113.7") != signer.source_id("203.0.113.7")
    assert not [a for a in vars(signer) if "secret" in a and not a.startswith("_")]
