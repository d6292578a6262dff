"""Feedback store: every generated image and every vote on it, append-only, local or s3://.
Written by the serve app (POST /feedback); read by data/feedback_merge.py, which turns the
approved images into a dataset version.

Layout below `Layout(root).feedback()` (two-hex-char fan-out keeps folders small):

    images/<id[:2]>/<image_id>.png     the first rendering of that image id (lossless)
    images/<id[:2]>/<image_id>.json    its record: seed, truncation, attributes, condition codes,
                                       control (mix/interpolate/edit, edited faces only),
                                       model_version, model_uri, weights_sha256, created, ...
                                       (written after the PNG: it marks a complete image)
    records/<id[:2]>/<feedback_id>.json  one feedback record per object

Every object is written once with `Storage.create_exclusive` (temp file + link locally, a
conditional PUT on S3): a crash mid-write leaves no torn record, concurrent writers of the
same id collapse into one object, and nothing is rewritten. Feedback records are never deleted;
an image no feedback record names is deleted once older than `feedback.retention_days` by
`facegen feedback expire` (data/feedback_retention.py), its record before its PNG.

Readers of opinions (summarize_feedback, approved_images, the retrain merge) list records/ and
then read the record of each image that passes; they never list images/, so a flood of
generated images does not slow them. There is no separate index: records/ holds only the
opinions, which grow with POST /feedback (rate limited per rater), not with POST /generate.

Ids are strict lowercase hex (32 chars) and are checked before any path is built, so no
request can name an object outside this prefix.

Idempotency: feedback_id = sha256("<image_id>|<rater>|<client key>")[:32] (without the
"<rater>|" part for a record with no rater). The client key is the `Idempotency-Key` header
when given (1-128 chars of [A-Za-z0-9._:-]); without it the key is derived from the canonical
body (approved, rating, comment), so an exact retry collapses while different opinions on the
same image are stored separately.

Raters: the serve app records who gave each opinion ("rater": a session or proxy identity,
serve/identity.py; "rater_since": when that identity was issued). Counting is per rater: each
rater's latest record on an image is their opinion, so approvals count once per rater and
rejections do not stack. A record without a rater (written directly, or before raters existed)
counts as the rater "key-<its client key digest>".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from facegen_ray.storage import Layout, Storage, join

ID_RE = re.compile(r"^[0-9a-f]{32}$")
CLIENT_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
RECORD_FORMAT = 1
_OBJ_RE = re.compile(r"^([0-9a-f]{32})\.(json|png)$")

log = logging.getLogger(__name__)


class UnknownImage(KeyError):
    """Feedback names an image id the store has no record of."""


def check_id(value: str, what: str = "id") -> str:
    """Return value if it is 32 lowercase hex chars, else raise ValueError (never build a path from it)."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: expected 32 lowercase hex characters")
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _iso(t: float) -> str:
    """Unix seconds as a record's "created" (UTC, milliseconds), like _now()."""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="milliseconds")


