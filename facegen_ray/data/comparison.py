"""Pairwise human evaluation: two faces side by side, one from each of two registered model
versions, and which one a person finds more photorealistic (or "can't tell"). The store
behind GET/POST /compare, POST /compare/pairs and the /admin/compare routes; the promotion
gate's tally and Wilson interval over these votes are in lifecycle/human_votes.py.

Layout below `<root>/feedback/compare/` (the feedback store's conventions: every object is
written once with `Storage.create_exclusive`, ids are strict lowercase hex checked before any
path is built; only the `active.json` pointer is ever rewritten, by the admin routes). A pair
nobody voted on is deleted once it and its expiry are older than `feedback.retention_days`
(`facegen feedback expire`, data/feedback_retention.py); votes, voted pairs and comparisons
never are. The gate's tally and the admin counts list votes/ only (comparisons/ for the list
of comparisons), never pairs/: a flood of POST /compare/pairs does not slow them.

    active.json                       {"comparison_id": <cid> | null, "updated": iso}
    comparisons/<cid>/start.json      baseline + candidate: version, model URI, weights digest; started
    comparisons/<cid>/stop.json       when it was stopped (its pairs take no votes after that)
    pairs/<pid[:2]>/<pair_id>.json    one served pair: its comparison, which version is on which
                                      side (seed, image id, weights digest of each), psi,
                                      created, expires
    votes/<pid[:2]>/<pair_id>.json    the vote on that pair: choice (left | right | cant_tell),
                                      winner (candidate | baseline | cant_tell), winner_version,
                                      both versions, vote_id, client_key_sha256, created

The pair record is written before the pair is answered, so the server knows which side was
which and a vote can only name a pair it served (pair ids are 128 random bits). The page gets
neither the versions nor the seeds (the images' provenance record names a blind label, see
`blind_image_id`).

Idempotency, as for feedback: vote_id = sha256("<pair_id>|<client key>")[:32], the client key
being the Idempotency-Key header or, without one, derived from the body (the choice). One vote
per pair: the vote object is named by the pair id, so a retry with the same key gets the
stored vote back (created=False) while another key -- or, without a key, another choice -- is
refused with 409: a pair is one person's judgement, and one client cannot stuff the count by
re-voting on it. A pair served to a rater (serve/identity.py) takes a vote from that rater
only (403 for anyone else), so votes cannot be cast on pairs nobody was shown, and each vote
record names its rater for the gate's per-rater breakdown.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from facegen_ray.data.comparison_records import (
    CHOICES,
    SIDES,
    comparison_info,
    comparison_record_problem,
    is_id,
    pair_record_problem,
    vote_record_problem,
)
from facegen_ray.data.feedback import CLIENT_KEY_RE, check_id, read_record
from facegen_ray.storage import Layout, Storage, join

RECORD_FORMAT = 1
CANT_TELL_WEIGHT = 0.5  # a "can't tell" is half a win
DEFAULT_MIN_VOTES = 30  # gate.min_votes when only gate.min_human_win_rate is set
BLIND_LABEL = "blind-comparison"  # the model_version in a pair image's provenance record


# ----------------------------------------------------------------------------- errors
class CompareError(Exception):
    """A comparison request that cannot be satisfied; `status` is its HTTP status."""

    status = 422


class NoComparison(CompareError):
    """No comparison is running (pairs are refused)."""

    status = 409


class ComparisonConflict(CompareError):
    """The comparison state does not allow this (one running already, stopped, already voted)."""

    status = 409


class UnknownPair(CompareError):
    """A vote names a pair id that was never served here."""

    status = 404


class NotYourPair(CompareError):
    """A vote on a pair that was served to another rater (pairs are bound to their rater)."""

    status = 403


class PairExpired(CompareError):
    """A vote came after the pair's time to live."""

    status = 410


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _iso(t: _dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def derive_client_key(choice: str) -> str:
    """Client key of a vote without Idempotency-Key: a digest of the canonical body."""
    return "body-" + hashlib.sha256(json.dumps([choice]).encode("utf-8")).hexdigest()[:32]


def vote_id(pair_id: str, client_key: str) -> str:
    """Deterministic id of one (pair, client key): sha256 -> 32 hex chars."""
    check_id(pair_id, "pair_id")
    return hashlib.sha256(f"{pair_id}|{client_key}".encode()).hexdigest()[:32]


def blind_image_id(pair_id: str, side: str) -> str:
    """The image id a pair image's provenance record carries: derived from the pair, so it says
    nothing about the model (the real image id would: GET /generate returns it per seed)."""
    return hashlib.sha256(f"compare|{pair_id}|{side}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class VoteResult:
    vote_id: str
    created: bool  # False: this (pair, client key) had voted already; `record` is that vote
    record: dict[str, Any]


# ----------------------------------------------------------------------------- the store
class ComparisonStore:
    """Comparisons, served pairs and votes under <root>/feedback/compare (see module docstring)."""

    def __init__(self, storage: Storage, root: str):
        self.storage = storage
        self.prefix = join(Layout(root).feedback(), "compare")
        self.pairs_dir = join(self.prefix, "pairs")
        self.votes_dir = join(self.prefix, "votes")
        self.comparisons_dir = join(self.prefix, "comparisons")

    # ---- paths (ids validated first)
    def active_uri(self) -> str:
        return join(self.prefix, "active.json")

    def start_uri(self, cid: str) -> str:
        return join(self.comparisons_dir, check_id(cid, "comparison_id"), "start.json")

    def stop_uri(self, cid: str) -> str:
        return join(self.comparisons_dir, check_id(cid, "comparison_id"), "stop.json")

    def pair_uri(self, pid: str) -> str:
        check_id(pid, "pair_id")
        return join(self.pairs_dir, pid[:2], f"{pid}.json")

    def vote_uri(self, pid: str) -> str:
        check_id(pid, "pair_id")
        return join(self.votes_dir, pid[:2], f"{pid}.json")

    def _read(self, uri: str, problem) -> dict[str, Any] | None:
        return read_record(self.storage, uri, problem, store="comparison-store")

    # ---- comparisons
    def get_comparison(self, cid: str) -> dict[str, Any] | None:
        """The start record plus "stopped" (the stop time or None); None when unknown."""
        rec = self._read(self.start_uri(cid), comparison_record_problem)
        if rec is None:
            return None
        stop = self._read(self.stop_uri(cid), lambda r: None if isinstance(r, dict) else "not a JSON object")
        return {**rec, "stopped": (stop or {}).get("stopped")}

    def active(self) -> dict[str, Any] | None:
        """The running comparison (get_comparison) or None."""
        ptr = self._read(self.active_uri(), lambda r: None if isinstance(r, dict) else "not a JSON object")
        cid = (ptr or {}).get("comparison_id")
        if not isinstance(cid, str):
            return None
        try:
            cmp = self.get_comparison(cid)
        except ValueError:  # a hand-edited pointer
            return None
        return cmp if cmp is not None and cmp["stopped"] is None else None

    def comparisons(self) -> list[dict[str, Any]]:
        """Every comparison (get_comparison), oldest first."""
        out = []
        for uri in self.storage.find(self.comparisons_dir):
            parts = uri.rsplit("/", 2)
            if len(parts) == 3 and parts[2] == "start.json" and is_id(parts[1]):
                cmp = self.get_comparison(parts[1])
                if cmp is not None:
                    out.append(cmp)
        return sorted(out, key=lambda c: c["started"])

    def start(self, baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
        """Start comparing two model versions; each side is {"version", "uri", "weights_sha256"}.
        ComparisonConflict when one is running already (stop it first); CompareError when the
        two are the same version. Returns the comparison (get_comparison)."""
        if baseline["version"] == candidate["version"]:
            raise CompareError(
                f"baseline and candidate are both {candidate['version']}: compare two different versions"
            )
        running = self.active()
        if running is not None:
            raise ComparisonConflict(
                f"comparison {running['comparison_id']} ({running['candidate']['version']} vs "
                f"{running['baseline']['version']}) is running: stop it first "
                "(POST /admin/compare/stop)"
            )
        cid = secrets.token_hex(16)
        rec = {
            "format": RECORD_FORMAT,
            "comparison_id": cid,
            "started": _iso(_now()),
            "baseline": dict(baseline),
            "candidate": dict(candidate),
        }
        self.storage.create_exclusive(self.start_uri(cid), _dumps(rec))
        self.storage.write_json(self.active_uri(), {"comparison_id": cid, "updated": rec["started"]})
        return {**rec, "stopped": None}

    def stop(self, comparison_id: str | None = None) -> dict[str, Any]:
        """Stop the running comparison (and check it is `comparison_id` when given).
        ComparisonConflict when none is running or another one is."""
        running = self.active()
        if running is None:
            raise ComparisonConflict("no comparison is running")
        if comparison_id is not None and comparison_id != running["comparison_id"]:
            raise ComparisonConflict(f"comparison {comparison_id} is not the running one ({running['comparison_id']})")
        cid = running["comparison_id"]
        t = _iso(_now())
        self.storage.create_exclusive(self.stop_uri(cid), _dumps({"comparison_id": cid, "stopped": t}))
        self.storage.write_json(self.active_uri(), {"comparison_id": None, "updated": t})
        return self.get_comparison(cid) or {**running, "stopped": t}

    # ---- pairs
    def record_pair(
        self,
        comparison: dict[str, Any],
        candidate_side: str,
        sides: dict[str, dict[str, Any]],
        truncation: float,
        ttl_s: float,
        rater: str | None = None,
    ) -> dict[str, Any]:
        """Store a pair about to be served. sides: {"left"|"right": {"version", "seed",
        "image_id", "weights_sha256"}}; candidate_side: where the candidate's face is; rater:
        who it is served to (only they may vote on it; None: anyone, for tools and tests)."""
        if candidate_side not in SIDES or set(sides) != set(SIDES):
            raise ValueError(f"a pair has a left and a right side, got {sorted(sides)} / {candidate_side!r}")
        pid = secrets.token_hex(16)
        created = _now()
        rec = {
            "format": RECORD_FORMAT,
            "pair_id": pid,
            "comparison_id": comparison["comparison_id"],
            "candidate": comparison["candidate"]["version"],
            "baseline": comparison["baseline"]["version"],
            "candidate_side": candidate_side,
            "left": dict(sides["left"]),
            "right": dict(sides["right"]),
            "truncation": truncation,
            "rater": rater,
            "created": _iso(created),
            "expires": _iso(created + _dt.timedelta(seconds=float(ttl_s))),
        }
        if not self.storage.create_exclusive(self.pair_uri(pid), _dumps(rec)):  # 128 random bits: never
            raise RuntimeError(f"pair id {pid} already exists")
        return rec

    def get_pair(self, pid: str) -> dict[str, Any] | None:
        return self._read(self.pair_uri(pid), pair_record_problem)

    # ---- votes
    def get_vote(self, pid: str) -> dict[str, Any] | None:
        return self._read(self.vote_uri(pid), vote_record_problem)

    def vote(
        self,
        pair_id: str,
        choice: str,
        client_key: str | None = None,
        rater: str | None = None,
        source: str | None = None,
    ) -> VoteResult:
        """Record the vote on a served pair (idempotent per (pair_id, client key); one per pair).

        ValueError for a malformed id/key; CompareError (422) for a choice not in CHOICES;
        UnknownPair (404), PairExpired (410), ComparisonConflict (409: the comparison was
        stopped, or the pair has another client's vote), NotYourPair (403: the pair was served
        to another rater than `rater`)."""
        check_id(pair_id, "pair_id")
        if choice not in CHOICES:
            raise CompareError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        if client_key is None:
            client_key = derive_client_key(choice)
        elif not CLIENT_KEY_RE.match(client_key):
            raise ValueError("Idempotency-Key must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
        vid = vote_id(pair_id, client_key)
        pair = self.get_pair(pair_id)
        if pair is None:
            raise UnknownPair(f"unknown pair_id {pair_id}: only pairs served by POST /compare/pairs take a vote")
        # before any replay: another rater's retry of the stored vote would read it back
        if pair.get("rater") is not None and pair["rater"] != rater:
            raise NotYourPair(f"pair {pair_id} was served to another rater: vote on the pairs you are shown")
        uri = self.vote_uri(pair_id)
        if self.storage.exists(uri):
            return self._replay(pair_id, vid)
        cmp = self.get_comparison(pair["comparison_id"])
        if cmp is None or cmp["stopped"] is not None:
            raise ComparisonConflict(f"the comparison of pair {pair_id} was stopped: it takes no more votes")
        now = _now()
        if now > _dt.datetime.fromisoformat(pair["expires"]):
            raise PairExpired(f"pair {pair_id} expired at {pair['expires']}: load a new pair and vote on that")
        if choice == "cant_tell":
            winner, winner_version = "cant_tell", None
        else:
            winner = "candidate" if choice == pair["candidate_side"] else "baseline"
            winner_version = pair[winner]
        rec = {
            "format": RECORD_FORMAT,
            "vote_id": vid,
            "pair_id": pair_id,
            "comparison_id": pair["comparison_id"],
            "choice": choice,
            "winner": winner,
            "winner_version": winner_version,
            "candidate": pair["candidate"],
            "baseline": pair["baseline"],
            "candidate_side": pair["candidate_side"],
            "client_key_sha256": hashlib.sha256(client_key.encode("utf-8")).hexdigest()[:16],
            "rater": rater,
            "source": source,  # the voter's keyed network (serve/source.py), for the gate's report
            "pair_created": pair["created"],
            "created": _iso(now),
        }
        if self.storage.create_exclusive(uri, _dumps(rec)):
            return VoteResult(vid, True, rec)
        return self._replay(pair_id, vid)  # another request stored its vote first

    def _replay(self, pair_id: str, vid: str) -> VoteResult:
        stored = self.get_vote(pair_id)
        if stored is not None and stored["vote_id"] == vid:
            return VoteResult(vid, False, stored)
        raise ComparisonConflict(f"pair {pair_id} already has a vote: each pair takes one; load a new pair")

    def counts(self) -> dict[str, dict[str, int]]:
        """comparison id -> {"votes", "wins", "losses", "cant_tell"} (a win: its candidate chosen)."""
        out: dict[str, dict[str, int]] = {}
        for v in self.iter_votes():
            c = out.setdefault(v["comparison_id"], {"votes": 0, "wins": 0, "losses": 0, "cant_tell": 0})
            c["votes"] += 1
            c[{"candidate": "wins", "baseline": "losses", "cant_tell": "cant_tell"}[v["winner"]]] += 1
        return out

    def iter_votes(self) -> Iterator[dict[str, Any]]:
        """Every readable vote record (order: by pair id); malformed ones skipped with a warning."""
        for uri in self.storage.find(self.votes_dir):
            name = uri.rsplit("/", 1)[-1]
            if name.endswith(".json") and is_id(name[:-5]):
                rec = self._read(uri, vote_record_problem)
                if rec is not None:
                    yield rec


__all__ = [
    "ComparisonStore",
    "CompareError",
    "NoComparison",
    "ComparisonConflict",
    "UnknownPair",
    "NotYourPair",
    "PairExpired",
    "VoteResult",
    "CHOICES",
    "SIDES",
    "CANT_TELL_WEIGHT",
    "DEFAULT_MIN_VOTES",
    "BLIND_LABEL",
    "blind_image_id",
    "comparison_info",
    "derive_client_key",
    "vote_id",
]
