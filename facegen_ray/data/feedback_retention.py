"""Retention of the feedback store: `facegen feedback expire` deletes what nobody gave an opinion
on once it is older than `feedback.retention_days`, so a flood of POST /generate or POST
/compare/pairs does not grow storage without bound. Local roots and s3:// alike.

Deleted, when older than the retention:
    images/<id[:2]>/<id>.json, .png   a generated image no feedback record names and no voted
                                      pair shows (a pair record names the image id of each side)
    images/<id[:2]>/<id>.png alone    an orphan: its record was never written or already deleted
    compare/pairs/<pid[:2]>/<pid>.json  a pair with no vote, whose expiry is also older than the
                                      retention (so no vote can still arrive for it)
Never deleted: feedback records, votes, comparisons, and the images and pairs they refer to
(the evidence of every merge and gate verdict). Their growth is bounded by the rate limits on
POST /feedback and POST /compare, not by this.

Age: an object is old when its record's "created" is before the cutoff (now - retention) AND
its modification time (from the listing: no request per object) is too; a record that cannot be
read or has no valid "created" is aged by modification time alone, and an object with neither is
kept. So nothing newer than the cutoff by either clock is deleted, and only objects that look
old by their modification time are read at all.

Reads: every feedback record (records/, for the image ids they name), the names of the vote
objects (votes/: named by pair id), the pair record of each voted pair, and the image and pair
records that look old. Deletes go in batches of BATCH objects (bulk requests on S3).

Concurrency: the server may run while this does. An image's record is deleted before its PNG:
an image without a record reads as never generated (POST /feedback on it gets 404), and a crash
between the two leaves an orphan PNG that the next run deletes. Feedback that arrives on an old
image after the scan of records/ and before its record is deleted names a deleted image; the
retrain merge counts it as missing_image and goes on. A POST /generate that renders an image id
again while it is being deleted gets an answer either way (FeedbackStore.record_image); at worst
it leaves the record without the PNG, which the merge also counts as missing_image.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from facegen_ray.data.comparison import ComparisonStore
from facegen_ray.data.comparison_records import SIDES, is_id
from facegen_ray.data.feedback import FeedbackStore
from facegen_ray.storage import Layout, Storage

log = logging.getLogger(__name__)

BATCH = 1000  # objects per bulk delete (S3's DeleteObjects takes at most 1000 keys)
_NAME_RE = re.compile(r"^([0-9a-f]{32})\.(json|png)$")

Stat = tuple[int, _dt.datetime | None]  # (size, modification time): Storage.find_stat


@dataclass
class ExpiryReport:
    """What one run expired and kept, by kind and reason (dry run: what it would expire)."""

    retention_days: float
    now: _dt.datetime
    cutoff: _dt.datetime
    dry_run: bool
    images: dict[str, int] = field(default_factory=dict)  # expired, kept_feedback, kept_voted_pair, ...
    orphan_pngs: dict[str, int] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)
    bytes_freed: dict[str, int] = field(default_factory=dict)  # kind -> bytes of what was expired
    read: dict[str, int] = field(default_factory=dict)  # records read, by kind
    aged_by_mtime: int = 0  # old objects whose record was unreadable: aged by modification time

    def count(self, kind: str, reason: str, size: int = 0) -> None:
        counts = getattr(self, kind)
        counts[reason] = counts.get(reason, 0) + 1
        if reason == "expired":
            self.bytes_freed[kind] = self.bytes_freed.get(kind, 0) + size

    def to_dict(self) -> dict[str, Any]:
        return {
            "retention_days": self.retention_days,
            "now": self.now.isoformat(timespec="seconds"),
            "cutoff": self.cutoff.isoformat(timespec="seconds"),
            "dry_run": self.dry_run,
            "images": dict(sorted(self.images.items())),
            "orphan_pngs": dict(sorted(self.orphan_pngs.items())),
            "pairs": dict(sorted(self.pairs.items())),
            "bytes_freed": sum(self.bytes_freed.values()),
            "bytes_freed_by_kind": dict(sorted(self.bytes_freed.items())),
            "read": dict(sorted(self.read.items())),
            "aged_by_mtime": self.aged_by_mtime,
        }

    def summary(self) -> str:
        """One human line, e.g. "expired 3 image(s), 1 orphan PNG(s), 2 pair(s), 4.1 kB; kept ..."."""
        verb = "would expire" if self.dry_run else "expired"
        kept = {
            f"{kind}:{reason[5:]}": n
            for kind in ("images", "orphan_pngs", "pairs")
            for reason, n in sorted(getattr(self, kind).items())
            if reason.startswith("kept_")
        }
        return (
            f"{verb} {self.images.get('expired', 0)} image(s), {self.orphan_pngs.get('expired', 0)} orphan PNG(s), "
            f"{self.pairs.get('expired', 0)} pair(s), {_size(sum(self.bytes_freed.values()))} (cutoff "
            f"{self.cutoff.isoformat(timespec='seconds')}); kept: "
            + (", ".join(f"{k}={v}" for k, v in kept.items()) or "nothing")
        )


def _size(n: int) -> str:
    """Bytes for a person: 950 B, 4.1 kB, 12.0 MB, ..."""
    if n < 1000:
        return f"{n} B"
    x, unit = n / 1000, "kB"
    for bigger in ("MB", "GB"):
        if x < 1000:
            break
        x, unit = x / 1000, bigger
    return f"{x:.1f} {unit}"


def _time(value: Any) -> _dt.datetime | None:
    """An ISO time from a record (naive = UTC), None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def _read_json(storage: Storage, uri: str) -> dict[str, Any] | None:
    """A stored JSON object, None when missing or unreadable (no warning: callers count them)."""
    try:
        rec = json.loads(storage.read_bytes(uri).decode("utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def _recent(stats: list[Stat], cutoff: _dt.datetime) -> bool:
    return any(t is not None and t >= cutoff for _, t in stats)


def _age(created: _dt.datetime | None, stats: list[Stat], cutoff: _dt.datetime) -> str:
    """Whether an object none of whose files is _recent is "old", "recent" or "undated", given
    its record time `created` (None: none; see the module docstring)."""
    if created is not None and created >= cutoff:
        return "recent"
    if created is None and all(t is None for _, t in stats):
        return "undated"
    return "old"


# ----------------------------------------------------------------------------- what is referenced
def images_with_feedback(storage: Storage, root: str, report: ExpiryReport | None = None) -> set[str]:
    """Image ids named by feedback records: every object under records/, a malformed record
    too when it still names a valid image_id (deleting errs on the side of keeping)."""
    store = FeedbackStore(storage, root)
    out: set[str] = set()
    n = 0
    for uri in storage.find(store.records_dir):
        if not uri.endswith(".json") or not is_id(uri.rsplit("/", 1)[-1][:-5]):
            continue
        n += 1
        rec = _read_json(storage, uri)
        if rec is not None and is_id(rec.get("image_id")):
            out.add(rec["image_id"])
    if report is not None:
        report.read["feedback_records"] = n
    return out


def voted_pairs(store: ComparisonStore) -> set[str]:
    """Pair ids that have a vote object (the vote is named by its pair id: nothing is read)."""
    names = (uri.rsplit("/", 1)[-1] for uri in store.storage.find(store.votes_dir))
    return {name[:-5] for name in names if name.endswith(".json") and is_id(name[:-5])}


def images_of_pairs(store: ComparisonStore, pair_ids: set[str], report: ExpiryReport | None = None) -> set[str]:
    """Image ids the sides of these pairs name (their pair records; unreadable ones name none)."""
    out: set[str] = set()
    for pid in sorted(pair_ids):
        rec = _read_json(store.storage, store.pair_uri(pid)) or {}
        for side in SIDES:
            iid = rec[side].get("image_id") if isinstance(rec.get(side), dict) else None
            if is_id(iid):
                out.add(iid)
    if report is not None:
        report.read["voted_pair_records"] = len(pair_ids)
    return out


# ----------------------------------------------------------------------------- expiry
def expire_feedback(
    storage: Storage,
    root: str,
    retention_days: float,
    now: _dt.datetime | None = None,
    dry_run: bool = False,
) -> ExpiryReport:
    """Delete the images and pairs below <root>/feedback that the retention lets go (module
    docstring); dry_run: delete nothing, report what would go. `now` (aware; default the
    current time) fixes the cutoff, now - retention_days. ValueError for a retention <= 0."""
    if not retention_days or retention_days <= 0:
        raise ValueError(f"retention_days must be more than 0, got {retention_days!r} (None keeps everything)")
    now = now or _dt.datetime.now(_dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cutoff = now - _dt.timedelta(days=float(retention_days))
    report = ExpiryReport(float(retention_days), now, cutoff, dry_run)
    fstore, cstore = FeedbackStore(storage, root), ComparisonStore(storage, root)

    with_feedback = images_with_feedback(storage, root, report)
    voted = voted_pairs(cstore)
    report.read["votes"] = len(voted)
    in_voted_pairs = images_of_pairs(cstore, voted, report)

    pairs = _expired_pairs(cstore, voted, cutoff, report)
    images = _expired_images(fstore, with_feedback, in_voted_pairs, cutoff, report)
    if not dry_run:
        for i in range(0, len(pairs), BATCH):
            storage.rm_files(pairs[i : i + BATCH])
        for i in range(0, len(images), BATCH):
            batch = images[i : i + BATCH]
            storage.rm_files([j for j, _ in batch if j is not None])  # records first: "never generated"
            storage.rm_files([p for _, p in batch if p is not None])
    log.debug("feedback retention under %s: %s", Layout(root).feedback(), report.summary())
    return report


def _expired_pairs(store: ComparisonStore, voted: set[str], cutoff: _dt.datetime, report: ExpiryReport) -> list[str]:
    out: list[str] = []
    read = 0
    for uri, stat in store.storage.find_stat(store.pairs_dir).items():
        name = uri.rsplit("/", 1)[-1]
        if not name.endswith(".json") or not is_id(name[:-5]):
            continue  # a temp file of an in-flight write, or not the store's
        if name[:-5] in voted:
            report.count("pairs", "kept_voted")
            continue
        if _recent([stat], cutoff):
            report.count("pairs", "kept_recent")
            continue
        read += 1
        rec = _read_json(store.storage, uri)
        created = _time(rec.get("created")) if rec else None
        expires = _time(rec.get("expires")) if rec else None
        age = _age(created, [stat], cutoff)
        report.aged_by_mtime += created is None and age == "old"
        if age == "old" and expires is not None and expires >= cutoff:
            age = "open"  # its expiry is within the retention: a vote may still be on its way
        if age != "old":
            report.count("pairs", f"kept_{age}")
            continue
        report.count("pairs", "expired", stat[0])
        out.append(uri)
    report.read["pair_records"] = read
    return out


def _expired_images(
    store: FeedbackStore, with_feedback: set[str], in_voted_pairs: set[str], cutoff: _dt.datetime, report: ExpiryReport
) -> list[tuple[str | None, str | None]]:
    """(record URI or None, PNG URI or None) of each image to delete, counting all of them."""
    objects: dict[str, dict[str, tuple[str, Stat]]] = {}
    for uri, stat in store.storage.find_stat(store.images_dir).items():
        m = _NAME_RE.match(uri.rsplit("/", 1)[-1])
        if m:  # temp files of in-flight writes do not match
            objects.setdefault(m.group(1), {})[m.group(2)] = (uri, stat)
    out: list[tuple[str | None, str | None]] = []
    read = 0
    for iid, files in sorted(objects.items()):
        kind = "images" if "json" in files else "orphan_pngs"
        stats = [s for _, s in files.values()]
        if iid in with_feedback:
            report.count(kind, "kept_feedback")
            continue
        if iid in in_voted_pairs:
            report.count(kind, "kept_voted_pair")
            continue
        if _recent(stats, cutoff):
            report.count(kind, "kept_recent")
            continue
        created = None
        if kind == "images":
            read += 1
            rec = _read_json(store.storage, files["json"][0])
            created = _time(rec.get("created")) if rec else None
        age = _age(created, stats, cutoff)
        report.aged_by_mtime += kind == "images" and created is None and age == "old"
        if age != "old":
            report.count(kind, f"kept_{age}")
            continue
        report.count(kind, "expired", sum(size for size, _ in stats))
        out.append((files["json"][0] if "json" in files else None, files["png"][0] if "png" in files else None))
    report.read["image_records"] = read
    return out


__all__ = ["BATCH", "ExpiryReport", "expire_feedback", "images_with_feedback", "images_of_pairs", "voted_pairs"]