def derive_client_key(approved: bool, rating: int | None, comment: str | None) -> str:
    """Client key for a request without Idempotency-Key: a digest of the canonical body."""
    body = json.dumps([bool(approved), rating, comment or ""], separators=(",", ":"), ensure_ascii=False)
    return "body-" + hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def feedback_id(image_id: str, client_key: str) -> str:
    """Deterministic id of one (image, client key) pair: sha256 -> 32 hex chars."""
    check_id(image_id, "image_id")
    return hashlib.sha256(f"{image_id}|{client_key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    created: bool  # False: an identical (image_id, client key) record already existed


class FeedbackStore:
    """Append-only image + feedback records under Layout(root).feedback(). `clock` (unix
    seconds) stamps the records' "created"; default the wall clock (simulations pass theirs)."""

    def __init__(self, storage: Storage, root: str, clock: Callable[[], float] | None = None):
        self.storage = storage
        self.clock = clock
        self.prefix = Layout(root).feedback()
        self.images_dir = join(self.prefix, "images")
        self.records_dir = join(self.prefix, "records")

    def _created(self) -> str:
        return _now() if self.clock is None else _iso(self.clock())

    # ---- paths (ids validated first)
    def image_uri(self, image_id: str) -> str:
        check_id(image_id, "image_id")
        return join(self.images_dir, image_id[:2], f"{image_id}.png")

    def image_record_uri(self, image_id: str) -> str:
        check_id(image_id, "image_id")
        return join(self.images_dir, image_id[:2], f"{image_id}.json")

    def feedback_uri(self, fid: str) -> str:
        check_id(fid, "feedback_id")
        return join(self.records_dir, fid[:2], f"{fid}.json")

    # ---- images
    def record_image(self, image_id: str, png: bytes, meta: dict[str, Any]) -> bytes:
        """Store an image and its record unless that id is already stored; return the PNG bytes
        that are stored for it (the earlier rendering on a repeat), so every response for an
        image id carries the same pixels."""
        img_uri = self.image_uri(image_id)
        stored = png
        if not self.storage.create_exclusive(img_uri, png):
            try:
                stored = self.storage.read_bytes(img_uri)
            except FileNotFoundError:  # expired in between (data/feedback_retention.py): store this one
                self.storage.create_exclusive(img_uri, png)
        rec_uri = self.image_record_uri(image_id)
        if not self.storage.exists(rec_uri):
            record = {
                "format": RECORD_FORMAT,
                **meta,
                "image_id": image_id,
                "image": f"images/{image_id[:2]}/{image_id}.png",
                "created": self._created(),
            }
            self.storage.create_exclusive(rec_uri, _dumps(record))
        return stored

    def has_image(self, image_id: str) -> bool:
        return self.storage.exists(self.image_record_uri(image_id))

    def get_image_record(self, image_id: str) -> dict[str, Any] | None:
        """The image's record; None when there is none, or when the stored one is unreadable
        (logged: such an image is treated as never generated)."""
        return read_record(self.storage, self.image_record_uri(image_id), image_record_problem)

    def read_image(self, image_id: str) -> bytes:
        return self.storage.read_bytes(self.image_uri(image_id))

    # ---- feedback
    def add_feedback(
        self,
        image_id: str,
        approved: bool,
        rating: int | None = None,
        comment: str | None = None,
        client_key: str | None = None,
        rater: str | None = None,
        rater_since: float | None = None,
        source: str | None = None,
    ) -> FeedbackResult:
        """Append one feedback record (idempotent per (image_id, rater, client key)).

        Raises ValueError for a malformed id/key and UnknownImage when the image was never
        generated here."""
        check_id(image_id, "image_id")
        if client_key is None:
            client_key = derive_client_key(approved, rating, comment)
        elif not CLIENT_KEY_RE.match(client_key):
            raise ValueError("Idempotency-Key must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
        fid = feedback_id(image_id, f"{rater}|{client_key}" if rater else client_key)
        uri = self.feedback_uri(fid)
        if self.storage.exists(uri):
            return FeedbackResult(fid, created=False)
        image = self.get_image_record(image_id)
        if image is None:
            raise UnknownImage(image_id)
        record = {
            "format": RECORD_FORMAT,
            "feedback_id": fid,
            "image_id": image_id,
            "approved": bool(approved),
            "rating": rating,
            "comment": comment,
            "client_key_sha256": hashlib.sha256(client_key.encode("utf-8")).hexdigest()[:16],
            "rater": rater,
            "rater_since": rater_since,
            "source": source,  # keyed hash of the rater's network (serve/source.py); None: its own rater
            "created": self._created(),
            "model_version": image.get("model_version"),
            "seed": image.get("seed"),
            "truncation": image.get("truncation"),
            "attributes": image.get("attributes"),
            "condition": image.get("condition"),
            "control": image.get("control"),  # mix / interpolate / edit of the face, None for a plain one
        }
        created = self.storage.create_exclusive(uri, _dumps(record))
        return FeedbackResult(fid, created=created)

    def get_feedback(self, fid: str) -> dict[str, Any] | None:
        """The feedback record; None when there is none or it is unreadable (logged)."""
        return read_record(self.storage, self.feedback_uri(fid), feedback_record_problem)


def _dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _complete_objects(storage: Storage, folder: str, ext: str) -> Iterator[str]:
    """URIs of finished objects below folder (temp files of in-flight writes are skipped)."""
    for uri in storage.find(folder):
        m = _OBJ_RE.match(uri.rsplit("/", 1)[-1])
        if m and m.group(2) == ext:
            yield uri


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None


def image_record_problem(rec: Any) -> str | None:
    """Why `rec` is not a usable image record (None when it is)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not _is_id(rec.get("image_id")):
        return "no valid image_id"
    return None


def feedback_record_problem(rec: Any) -> str | None:
    """Why `rec` is not a usable feedback record (None when it is): what summarize_feedback and
    the retrain merge rely on is checked, so one bad object never stops a read."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not _is_id(rec.get("feedback_id")) or not _is_id(rec.get("image_id")):
        return "no valid feedback_id/image_id"
    if not isinstance(rec.get("approved"), bool):
        return "approved is not true/false"
    rating = rec.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
        return "rating is not an integer 1-5"
    return None


def read_record(storage: Storage, uri: str, problem, store: str = "feedback-store") -> dict[str, Any] | None:
    """A stored JSON record, or None (logged) when it is missing, truncated, not UTF-8/JSON or
    fails `problem`. The store only writes whole objects, so a bad one came from elsewhere (a
    hand edit, a foreign writer, disk damage); skipping it keeps every other record readable.
    `store` names the store in the warning (the comparison store reads its records here too)."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        log.warning("skipping unreadable %s record %s: %s", store, uri, e)
        return None
    why = problem(rec)
    if why is not None:
        log.warning("skipping malformed %s record %s: %s", store, uri, why)
        return None
    return rec


def iter_feedback(storage: Storage, root: str) -> Iterator[dict[str, Any]]:
    """Every readable feedback record under <root>/feedback (order: by feedback id); unreadable
    or malformed objects are skipped with a warning."""
    store = FeedbackStore(storage, root)
    for uri in _complete_objects(storage, store.records_dir, "json"):
        rec = read_record(storage, uri, feedback_record_problem)
        if rec is not None:
            yield rec


def iter_images(storage: Storage, root: str) -> Iterator[dict[str, Any]]:
    """Every readable generated-image record under <root>/feedback (order: by image id);
    unreadable or malformed objects are skipped with a warning."""
    store = FeedbackStore(storage, root)
    for uri in _complete_objects(storage, store.images_dir, "json"):
        rec = read_record(storage, uri, image_record_problem)
        if rec is not None:
            yield rec


def rater_of(rec: dict[str, Any]) -> str:
    """Who gave a feedback record: its rater, else "key-<client key digest>" (see the module doc)."""
    rater = rec.get("rater")
    if isinstance(rater, str) and rater:
        return rater
    return "key-" + str(rec.get("client_key_sha256") or rec["feedback_id"])


def source_of(rec: dict[str, Any]) -> str:
    """Where a record came from: its "source" (serve/source.py), else its rater (older records)."""
    src = rec.get("source")
    return "src-" + src if isinstance(src, str) and src else rater_of(rec)


def latest_opinions(records) -> dict[tuple[str, str], dict[str, Any]]:
    """(image_id, rater) -> that rater's latest record on the image (by created, then id)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        k = (rec["image_id"], rater_of(rec))
        cur = out.get(k)
        if cur is None or (str(rec.get("created")), rec["feedback_id"]) > (str(cur.get("created")), cur["feedback_id"]):
            out[k] = rec
    return out


def summarize_records(records) -> dict[str, dict[str, Any]]:
    """image_id -> {"approvals", "rejections", "ratings": [..], "feedback_ids": [..], "raters":
    {rater: approved}, "sources": [approving sources]} from each rater's latest opinion (one
    vote per rater per image; approvals are also grouped by source, serve/source.py)."""
    out: dict[str, dict[str, Any]] = {}
    for (iid, rater), rec in sorted(latest_opinions(records).items()):
        s = out.setdefault(iid, {"approvals": 0, "rejections": 0, "ratings": [], "feedback_ids": [], "raters": {}})
        s.setdefault("sources", [])
        s["approvals" if rec["approved"] else "rejections"] += 1
        if rec["approved"] and source_of(rec) not in s["sources"]:
            s["sources"].append(source_of(rec))
        s["raters"][rater] = bool(rec["approved"])
        if rec.get("rating") is not None:
            s["ratings"].append(int(rec["rating"]))
        s["feedback_ids"].append(rec["feedback_id"])
    return out


def summarize_feedback(storage: Storage, root: str) -> dict[str, dict[str, Any]]:
    """summarize_records over every feedback record under <root>/feedback."""
    return summarize_records(iter_feedback(storage, root))


def approval_verdict(summary: dict[str, Any], min_approvals: int = 1) -> str | None:
    """The approval rule for one image's summary (summarize_feedback): None when approved (at
    least `min_approvals` approving distinct sources and more approvals than rejections), else why not:
    "rejected" (a tie or a rejection majority) or "too_few_approvals"."""
    if summary["approvals"] <= summary["rejections"]:
        return "rejected"
    approving = len(summary["sources"]) if "sources" in summary else summary["approvals"]
    if approving < min_approvals:
        return "too_few_approvals"
    return None


def approved_images(storage: Storage, root: str, min_approvals: int = 1) -> list[dict[str, Any]]:
    """Images the users approved, for retraining: at least `min_approvals` approvals and more
    approvals than rejections. Each entry is the image record plus "image_uri" (the stored
    PNG), "approvals", "rejections" and "mean_rating" (None without ratings); sorted by id."""
    store = FeedbackStore(storage, root)
    out = []
    for iid, s in sorted(summarize_feedback(storage, root).items()):
        if approval_verdict(s, min_approvals) is not None:
            continue
        rec = store.get_image_record(iid)
        if rec is None:  # feedback always refers to a recorded image; skip defensively
            continue
        ratings = s["ratings"]
        out.append(
            {
                **rec,
                "image_uri": store.image_uri(iid),
                "approvals": s["approvals"],
                "rejections": s["rejections"],
                "mean_rating": (sum(ratings) / len(ratings)) if ratings else None,
            }
        )
    return out
