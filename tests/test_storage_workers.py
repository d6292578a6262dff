"""The one builder of pyarrow S3 filesystems for Ray workers (storage.s3_worker_options /
worker_filesystem), used by training (Ray Train's checkpoints), Tune and every Ray Data reader:
it never carries credentials (each process resolves its own), only endpoint and region."""

from __future__ import annotations

import pickle

import pytest

from facegen_ray.config import StorageConfig
from facegen_ray.storage import Storage
from facegen_ray.storage_workers import s3_worker_options, worker_filesystem, worker_filesystem_path


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """An environment where botocore finds no credentials at all."""
    for k in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_driver_credentials_never_enter_the_options(no_aws):
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    no_aws.setenv("AWS_SESSION_TOKEN", "tok")
    kw = s3_worker_options(StorageConfig(endpoint_url="http://127.0.0.1:5000", region="eu-west-1"))
    assert not {"access_key", "secret_key", "session_token", "anonymous"} & set(kw)
    assert "AKIDEXAMPLE" not in repr(kw) and "secret" not in repr(kw)
    assert kw == {"endpoint_override": "127.0.0.1:5000", "scheme": "http", "region": "eu-west-1"}


def test_anon_wins_over_credentials(no_aws):
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    kw = s3_worker_options(StorageConfig(anon=True))
    assert kw["anonymous"] is True and "access_key" not in kw


def test_no_credentials_leaves_pyarrows_chain(no_aws):
    kw = s3_worker_options(StorageConfig())
    assert "access_key" not in kw and "anonymous" not in kw
    assert kw["region"] == "us-east-1" and "endpoint_override" not in kw


def test_endpoint_without_scheme_defaults_to_https(no_aws):
    kw = s3_worker_options(StorageConfig(endpoint_url="minio.local:9000"))
    assert kw["endpoint_override"] == "minio.local:9000" and kw["scheme"] == "https"


def test_worker_filesystem_pickles_without_the_credentials(no_aws, tmp_path):
    import pyarrow.fs as pafs

    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "secret-facegen-unit")
    storage = Storage(StorageConfig(root=str(tmp_path), endpoint_url="http://127.0.0.1:1"))
    fs, path = worker_filesystem(storage, "s3://bucket/a/b")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/a/b"
    blob = pickle.dumps(fs)  # what a Ray worker receives, and what Tune writes into tuner.pkl
    assert b"AKIDEXAMPLE" not in blob and b"secret-facegen-unit" not in blob
    clone = pickle.loads(blob)
    assert clone.equals(fs)
    local, lpath = worker_filesystem(storage, str(tmp_path / "x"))
    assert isinstance(local, pafs.LocalFileSystem) and lpath.endswith("/x")
    assert worker_filesystem_path("s3://bucket/k") == "bucket/k"


def test_training_and_data_readers_use_the_same_builder():
    from facegen_ray import storage_workers as storage
    from facegen_ray.data import ingest
    from facegen_ray.train import trainer

    assert ingest.worker_filesystem is storage.worker_filesystem
    assert trainer.worker_filesystem is storage.worker_filesystem
