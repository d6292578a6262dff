"""Dataset shards: the Parquet row schema, writing a version, manifests, and reading back.

A dataset lives at DEST (any storage URI):

    DEST/manifest.json        copy of the latest complete version's manifest (+ "version", "path")
    DEST/v<N>/*.parquet       shards of version N (rows: SHARD_SCHEMA)
    DEST/v<N>/manifest.json   that version's manifest, written after all its shards

Commit protocol (a crash at any point never leaves DEST/manifest.json pointing at partial
shards, and nothing stored before is deleted):
  local  shards are written into DEST/_staging-<id>/, which is renamed (atomically) to v<N>;
         then v<N>/manifest.json, then DEST/manifest.json (Storage.write_json: temp + rename).
  s3://  object stores have no rename: v<N> is claimed first by creating DEST/v<N>/_claim.json
         with a conditional PUT (If-None-Match: *, so two prepares racing for the same N
         cannot both win: the loser takes N+1); shards go straight to DEST/v<N>/; the version
         manifest is the commit marker, written last, then DEST/manifest.json (a PUT is atomic).
Readers only trust versions that have a manifest and read only the files it lists, so a
leftover _staging-* folder or a manifest-less v<N> is ignored; the next prepare picks a
version number above every v<N> folder that exists, complete or not.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from facegen_ray.data.ingest import worker_filesystem, worker_filesystem_path
from facegen_ray.errors import UserError
from facegen_ray.storage import Layout, Storage, StorageError, is_remote, join, normalize

# Imported where used, not here: ray: only read_training_dataset builds a Ray Dataset; manifests and
# plain reads run without Ray.

MANIFEST_FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d+)$")
STAGING_PREFIX = "_staging-"
CLAIM_FILE = "_claim.json"
TRAINING_COLUMNS = ["image", "age", "gender", "race", "weight"]
HOLDOUT_DIR = "holdout"  # v<N>/holdout/*.parquet: held-out rows, listed in manifest["holdout"], never trained on


def in_holdout(sha256: str, fraction: float) -> bool:
    """Whether a row (by its content hash) belongs to the held-out split: the first 8 hex digits
    as a number in [0,1) below `fraction`. Stable across runs and for repeated rows."""
    return fraction > 0 and int(sha256[:8], 16) / 2**32 < fraction


def holdout_uris(manifest: dict[str, Any]) -> list[str]:
    """Full URIs of a version's held-out shards ([] when it has none)."""
    return [join(manifest["path"], f["name"]) for f in (manifest.get("holdout") or {}).get("files", [])]


def shard_schema():
    """Parquet row schema of every shard (dataset prepare and feedback merge alike)."""
    return pa.schema(
        [
            ("image", pa.binary()),  # encoded PNG/JPEG at the dataset resolution
            ("sha256", pa.string()),  # content hash (transforms.pixel_sha256)
            ("source", pa.string()),  # where the image came from (URI, "<zip>!/<member>", ...)
            ("age", pa.int64()),  # years; null = unknown
            ("gender", pa.int64()),  # 0 male, 1 female; null = unknown
            ("race", pa.int64()),  # 0 white, 1 black, 2 asian, 3 indian, 4 other; null = unknown
            ("origin", pa.string()),  # "dataset" | "feedback"
            ("weight", pa.float32()),  # sampling/loss weight (1 unless --balance reweight)
            ("label_source", pa.string()),  # "filename" | "classifier" | null
        ]
    )


# ------------------------------------------------------------------ versions and manifests


def list_versions(storage: Storage, dataset_uri: str) -> list[int]:
    """Every v<N> folder below a dataset (complete or not), ascending."""
    out = []
    for child in storage.ls(dataset_uri):
        m = _VERSION_RE.match(child.rstrip("/").rsplit("/", 1)[-1])
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def next_version(storage: Storage, dataset_uri: str) -> int:
    versions = list_versions(storage, dataset_uri)
    return (versions[-1] + 1) if versions else 1


