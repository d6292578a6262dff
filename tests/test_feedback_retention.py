"""Retention of the feedback store (data/feedback_retention.py, `facegen feedback expire`): what
expires, what is kept, how age is decided, the dry run, the command's exit codes, S3; and that
the retrain merge's selection and the gate's vote tally read the opinions only, so a flood of
images or unvoted pairs does not change what they read. No Ray.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from facegen_ray.cli import main as cli_main
from facegen_ray.config import ConfigError, FacegenConfig, load_config
from facegen_ray.data import comparison as cmp
from facegen_ray.data import feedback as fbmod
from facegen_ray.data.feedback import FeedbackStore
from facegen_ray.data.feedback_merge import select_feedback
from facegen_ray.data.feedback_retention import expire_feedback
from facegen_ray.lifecycle.human_votes import tally_votes
from facegen_ray.storage import Storage

DAYS = 30
# the run's "now": far enough ahead that every file written by the test is older than the cutoff
# by its modification time, so the records' "created" (set through `stamp`) decides
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(days=100)
OLD = NOW - dt.timedelta(days=DAYS + 10)
RECENT = NOW - dt.timedelta(days=1)


@pytest.fixture
def stamp(monkeypatch):
    """Records stamped with a chosen time: stamp["t"] = datetime (images, feedback, pairs, votes)."""
    t = {"t": OLD}
    monkeypatch.setattr(fbmod, "_now", lambda: t["t"].isoformat(timespec="milliseconds"))
    monkeypatch.setattr(cmp, "_now", lambda: t["t"])
    return t


def _image(store: FeedbackStore, n: int) -> str:
    iid = f"{n:032x}"
    store.record_image(iid, b"\x89PNG-" + bytes([n % 256]) * 100, {"seed": n, "model_version": "v1"})
    return iid


def _comparison(root: str, storage: Storage | None = None) -> tuple[cmp.ComparisonStore, dict]:
    store = cmp.ComparisonStore(storage or Storage(), root)
    c = store.start(
        {"version": "v1", "uri": "u1", "weights_sha256": "a"}, {"version": "v2", "uri": "u2", "weights_sha256": "b"}
    )
    return store, c


def _pair(store: cmp.ComparisonStore, c: dict, left_image: str = "0" * 32, ttl_s: float = 600) -> str:
    side = {"version": "v1", "seed": 1, "image_id": left_image, "weights_sha256": "a"}
    right = {**side, "version": "v2", "image_id": "f" * 32}
    return store.record_pair(c, "left", {"left": side, "right": right}, 0.7, ttl_s)["pair_id"]


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def _set_mtime(path: str, when: dt.datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


# ----------------------------------------------------------------------------- images
def test_images_expire_unless_named_by_feedback_or_a_voted_pair_or_recent(tmp_path, stamp):
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    plain, rated, shown = _image(store, 1), _image(store, 2), _image(store, 3)
    rejected = _image(store, 4)
    store.add_feedback(rated, True, rater="s-a")
    store.add_feedback(rejected, False, rater="s-b")  # any opinion keeps it, a rejection too
    cstore, c = _comparison(root)
    cstore.vote(_pair(cstore, c, left_image=shown), "left", "k1")
    stamp["t"] = RECENT
    fresh = _image(store, 5)
    size = os.path.getsize(store.image_uri(plain)) + os.path.getsize(store.image_record_uri(plain))
    before = _files(root)

    report = expire_feedback(Storage(), root, DAYS, now=NOW)

    gone = {f"feedback/images/{plain[:2]}/{plain}.png", f"feedback/images/{plain[:2]}/{plain}.json"}
    assert before - _files(root) == gone and _files(root) <= before
    for iid in (rated, shown, rejected, fresh):
        assert store.has_image(iid) and store.read_image(iid)
    assert report.images == {"expired": 1, "kept_feedback": 2, "kept_voted_pair": 1, "kept_recent": 1}
    assert report.to_dict()["bytes_freed"] == size
    # feedback on the expired image: it was never generated, as far as the store knows
    with pytest.raises(fbmod.UnknownImage):
        store.add_feedback(plain, True, rater="s-c")
    # a second run finds nothing more to do
    assert expire_feedback(Storage(), root, DAYS, now=NOW).images.get("expired", 0) == 0


def test_orphan_pngs_expire_by_modification_time(tmp_path, stamp):
    """A PNG without its record (a crash between the two writes, or between the two deletes) is
    removed once its file is older than the cutoff; a newer one may be a write in flight."""
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    old_orphan, new_orphan = f"{7:032x}", f"{8:032x}"
    for iid in (old_orphan, new_orphan):
        Storage().create_exclusive(store.image_uri(iid), b"png")
    _set_mtime(store.image_uri(new_orphan), RECENT)
    report = expire_feedback(Storage(), root, DAYS, now=NOW)
    assert not os.path.exists(store.image_uri(old_orphan)) and os.path.exists(store.image_uri(new_orphan))
    assert report.orphan_pngs == {"expired": 1, "kept_recent": 1} and report.images == {}


def test_age_comes_from_the_record_and_the_modification_time(tmp_path, stamp):
    """Old = the record's "created" and the files' modification times are all before the cutoff;
    an unreadable record is aged by modification time alone."""
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    garbled_old, garbled_new, touched, undated = (_image(store, n) for n in (11, 12, 13, 14))
    for iid in (garbled_old, garbled_new):
        with open(store.image_record_uri(iid), "wb") as f:
            f.write(b"{not json")
    _set_mtime(store.image_record_uri(garbled_new), RECENT)
    _set_mtime(store.image_uri(touched), RECENT)  # "created" is old, but the PNG is newer: kept
    rec = json.loads(open(store.image_record_uri(undated), "rb").read())
    with open(store.image_record_uri(undated), "w") as f:
        json.dump({**rec, "created": "yesterday"}, f)  # no valid "created": the mtime decides (old)
    report = expire_feedback(Storage(), root, DAYS, now=NOW)
    assert not os.path.exists(store.image_record_uri(garbled_old)) and not os.path.exists(store.image_uri(undated))
    assert os.path.exists(store.image_uri(garbled_new)) and store.has_image(touched)
    assert report.images == {"expired": 2, "kept_recent": 2} and report.aged_by_mtime == 2
    assert report.read["image_records"] == 2  # the two newer by their listing are not read at all


# ----------------------------------------------------------------------------- pairs
def test_unvoted_pairs_expire_votes_and_voted_pairs_stay(tmp_path, stamp):
    root = str(tmp_path)
    cstore, c = _comparison(root)
    unvoted, voted = _pair(cstore, c), _pair(cstore, c)
    cstore.vote(voted, "right", "k1")
    lingering = _pair(cstore, c, ttl_s=(DAYS + 5) * 86400)  # its expiry is within the retention
    touched = _pair(cstore, c)
    _set_mtime(cstore.pair_uri(touched), RECENT)  # old by its record, newer by its file: kept
    stamp["t"] = RECENT
    fresh = _pair(cstore, c)
    FeedbackStore(Storage(), root).add_feedback(_image(FeedbackStore(Storage(), root), 1), True, rater="s-a")
    keep = {f for f in _files(root) if "/votes/" in f or "/records/" in f or "/comparisons/" in f}

    report = expire_feedback(Storage(), root, DAYS, now=NOW)

    assert cstore.get_pair(unvoted) is None
    assert all(cstore.get_pair(p) is not None for p in (voted, lingering, touched, fresh))
    assert cstore.get_vote(voted)["winner"] == "baseline" and keep <= _files(root)
    assert report.pairs == {"expired": 1, "kept_voted": 1, "kept_open": 1, "kept_recent": 2}
    assert report.read["votes"] == 1 and report.to_dict()["bytes_freed_by_kind"]["pairs"] > 0
    assert tally_votes(Storage(), root, "v2", "v1")["votes"] == 1


def test_records_are_deleted_before_their_pngs(tmp_path, stamp, monkeypatch):
    """A record marks an image complete: it goes first, so a crash between the deletes leaves an
    orphan PNG (expired by the next run), never a record whose PNG is gone. Batches keep it."""
    from facegen_ray.data import feedback_retention as ret

    monkeypatch.setattr(ret, "BATCH", 2)
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    ids = [_image(store, n) for n in range(5)]
    calls: list[list[str]] = []

    class Recording(Storage):
        def rm_files(self, uris: list[str]) -> None:
            calls.append(list(uris))
            super().rm_files(uris)

    assert expire_feedback(Recording(), root, DAYS, now=NOW).images == {"expired": 5}
    order = [u for call in calls for u in call]
    assert sorted(order) == sorted(u for i in ids for u in (store.image_record_uri(i), store.image_uri(i)))
    for i in ids:
        assert order.index(store.image_record_uri(i)) < order.index(store.image_uri(i))
    assert max(len(c) for c in calls) <= 2


def test_dry_run_deletes_nothing_and_reports_the_same(tmp_path, stamp):
    root = str(tmp_path)
    store = FeedbackStore(Storage(), root)
    _image(store, 1)
    cstore, c = _comparison(root)
    _pair(cstore, c)
    Storage().create_exclusive(store.image_uri(f"{9:032x}"), b"orphan")
    before = _files(root)
    dry = expire_feedback(Storage(), root, DAYS, now=NOW, dry_run=True)
    assert _files(root) == before and dry.dry_run and dry.summary().startswith("would expire 1 image(s)")
    real = expire_feedback(Storage(), root, DAYS, now=NOW)
    assert {k: v for k, v in dry.to_dict().items() if k != "dry_run"} == {
        k: v for k, v in real.to_dict().items() if k != "dry_run"
    }
    assert len(before - _files(root)) == 4  # image + record, orphan, pair


def test_expire_refuses_a_retention_that_is_not_positive(tmp_path):
    for days in (0, -1, None):
        with pytest.raises(ValueError, match="more than 0"):
            expire_feedback(Storage(), str(tmp_path), days, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        expire_feedback(Storage(), str(tmp_path), DAYS, now=NOW.replace(tzinfo=None))


def test_a_png_expired_mid_request_is_stored_again(tmp_path):
    """record_image must answer when retention deletes the PNG between its two steps."""

    class Vanishing(Storage):
        def read_bytes(self, uri: str) -> bytes:
            if uri.endswith(".png"):
                self.rm(uri)  # the expiry ran between create_exclusive and this read
            return super().read_bytes(uri)

    store = FeedbackStore(Vanishing(), str(tmp_path))
    iid = "a" * 32
    Storage().create_exclusive(store.image_uri(iid), b"earlier rendering")
    assert store.record_image(iid, b"this rendering", {"seed": 1}) == b"this rendering"
    assert store.has_image(iid) and Storage().read_bytes(store.image_uri(iid)) == b"this rendering"


# ----------------------------------------------------------------------------- config and command
def test_retention_config_default_null_and_refusals():
    assert FacegenConfig().feedback.retention_days == 30
    assert load_config(overrides=["feedback.retention_days=null"]).feedback.retention_days is None
    assert load_config(overrides=["feedback.retention_days=0.5"]).feedback.retention_days == 0.5
    for bad, why in [("0", "set it to null"), ("-3", "more than 0"), (".inf", "more than 0"), ("x", "number of days")]:
        with pytest.raises(ConfigError, match=why) as e:
            load_config(overrides=[f"feedback.retention_days={bad}"])
        assert "feedback.retention_days" in str(e.value)


def test_expire_command_exit_codes_and_output(tmp_path, capsys, stamp):
    root = str(tmp_path / "root")
    store = FeedbackStore(Storage(), root)
    stamp["t"] = dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS + 10)
    old, rated = _image(store, 1), _image(store, 2)
    store.add_feedback(rated, True, rater="s-a")
    for uri in (store.image_uri(old), store.image_record_uri(old)):
        _set_mtime(uri, stamp["t"])
    before = _files(root)
    for bad in (["--days", "0"], ["--days", "-1"], ["--set", "feedback.retention_days=-1"]):
        assert cli_main(["feedback", "expire", "--root", root, *bad]) == 2, bad
        assert "feedback.retention_days" in capsys.readouterr().err
    assert cli_main(["feedback", "expire", "--root", root, "--set", "feedback.retention_days=null"]) == 0
    assert "retention is off" in capsys.readouterr().out and _files(root) == before
    assert cli_main(["feedback", "expire", "--root", root, "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "would expire 1 image(s)" in out[0] and json.loads(out[-1])["dry_run"] is True
    assert _files(root) == before
    assert cli_main(["feedback", "expire", "--root", root]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == {"expired": 1, "kept_feedback": 1} and result["retention_days"] == DAYS
    assert not store.has_image(old) and store.has_image(rated)


# ----------------------------------------------------------------------------- S3
def test_expiry_on_s3(s3_storage, s3_root, stamp):
    """The same rules on S3: ages from the records and from the listing's LastModified (the
    orphan has no record: only LastModified can make it old), deletes in bulk."""
    store = FeedbackStore(s3_storage, s3_root)
    plain, rated = _image(store, 1), _image(store, 2)
    store.add_feedback(rated, False, rater="s-a")
    orphan = f"{3:032x}"
    s3_storage.create_exclusive(store.image_uri(orphan), b"png")
    cstore, c = _comparison(s3_root, s3_storage)
    unvoted, voted = _pair(cstore, c), _pair(cstore, c)
    cstore.vote(voted, "left", "k1")
    stamp["t"] = RECENT
    fresh = _image(store, 4)

    report = expire_feedback(s3_storage, s3_root, DAYS, now=NOW)

    assert not s3_storage.exists(store.image_uri(plain)) and not store.has_image(plain)
    assert not s3_storage.exists(store.image_uri(orphan)) and cstore.get_pair(unvoted) is None
    assert store.has_image(rated) and store.has_image(fresh) and cstore.get_pair(voted) is not None
    assert report.images == {"expired": 1, "kept_feedback": 1, "kept_recent": 1}
    assert report.orphan_pngs == {"expired": 1} and report.pairs == {"expired": 1, "kept_voted": 1}
    assert cstore.get_vote(voted) is not None and len(list(fbmod.iter_feedback(s3_storage, s3_root))) == 1


# ----------------------------------------------------------------------------- what the opinions' readers read
class Counting(Storage):
    """Storage that records every listing (folder, entries) and every object it reads or checks."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[tuple[str, int]] = []
        self.touched: list[str] = []

    def find_stat(self, uri: str, stat: bool = True):
        out = super().find_stat(uri, stat)
        self.listed.append((uri, len(out)))
        return out

    def ls(self, uri: str) -> list[str]:
        out = super().ls(uri)
        self.listed.append((uri, len(out)))
        return out

    def read_bytes(self, uri: str) -> bytes:
        self.touched.append(uri)
        return super().read_bytes(uri)

    def exists(self, uri: str) -> bool:
        self.touched.append(uri)
        return super().exists(uri)

    def reset(self) -> None:
        self.listed, self.touched = [], []


