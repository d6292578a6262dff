"""Filesystems for Ray workers: pyarrow filesystems that pickle without credentials (each
process resolves its own through its node's AWS chain), and the secret variables that are never
forwarded or written anywhere."""

from __future__ import annotations

from typing import Any

from facegen_ray.config import StorageConfig
from facegen_ray.storage import Storage, is_remote, normalize

# environment variables that hold a secret: never forwarded to workers (runtime_env env_vars are
# logged by Ray's runtime_env agent and pickled with Tune's trainables), never written anywhere
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def s3_worker_options(cfg: StorageConfig) -> dict[str, Any]:
    """Keyword arguments for pyarrow's S3FileSystem, for Ray workers, Ray Train's controller and
    Ray Tune (whose RunConfig, with this filesystem, is pickled into `tuner.pkl` in storage).

    No credentials, ever: a filesystem built from these options pickles with the endpoint and
    region only, and each process that unpickles it resolves credentials itself through the AWS
    chain of its own node (env vars, ~/.aws profile, credential_process, web identity, SSO,
    container/instance metadata), refreshing them when they expire. Keys frozen in here would
    be written to the bucket with `tuner.pkl` and would stop working when they rotate.

    storage.anon: anonymous access (a public bucket), even when credentials exist. The endpoint
    (storage.endpoint_url / FACEGEN_S3_ENDPOINT_URL, scheme kept) and region (default
    us-east-1) may travel: they are not secret."""
    kw: dict[str, Any] = {}
    if cfg.anon:
        kw["anonymous"] = True
    if cfg.endpoint_url:
        scheme, _, host = cfg.endpoint_url.partition("://")
        kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    kw["region"] = cfg.region or "us-east-1"
    return kw


def worker_filesystem(storage: Storage, uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path) that also works inside Ray workers: for s3:// pyarrow's native
    S3FileSystem from s3_worker_options (it pickles with endpoint and region only: each process
    finds its own credentials); other URIs use Storage.pyarrow_fs."""
    uri = normalize(uri)
    if not uri.startswith("s3://"):
        return storage.pyarrow_fs(uri)
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(**s3_worker_options(storage.cfg)), uri[len("s3://") :]


def worker_filesystem_path(uri: str) -> str:
    """A URI as a path within its pyarrow filesystem (bucket/key for s3://)."""
    uri = normalize(uri)
    return uri[len("s3://") :] if uri.startswith("s3://") else uri if not is_remote(uri) else uri.split("://", 1)[1]