def _split_version(uri: str) -> tuple[str, int | None]:
    """DEST/v3 -> (DEST, 3); DEST -> (DEST, None)."""
    uri = normalize(uri)
    head, _, tail = uri.rstrip("/").rpartition("/")
    m = _VERSION_RE.match(tail)
    return (head, int(m.group(1))) if m and head else (uri, None)


def read_manifest(storage: Storage, dataset_uri: str) -> dict[str, Any]:
    """The manifest of a dataset (DEST: its latest version) or of one version (DEST/v<N>).

    "path" in the result is the version folder as seen from `dataset_uri` (so a dataset that
    was copied elsewhere still reads). UserError when there is no complete dataset there.
    """
    uri = normalize(dataset_uri)
    base, version = _split_version(uri)
    path = Layout.manifest(uri)
    try:
        exists = storage.exists(path)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read dataset {dataset_uri}: {e}") from None
    if not exists:
        if version is not None and storage.exists(uri):
            raise UserError(
                f"dataset version {dataset_uri} is incomplete (no manifest.json: its prepare was "
                f"interrupted); use {base} for the latest complete version"
            )
        raise UserError(
            f"no dataset at {dataset_uri} (no manifest.json): create it with `facegen prepare SOURCE {dataset_uri}`"
        )
    try:
        manifest = storage.read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"dataset manifest {path} cannot be read: {e}") from None
    if not isinstance(manifest, dict) or "version" not in manifest:
        raise UserError(f"{path} is not a facegen dataset manifest")
    v = manifest["version"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"{path} is damaged: its version is {v!r}, not a positive integer")
    manifest = dict(manifest)
    manifest["path"] = uri if version is not None else Layout.dataset_version(uri, int(manifest["version"]))
    return manifest


def shard_uris(manifest: dict[str, Any]) -> list[str]:
    """Full URIs of a version's shards (read_manifest's "path" + "files")."""
    return [join(manifest["path"], f["name"]) for f in manifest.get("files", [])]