def _reads(storage: Counting, root: str) -> dict[str, tuple[int, int]]:
    """(objects listed, objects read or checked) by the merge's selection, the gate's tally and
    the admin routes' comparison counts."""
    out = {}
    cstore = cmp.ComparisonStore(storage, root)
    for name, call in [
        ("merge selection", lambda: select_feedback(storage, root, 1)),
        ("gate tally", lambda: tally_votes(storage, root, "v2", "v1")),
        ("admin counts", lambda: (cstore.counts(), cstore.comparisons())),
    ]:
        storage.reset()
        call()
        assert not [u for u, _ in storage.listed if "/images" in u or "/pairs" in u], (name, storage.listed)
        out[name] = (sum(n for _, n in storage.listed), len(storage.touched))
    return out


def test_a_flood_of_images_and_pairs_does_not_change_what_the_tally_and_merge_read(tmp_path, stamp):
    root = str(tmp_path)
    storage = Counting()
    store = FeedbackStore(storage, root)
    for n in range(3):
        iid = _image(store, n)
        for who in ("s-a", "s-b"):
            store.add_feedback(iid, n != 2, rater=who)
    cstore, c = _comparison(root, storage)
    for k in range(4):
        cstore.vote(_pair(cstore, c), "left" if k % 2 else "right", f"k{k}")
    before = _reads(storage, root)
    assert before["merge selection"][0] == 6 and before["gate tally"] == (4, 4)

    for n in range(100, 160):  # the flood: images nobody rates, pairs nobody votes on
        _image(store, n)
        _pair(cstore, c)

    assert _reads(storage, root) == before
