"""Sources -> a Ray Dataset of raw files: rows (source: str, bytes: binary).

A SOURCE is a local folder (searched recursively), a .zip file (local or s3://), or an s3://
prefix; several may be given. Files are chosen by extension (jpg/jpeg/png/webp, any case);
other files are counted as ignored. Listing happens on the driver (cheap, and it makes
--limit deterministic); reading and decoding happen in Ray Data tasks: the listed items
(zip member or file) become a `ray.data.from_items` dataset in one seeded random order across
all sources, and `read_items` (map_batches) reads them — each zip opened once per batch,
plain files through pyarrow filesystems — so reading and decoding run in parallel and the
shards come out interleaved rather than sorted by name. (A plain read_binary_files per folder
would concatenate sources and keep UTKFace's age-sorted name order in the shards.)

`source` of a zip member is "<zip uri>!/<member>"; of a file, its URI.
"""

from __future__ import annotations

import logging
import math
import posixpath
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from facegen_ray.errors import UserError

# the one builder of worker filesystems lives in storage.py; re-exported for the data readers
from facegen_ray.storage import Storage, is_remote, normalize
from facegen_ray.storage_workers import worker_filesystem, worker_filesystem_path  # noqa: F401 (re-exported to data readers)

# Imported where used, not here: ray: only read_sources builds a Ray Dataset; planning sources runs
# without Ray.

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
ZIP_MEMBER_SEP = "!/"


def is_image_name(name: str) -> bool:
    """True for names with an image extension (any case), except macOS resource forks."""
    base = posixpath.basename(name)
    if base.startswith("._") or "__MACOSX/" in name:
        return False
    return base.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class SourcePlan:
    """What prepare will read: (container, name) items in a seeded random order, where
    container is a zip URI (name = member) or "" (name = file URI)."""

    sources: list[str]
    items: list[tuple[str, str]] = field(default_factory=list)
    num_ignored: int = 0  # non-image files seen
    num_found: int = 0  # image files found before --limit

    @property
    def num_candidates(self) -> int:
        return len(self.items)


def plan_sources(storage: Storage, sources: list[str], limit: int | None = None, seed: int = 0) -> SourcePlan:
    """List every source on the driver. UserError when a source is missing or holds no images.

    The items are put in one seeded random order across all sources, so shards are not
    sorted by file name (UTKFace names start with the age) and several zips interleave; with
    `limit`, the first `limit` of that order are kept (a random subset, reproducible by seed).
    A file listed twice (the same SOURCE given twice) is read once.
    """
    if not sources:
        raise UserError("no SOURCE given: pass a folder, a .zip or an s3:// prefix of face images")
    plan = SourcePlan(sources=[normalize(s) for s in sources])
    items: set[tuple[str, str]] = set()
    for raw, uri in zip(sources, plan.sources):
        try:
            exists = storage.exists(uri)
        except Exception as e:  # noqa: BLE001 - e.g. credentials / endpoint problems
            raise UserError(f"cannot access SOURCE {raw}: {e}") from None
        if not exists:
            raise UserError(f"SOURCE {raw} does not exist (expected a folder, a .zip or an s3:// prefix)")
        if uri.lower().endswith(".zip") and not storage.isdir(uri):
            try:
                with storage.open(uri, "rb") as f, zipfile.ZipFile(f) as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir()]
            except zipfile.BadZipFile as e:
                raise UserError(f"SOURCE {raw} is not a valid zip file ({e})") from None
            found = [(uri, n) for n in names if is_image_name(n)]
        elif storage.isdir(uri):
            names = storage.find(uri)
            found = [("", n) for n in names if is_image_name(n)]
        elif is_image_name(uri):
            names, found = [uri], [("", uri)]
        else:
            raise UserError(f"SOURCE {raw} is neither a folder, a .zip file nor an image")
        plan.num_ignored += len(names) - len(found)
        if not found:
            raise UserError(
                f"SOURCE {raw} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                f"point prepare at a folder, zip or prefix of face images"
            )
        items.update(found)
    ordered = sorted(items)
    plan.num_found = len(ordered)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    if limit is not None:
        perm = perm[:limit]
    plan.items = [ordered[i] for i in perm]
    return plan


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if is_remote(uri) else "file"


def read_items(batch, *, filesystems: dict[str, Any]):
    """Ray Data UDF: rows (container, name) -> (source, bytes).

    `filesystems` maps a URI scheme to a pyarrow FileSystem built on the driver (see
    worker_filesystem). Each zip in the batch is opened once; plain files are read whole. A
    file or member that cannot be read yields empty bytes, which the transform counts as
    unreadable (never fatal).
    """
    containers = batch.column("container").to_pylist()
    names = batch.column("name").to_pylist()
    blobs: list[bytes] = [b""] * len(names)
    sources: list[str] = [""] * len(names)
    by_zip: dict[str, list[int]] = {}
    for i, (c, n) in enumerate(zip(containers, names)):
        if c:
            by_zip.setdefault(c, []).append(i)
            sources[i] = f"{c}{ZIP_MEMBER_SEP}{n}"
            continue
        sources[i] = n
        try:
            with filesystems[_scheme(n)].open_input_file(worker_filesystem_path(n)) as f:
                blobs[i] = f.read()
        except Exception as e:  # noqa: BLE001
            log.warning("cannot read %s: %s", n, e)
    for zuri, idx in by_zip.items():
        try:
            fs = filesystems[_scheme(zuri)]
            with fs.open_input_file(worker_filesystem_path(zuri)) as f, zipfile.ZipFile(f) as zf:
                for i in idx:
                    try:
                        blobs[i] = zf.read(names[i])
                    except Exception as e:  # noqa: BLE001 - CRC error, truncated member, ...
                        log.warning("cannot read %s from %s: %s", names[i], zuri, e)
        except Exception as e:  # noqa: BLE001 - the zip itself vanished/broke after planning
            log.warning("cannot open %s: %s", zuri, e)
    return pa.table({"source": pa.array(sources, type=pa.string()), "bytes": pa.array(blobs, type=pa.binary())})


def read_sources(storage: Storage, plan: SourcePlan, rows_per_block: int = 128):
    """The planned files as one Ray Dataset with columns source (str), bytes (binary), in the
    plan's order (blocks of `rows_per_block` files, read in parallel)."""
    import ray

    if not plan.items:
        raise UserError("no image files to read")
    ds = ray.data.from_items(
        [{"container": c, "name": n} for c, n in plan.items],
        override_num_blocks=max(1, math.ceil(len(plan.items) / rows_per_block)),
    )
    filesystems = {}
    for c, n in plan.items:
        uri = c or n
        if _scheme(uri) not in filesystems:
            filesystems[_scheme(uri)] = worker_filesystem(storage, uri)[0]
    return ds.map_batches(read_items, fn_kwargs={"filesystems": filesystems}, batch_format="pyarrow", batch_size=None)