def write_version(
    storage: Storage,
    dest: str,
    ds,
    manifest: dict[str, Any],
    rows_per_shard: int,
    expected_rows: int | None = None,
    holdout=None,
) -> dict[str, Any]:
    """Write a Ray Dataset (SHARD_SCHEMA rows) as the next version of DEST, commit it, and
    return the complete manifest (with version, path, files, num_images). With
    `expected_rows`, a version whose shards hold a different count is never committed.
    `holdout` (a Ray Dataset of the same schema): written to v<N>/holdout/ and listed in
    manifest["holdout"] = {num_images, files}; "files" (what training reads) never lists it."""
    dest = normalize(dest)
    remote = is_remote(dest)
    version = next_version(storage, dest)
    target = staging = Layout.dataset_version(dest, version)
    if remote:
        target = staging = _claim_version(storage, dest, version)
        version = _split_version(target)[1]
    else:
        staging = join(dest, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        storage.makedirs(dest)
    fs, fs_path = worker_filesystem(storage, staging)
    ds.write_parquet(
        worker_filesystem_path(staging),
        filesystem=fs,
        min_rows_per_file=rows_per_shard,
        max_rows_per_file=rows_per_shard,
        compression="zstd",
        try_create_dir=True,
    )
    if holdout is not None:
        holdout.write_parquet(
            worker_filesystem_path(join(staging, HOLDOUT_DIR)),
            filesystem=fs,
            min_rows_per_file=rows_per_shard,
            max_rows_per_file=rows_per_shard,
            compression="zstd",
            try_create_dir=True,
        )
    if not remote:
        while True:  # atomic claim of v<N>: rename fails if another prepare took it
            try:
                os.rename(staging, target)
                break
            except OSError:
                if not os.path.exists(target):
                    raise
                version += 1
                target = Layout.dataset_version(dest, version)
    described = _describe_shards(storage, target)
    files = [f for f in described if not f["name"].startswith(HOLDOUT_DIR + "/")]
    held = [f for f in described if f["name"].startswith(HOLDOUT_DIR + "/")]
    if holdout is not None:
        manifest = {
            **manifest,
            "holdout": {**(manifest.get("holdout") or {}), "num_images": sum(f["rows"] for f in held), "files": held},
        }
    written = sum(f["rows"] for f in files)
    if expected_rows is not None and written != expected_rows:
        raise StorageError(f"{target}: shards hold {written} rows, expected {expected_rows}; not committed")
    manifest = dict(manifest)
    manifest.update(
        format=MANIFEST_FORMAT,
        version=version,
        path=target,
        files=files,
        num_images=sum(f["rows"] for f in files),
        num_shards=len(files),
    )
    storage.write_json(Layout.manifest(target), manifest)  # commits the version
    storage.write_json(Layout.manifest(dest), manifest)  # then points DEST at it
    return manifest


def _claim_version(storage: Storage, dest: str, version: int) -> str:
    """Claim DEST/v<N> on an object store for this writer, N >= version: the first N whose
    claim object this call creates (conditional PUT) and that holds no manifest (a version
    written before claims existed). Returns the claimed version's URI."""
    while True:
        target = Layout.dataset_version(dest, version)
        claim = json.dumps(
            {
                "writer": uuid.uuid4().hex,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
        ).encode()
        if storage.create_exclusive(join(target, CLAIM_FILE), claim) and not storage.exists(Layout.manifest(target)):
            return target
        version += 1


def _describe_shards(storage: Storage, version_uri: str) -> list[dict[str, Any]]:
    """[{name, rows, bytes}] for the Parquet files of a just-written version (sorted)."""
    fs, _ = worker_filesystem(storage, version_uri)
    out = []
    for uri in storage.find(version_uri):
        name = uri[len(version_uri) :].lstrip("/")
        if not name.endswith(".parquet"):
            continue
        md = pq.read_metadata(worker_filesystem_path(uri), filesystem=fs)
        if md.num_rows == 0:
            continue  # an empty block's file holds nothing to read
        out.append({"name": name, "rows": int(md.num_rows), "bytes": storage.size(uri)})
    return sorted(out, key=lambda f: f["name"])


# ------------------------------------------------------------------ reading back


def decode_image(data: bytes) -> np.ndarray:
    """Stored image bytes (PNG/JPEG) -> uint8 [H,W,3] RGB."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def downsample(batch: np.ndarray, resolution: int) -> np.ndarray:
    """Box-filter (area average) uint8/float [N,S,S,3] -> float32 [N,R,R,3] for S a multiple
    of R: the antialiased power-of-two reduction progressive growing uses (avg-pooling)."""
    n, s = batch.shape[0], batch.shape[1]
    if s == resolution:
        return batch.astype(np.float32)
    f = s // resolution
    x = batch.astype(np.float32).reshape(n, resolution, f, resolution, f, 3)
    return x.mean(axis=(2, 4))


def _to_training_batch(batch, *, resolution: int):
    """UDF: shard rows -> image float32 [N,3,R,R] in [-1,1], labels int64 (-1 null), weight."""
    images = np.stack([decode_image(b) for b in batch.column("image").to_pylist()])  # [N,S,S,3]
    x = downsample(images, resolution)  # [N,R,R,3] float32 in [0,255]
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) / np.float32(127.5) - np.float32(1.0)  # [N,3,R,R]
    out = {"image": x.astype(np.float32)}
    for c in ("age", "gender", "race"):
        out[c] = np.asarray(batch.column(c).fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    w = batch.column("weight").fill_null(1.0) if "weight" in batch.column_names else pa.array(np.ones(len(x)))
    out["weight"] = np.asarray(w.to_numpy(zero_copy_only=False), dtype=np.float32)
    return out


def _checked_resolution(manifest: dict[str, Any], resolution: int | None) -> tuple[int, int]:
    stored = int(manifest.get("resolution") or 0)
    res = stored if resolution is None else int(resolution)
    if res < 1 or res & (res - 1):
        raise UserError(f"resolution must be a power of two, got {resolution}")
    if res > stored:
        raise UserError(
            f"resolution {res} is larger than the dataset's {stored}x{stored} ({manifest['path']}): "
            f"prepare the data again with --resolution {res}"
        )
    return stored, res


def _nonempty(manifest: dict[str, Any], dataset_uri: str) -> None:
    if int(manifest.get("num_images") or 0) <= 0 or not manifest.get("files"):
        raise UserError(f"dataset {dataset_uri} is empty (no images): run `facegen prepare` on a source with faces")


def read_training_dataset(storage: Storage, dataset_uri: str, resolution: int | None = None):
    """A Ray Dataset of training-ready rows at `resolution` (default: the stored one).

    Columns: image float32 [3,R,R] in [-1,1] (area-averaged when R < stored resolution),
    age/gender/race int64 (-1 = null), weight float32. A plain Ray Dataset: pass it as
    TorchTrainer(datasets={"train": ds}) and read it with ray.train.get_dataset_shard.
    UserError when the dataset is missing/empty or R is not a power of two <= stored res.
    """
    import ray

    manifest = read_manifest(storage, dataset_uri)
    _nonempty(manifest, dataset_uri)
    _, res = _checked_resolution(manifest, resolution)
    uris = shard_uris(manifest)
    fs, _ = worker_filesystem(storage, uris[0])
    ds = ray.data.read_parquet(
        [worker_filesystem_path(u) for u in uris],
        filesystem=fs,
        columns=TRAINING_COLUMNS,
    )
    return ds.map_batches(_to_training_batch, fn_kwargs={"resolution": res}, batch_format="pyarrow", batch_size=256)


def read_images_uint8(storage: Storage, dataset_uri: str, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Distinct images of a dataset at its stored resolution, uint8 [N,H,W,3] (no Ray needed).

    Rows repeated by --balance resample are counted once (by sha256). With `limit`, a seeded
    random subset of that many images (for metrics on real data).
    """
    manifest = read_manifest(storage, dataset_uri)
    _nonempty(manifest, dataset_uri)
    uris = shard_uris(manifest)
    fs, _ = worker_filesystem(storage, uris[0])
    hashes: list[str] = []
    where: list[tuple[int, int]] = []
    seen: set[str] = set()
    for i, u in enumerate(uris):
        col = pq.read_table(worker_filesystem_path(u), filesystem=fs, columns=["sha256"]).column("sha256").to_pylist()
        for j, h in enumerate(col):
            if h not in seen:
                seen.add(h)
                hashes.append(h)
                where.append((i, j))
    order = np.arange(len(where))
    if limit is not None and limit < len(where):
        order = np.sort(np.random.default_rng(seed).choice(len(where), size=int(limit), replace=False))
    wanted: dict[int, list[int]] = {}
    for k in order:
        i, j = where[k]
        wanted.setdefault(i, []).append(j)
    out: list[np.ndarray] = []
    for i in sorted(wanted):
        col = pq.read_table(worker_filesystem_path(uris[i]), filesystem=fs, columns=["image"]).column("image")
        out += [decode_image(col[j].as_py()) for j in wanted[i]]
    res = int(manifest["resolution"])
    return np.stack(out) if out else np.zeros((0, res, res, 3), np.uint8)


__all__ = [
    "shard_schema",
    "read_manifest",
    "read_training_dataset",
    "read_images_uint8",
    "decode_image",
    "write_version",
    "list_versions",
    "next_version",
    "shard_uris",
    "downsample",
    "holdout_uris",
    "in_holdout",
]
