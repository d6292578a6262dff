"""Face attributes: UTKFace file-name labels, attribute counts, race x gender balancing,
the labelled rows the attribute classifier (models/attributes.py) trains on, and the optional
classifier tagging of unlabelled rows.

UTKFace names its files `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg` (gender 0 male /
1 female; race 0 white / 1 black / 2 asian / 3 indian / 4 other). The public release has a
few malformed names; parsing is tolerant where the meaning is still certain (a stray space
or a missing dot after the datetime) and gives up otherwise: a name with a field missing
(e.g. `39_1_20170116174525125.jpg.chip.jpg`, race absent) cannot say which field is missing,
so the image is kept with all three labels null rather than guessed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facegen_ray.data.ingest import worker_filesystem, worker_filesystem_path
from facegen_ray.data.shards import decode_image, read_manifest, shard_uris
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage

# Imported where used, not here: models.attributes, models.conditioning (torch): only read_labelled
# and --attribute-model tagging need them; `facegen prepare` runs without torch.

if TYPE_CHECKING:
    from facegen_ray.models.attributes import LabelledImages

GENDER_NAMES = {0: "male", 1: "female"}
RACE_NAMES = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "other"}
MAX_AGE = 120
NULL = "null"

# <age>_<gender>_<race>_<digits>... ; leading/trailing blanks around the fields are tolerated.
_UTK_RE = re.compile(r"^\s*(\d{1,3})\s*_\s*(\d)\s*_\s*(\d)\s*_\s*(\d{8,})")


class Labels(NamedTuple):
    """One face's labels in UTKFace coding."""

    age: int
    gender: int
    race: int


def parse_utkface_name(name: str) -> Labels | None:
    """Labels from a UTKFace-style file name (a path is fine: only the base name is read).

    Returns None when the name does not hold all three labels with valid values.
    """
    base = posixpath.basename(name.replace("\\", "/"))
    m = _UTK_RE.match(base)
    if not m:
        return None
    age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if age > MAX_AGE or gender not in GENDER_NAMES or race not in RACE_NAMES:
        return None
    return Labels(age, gender, race)


def age_bucket_names(age_buckets: Sequence[int]) -> list[str]:
    """Bucket lower bounds [0, 13, 20, ...] -> ["0-12", "13-19", ..., "70+"]."""
    out = []
    for i, lo in enumerate(age_buckets):
        hi = age_buckets[i + 1] - 1 if i + 1 < len(age_buckets) else None
        out.append(f"{lo}-{hi}" if hi is not None else f"{lo}+")
    return out


def age_bucket_name(age: Any, age_buckets: Sequence[int]) -> str:
    """An age in years -> its bucket name, or "null"."""
    if _is_null(age) or int(age) < 0:
        return NULL
    names = age_bucket_names(age_buckets)
    idx = 0
    for i, lo in enumerate(age_buckets):
        if int(age) >= lo:
            idx = i
    return names[idx]


def _is_null(v: Any) -> bool:
    """None, NaN or pandas' NA (nullable integer columns)."""
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN
    except TypeError:  # pd.NA: comparisons are ambiguous
        return True


def _code_name(v: Any) -> str:
    return NULL if _is_null(v) else str(int(v))


