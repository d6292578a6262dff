"""The one way to read and write storage: fsspec URIs, local paths or s3://.

`Storage(cfg)` carries the connection options (S3 endpoint, region) and is cheap to pickle,
so it travels to Ray workers. `Layout(root)` is the only place that knows where things live:

    <root>/datasets/<name>/manifest.json          latest version pointer (+ copy of its manifest)
    <root>/datasets/<name>/v<N>/*.parquet          shards of version N
    <root>/datasets/<name>/v<N>/manifest.json      that version's manifest
    <root>/runs/<run>/...                          Ray Train run folder (checkpoints, samples)
    <root>/models/registry.json                    model registry
    <root>/models/<version>/                       exported model directories
    <root>/feedback/...                            feedback store
    <root>/tune/<sweep>/...                        Ray Tune experiment, trial runs, results
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from facegen_ray.config import StorageConfig

# Imported where used, not here: pyarrow.fs, botocore: only Ray Data / pyarrow readers and s3://
# credentials need them; cli.py imports every command module to build the parser, which loads no
# numpy/torch/ray (tests/test_layers.py).


class StorageError(OSError):
    """Storage could not be read or written; the message names the URI."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching the scheme."""
    out = uri.rstrip("/") if uri not in ("/",) else uri
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def fs_path_to_uri(path: str | None, like: str) -> str | None:
    """A path on a pyarrow filesystem (how Ray reports checkpoint locations: `bucket/key`, no
    scheme) as a URI on the same storage as `like` (`s3://bucket/key`); local paths unchanged."""
    if path is None or "://" in path or not is_remote(like):
        return path
    return f"{like.split('://', 1)[0]}://{path.lstrip('/')}"


def normalize(uri: str) -> str:
    """Local paths become absolute (so they survive a change of working directory on workers)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return uri.rstrip("/") or uri
    return os.path.abspath(os.path.expanduser(uri))


def _write_temp(path: str, data: bytes) -> str:
    """Write data durably to a unique temp file beside `path`; returns the temp file's name."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