def attribute_counts(rows: Sequence[dict[str, Any]] | Any, age_buckets: Sequence[int]) -> dict[str, dict[str, int]]:
    """Counts per value of age bucket / gender / race / label_source ("null" for missing).

    `rows` is a pandas DataFrame or anything with .get-able columns age, gender, race,
    label_source. Keys are strings (JSON); codes follow UTKFace (see attribute_names()).
    """
    out: dict[str, dict[str, int]] = {"age": {}, "gender": {}, "race": {}, "label_source": {}}
    ages, genders, races, sources = (list(rows[c]) for c in ("age", "gender", "race", "label_source"))
    for a, g, r, s in zip(ages, genders, races, sources):
        for key, val in (
            ("age", age_bucket_name(a, age_buckets)),
            ("gender", _code_name(g)),
            ("race", _code_name(r)),
            ("label_source", NULL if _is_null(s) else str(s)),
        ):
            out[key][val] = out[key].get(val, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def attribute_names(age_buckets: Sequence[int]) -> dict[str, Any]:
    """What the codes in attribute_counts() mean (written into the manifest)."""
    return {
        "age": age_bucket_names(age_buckets),
        "gender": {str(k): v for k, v in GENDER_NAMES.items()},
        "race": {str(k): v for k, v in RACE_NAMES.items()},
    }


# ---------------------------------------------------------------- balancing (race x gender)


def group_key(gender: Any, race: Any) -> str:
    """Race x gender group name, e.g. "race=2,gender=1"; "null" when either is unknown."""
    if _is_null(gender) or _is_null(race):
        return NULL
    return f"race={int(race)},gender={int(gender)}"


def group_counts(genders: Sequence[Any], races: Sequence[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g, r in zip(genders, races):
        k = group_key(g, r)
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def reweight(counts: dict[str, int]) -> dict[str, float]:
    """Inverse-frequency weight per group, normalised so the mean over labelled rows is 1.

    w_g = N_labelled / (G * n_g) for the G labelled groups; the null group gets 1, so
    sum_g n_g * w_g = N_labelled and unlabelled rows count as ordinary rows.
    """
    labelled = {k: n for k, n in counts.items() if k != NULL and n > 0}
    total = sum(labelled.values())
    weights = {k: total / (len(labelled) * n) for k, n in labelled.items()}
    if counts.get(NULL):
        weights[NULL] = 1.0
    return weights


def resample_repeats(keys: Sequence[str], seed: int = 0) -> np.ndarray:
    """How many times each row appears after oversampling every labelled group to the size
    of the largest one (rows of the null group stay once). int64 [len(keys)].

    A group of n rows reaching target T: every row appears T // n times, and T % n rows
    (chosen with `seed`) once more, so each group ends with exactly T rows.
    """
    keys = list(keys)
    repeats = np.ones(len(keys), dtype=np.int64)
    by_group: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if k != NULL:
            by_group.setdefault(k, []).append(i)
    if not by_group:
        return repeats
    target = max(len(v) for v in by_group.values())
    rng = np.random.default_rng(seed)
    for k in sorted(by_group):
        idx = np.asarray(by_group[k])
        base, extra = divmod(target, len(idx))
        repeats[idx] = base
        if extra:
            repeats[rng.choice(idx, size=extra, replace=False)] += 1
    return repeats


# ---------------------------------------------------------------- the classifier's training set


def read_labelled(storage: Storage, dataset_uri: str, age_buckets: Sequence[int]) -> LabelledImages:
    """Rows with at least one label from a dataset's shards (deduplicated by sha256): the
    attribute classifier's training set (models.attributes.train_attribute_classifier)."""
    from facegen_ray.models.attributes import LabelledImages
    from facegen_ray.models.conditioning import NUM_GENDERS, NUM_RACES, age_to_bucket

    manifest = read_manifest(storage, dataset_uri)
    uris = shard_uris(manifest)
    if not uris:
        raise UserError(f"dataset {dataset_uri} is empty: run `facegen prepare` first")
    fs, _ = worker_filesystem(storage, uris[0])
    seen: set[str] = set()
    imgs, ages, genders, races = [], [], [], []
    for u in uris:
        t = pq.read_table(
            worker_filesystem_path(u), filesystem=fs, columns=["image", "sha256", "age", "gender", "race"]
        )
        cols = {c: t.column(c).to_pylist() for c in ("sha256", "age", "gender", "race")}
        img_col = t.column("image")
        for j, h in enumerate(cols["sha256"]):
            a, g, r = cols["age"][j], cols["gender"][j], cols["race"][j]
            if h in seen or (a is None and g is None and r is None):
                continue
            seen.add(h)
            imgs.append(decode_image(img_col[j].as_py()))
            ages.append(age_to_bucket(a, age_buckets))
            genders.append(-1 if g is None or not 0 <= g < NUM_GENDERS else int(g))
            races.append(-1 if r is None or not 0 <= r < NUM_RACES else int(r))
    if len(imgs) < 4:
        raise UserError(
            f"dataset {dataset_uri} has {len(imgs)} labelled images; the attribute classifier needs at least 4"
        )
    return LabelledImages(
        np.stack(imgs), np.asarray(ages, np.int64), np.asarray(genders, np.int64), np.asarray(races, np.int64)
    )


# ---------------------------------------------------------------- classifier tagging


def load_tagger_fn():
    """The attribute classifier's loader (facegen_ray.models.attributes.load_tagger)."""
    from facegen_ray.models.attributes import load_tagger

    return load_tagger


class TagNullLabels:
    """Ray Data callable class: fills age/gender/race of rows whose label_source is null
    with an attribute classifier's predictions (label_source "classifier").

    The tagger is loaded once on the driver (so a bad --attribute-model fails before any
    work) and shipped to the actor: `ds.map_batches(TagNullLabels, fn_constructor_args=(tagger,),
    batch_format="pyarrow", concurrency=1)`. tagger(uint8 [N,H,W,3]) -> {"age","gender","race":
    int64 [N]}, -1 = unknown.
    """

    def __init__(self, tagger):
        self.tagger = tagger

    def __call__(self, batch):
        src = batch.column("label_source").to_pylist()
        todo = [i for i, s in enumerate(src) if s is None]
        if not todo:
            return batch
        images = batch.column("image").to_pylist()
        arr = np.stack([decode_image(images[i]) for i in todo])  # [n,H,W,3] uint8
        pred = self.tagger(arr)
        cols = {c: batch.column(c).to_pylist() for c in ("age", "gender", "race")}
        for c in cols:
            vals = np.asarray(pred[c]).astype(np.int64).reshape(-1)
            for j, i in enumerate(todo):
                cols[c][i] = int(vals[j]) if vals[j] >= 0 else None
        for i in todo:
            if any(cols[c][i] is not None for c in cols):
                src[i] = "classifier"
        for c, vals in cols.items():
            batch = batch.set_column(batch.schema.get_field_index(c), c, pa.array(vals, type=pa.int64()))
        return batch.set_column(
            batch.schema.get_field_index("label_source"), "label_source", pa.array(src, type=pa.string())
        )