class Storage:
    def __init__(self, cfg: StorageConfig | None = None):
        self.cfg = cfg or StorageConfig()

    # pickling: keep the config only; filesystems are rebuilt on the other side
    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg.model_dump()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = StorageConfig(**state["cfg"])

    def storage_options(self, uri: str) -> dict[str, Any]:
        if uri.startswith("s3://"):
            opts: dict[str, Any] = {"anon": self.cfg.anon}
            client_kwargs: dict[str, Any] = {}
            if self.cfg.endpoint_url:
                client_kwargs["endpoint_url"] = self.cfg.endpoint_url
            if self.cfg.region:
                client_kwargs["region_name"] = self.cfg.region
            if client_kwargs:
                opts["client_kwargs"] = client_kwargs
            return opts
        return {}

    def fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """(filesystem, path-within-it) for a URI."""
        uri = normalize(uri)
        try:
            fs, path = fsspec.core.url_to_fs(uri, **self.storage_options(uri))
        except (ImportError, ValueError) as e:
            raise StorageError(f"cannot open storage {uri!r}: {e}") from e
        return fs, path

    def pyarrow_fs(self, uri: str):
        """(pyarrow FileSystem, path) for Ray Data / pyarrow readers and writers."""
        import pyarrow.fs as pafs

        fs, path = self.fs(uri)
        if not is_remote(normalize(uri)):
            return pafs.LocalFileSystem(), path
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    # ---- queries
    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return fs.exists(path)

    def isdir(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return fs.isdir(path)

    def ls(self, uri: str) -> list[str]:
        """Immediate children as full URIs (sorted); [] if the folder does not exist."""
        fs, path = self.fs(uri)
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        base = normalize(uri)
        return sorted(join(base, posixpath.basename(n.rstrip("/"))) for n in names)

    def find(self, uri: str) -> list[str]:
        """All files below a folder, recursively, as full URIs (sorted)."""
        return list(self.find_stat(uri, stat=False))

    def find_stat(self, uri: str, stat: bool = True) -> dict[str, tuple[int, _dt.datetime | None]]:
        """find() with each file's (size, modification time in UTC or None when the filesystem
        has none), from the same listing: one LIST per 1000 keys on S3, no request per file."""
        fs, path = self.fs(uri)
        try:
            files = fs.find(path, detail=True) if stat else dict.fromkeys(fs.find(path), {})
        except FileNotFoundError:
            return {}
        base, root, out = normalize(uri), path.rstrip("/"), {}
        for f, info in files.items():
            t = info.get("LastModified", info.get("mtime"))  # S3's, a local file's
            t = _dt.datetime.fromtimestamp(t, _dt.UTC) if isinstance(t, int | float) else t
            t = (t if t.tzinfo else t.replace(tzinfo=_dt.UTC)) if isinstance(t, _dt.datetime) else None
            rel = f[len(root) :].lstrip("/") if f.startswith(root) else posixpath.basename(f)
            out[join(base, rel)] = (int(info.get("size") or 0), t)
        return dict(sorted(out.items()))

    def size(self, uri: str) -> int:
        fs, path = self.fs(uri)
        return int(fs.size(path))

    # ---- reading
    def open(self, uri: str, mode: str = "rb", **kw):
        fs, path = self.fs(uri)
        if "w" in mode or "a" in mode:
            parent = posixpath.dirname(path)
            if parent and not is_remote(normalize(uri)):
                fs.makedirs(parent, exist_ok=True)
        return fs.open(path, mode, **kw)

    def read_bytes(self, uri: str) -> bytes:
        try:
            with self.open(uri, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StorageError(f"cannot read {uri}: {e}") from e

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_text(uri))

    # ---- writing
    def makedirs(self, uri: str) -> None:
        fs, path = self.fs(uri)
        if not is_remote(normalize(uri)):
            fs.makedirs(path, exist_ok=True)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomic for readers: local writes go to a temp file then os.replace; an S3 PUT is atomic."""
        uri = normalize(uri)
        try:
            if is_remote(uri):
                fs, path = self.fs(uri)
                fs.pipe_file(path, data)
                return
            os.replace(_write_temp(uri, data), uri)
        except OSError as e:
            raise StorageError(f"cannot write {uri}: {e}") from e

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Write only if the object does not exist yet. Returns False if it did.

        Local: O_EXCL on the final name after writing a temp file (link), so a reader never
        sees a torn file. S3: conditional PUT (If-None-Match) where supported, else check+put.
        """
        uri = normalize(uri)
        if is_remote(uri):
            fs, path = self.fs(uri)
            if fs.exists(path):
                return False
            try:
                fs.pipe_file(path, data, mode="create")  # s3fs: If-None-Match: *
            except FileExistsError:
                return False
            except TypeError:
                fs.pipe_file(path, data)
            return True
        tmp = _write_temp(uri, data)
        try:
            os.link(tmp, uri)  # atomic, fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    # ---- compare-and-swap (the model registry: several hosts may update it at once)
    def read_versioned(self, uri: str) -> tuple[bytes | None, str | None]:
        """(content, token) of an object, (None, None) when it does not exist. Pass the token to
        write_if: the write happens only if nobody wrote in between. S3: the ETag (read before
        the content, and checked against its MD5, so content and token belong together); local:
        the content's sha256."""
        uri = normalize(uri)
        if not uri.startswith("s3://"):
            try:
                data = self.read_bytes(uri)
            except FileNotFoundError:
                return None, None
            return data, hashlib.sha256(data).hexdigest()
        fs, path = self.fs(uri)
        for _ in range(10):
            fs.invalidate_cache(path)
            try:
                etag = str(fs.info(path)["ETag"])
                data = fs.cat_file(path)
            except FileNotFoundError:
                return None, None
            except OSError:  # replaced between the ETag and the read (s3fs checks): read again
                continue
            plain = etag.strip('"')
            if "-" in plain or hashlib.md5(data).hexdigest() == plain:  # noqa: S324 - S3's ETag, not security
                return data, etag
        raise StorageError(f"{uri} keeps changing while being read")

    def write_if(self, uri: str, data: bytes, token: str | None) -> bool:
        """Write `data` only if the object is still what read_versioned returned with `token`
        (token None: only if it still does not exist). False when someone wrote in between.
        S3: a conditional PUT (If-Match / If-None-Match); local: under an flock of `<uri>.lock`."""
        uri = normalize(uri)
        if token is None:
            return self.create_exclusive(uri, data)
        if uri.startswith("s3://"):
            fs, path = self.fs(uri)
            try:
                fs.pipe_file(path, data, IfMatch=token)
            except (FileExistsError, FileNotFoundError):
                return False
            except OSError as e:
                cause = getattr(e.__cause__, "response", None) or {}
                if cause.get("Error", {}).get("Code") == "PreconditionFailed" or "pre-condition" in str(e):
                    return False
                raise StorageError(f"cannot write {uri}: {e}") from e
            finally:
                fs.invalidate_cache(path)
            return True
        if is_remote(uri):
            raise StorageError(f"conditional writes need s3:// or a local path, not {uri}")
        import fcntl

        os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
        with open(f"{uri}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(uri, "rb") as f:
                    current = hashlib.sha256(f.read()).hexdigest()
            except FileNotFoundError:
                return False
            if current != token:
                return False
            os.replace(_write_temp(uri, data), uri)
            return True

    def rm(self, uri: str, recursive: bool = False) -> None:
        fs, path = self.fs(uri)
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass

    def rm_files(self, uris: list[str]) -> None:
        """Remove files (a missing one is no error); on S3 in bulk, so in no particular order."""
        if uris and is_remote(normalize(uris[0])):
            return self.fs(uris[0])[0].rm([self.fs(u)[1] for u in uris])
        for uri in uris:
            self.rm(uri)

    def copy_tree(self, src: str, dst: str) -> None:
        """Copy every file below src to the same relative path below dst (across filesystems)."""
        src_n = normalize(src)
        for f in self.find(src_n):
            rel = f[len(src_n) :].lstrip("/")
            self.write_bytes(join(dst, rel), self.read_bytes(f))

    def check_writable(self, uri: str) -> None:
        """Raise StorageError with a clear message if we cannot write below uri."""
        probe = join(uri, f".write-probe-{uuid.uuid4().hex}")
        try:
            self.write_bytes(probe, b"ok")
            self.rm(probe)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot write"
            raise StorageError(f"storage {uri} is not writable: {e}") from e


@dataclass(frozen=True)
class Layout:
    """Where each artifact lives below a storage root. Nothing else builds these paths."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", normalize(self.root))

    # datasets
    def datasets(self) -> str:
        return join(self.root, "datasets")

    def dataset(self, name: str) -> str:
        return join(self.root, "datasets", name)

    @staticmethod
    def dataset_version(dataset_uri: str, version: int) -> str:
        return join(dataset_uri, f"v{version}")

    @staticmethod
    def manifest(dataset_or_version_uri: str) -> str:
        return join(dataset_or_version_uri, "manifest.json")

    @staticmethod
    def reference_stats(version_uri: str, key: str) -> str:
        return join(version_uri, "stats", f"{key}.npz")

    # training runs
    def runs(self) -> str:
        return join(self.root, "runs")

    def run(self, name: str) -> str:
        return join(self.root, "runs", name)

    # models
    def models(self) -> str:
        return join(self.root, "models")

    def registry(self) -> str:
        return join(self.root, "models", "registry.json")

    def model(self, version: str) -> str:
        return join(self.root, "models", version)

    # feedback
    def feedback(self) -> str:
        return join(self.root, "feedback")

    # hyperparameter sweeps (Ray Tune experiments: state, trial runs, results.json/csv)
    def tunes(self) -> str:
        return join(self.root, "tune")

    def tune(self, name: str) -> str:
        return join(self.root, "tune", name)


def iter_lines(storage: Storage, uri: str) -> Iterator[str]:
    with storage.open(uri, "rt") as f:
        yield from f
