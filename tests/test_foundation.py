"""Config tree, storage (local and moto S3), registry and CLI error handling."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from facegen_ray.cli import main
from facegen_ray.config import (
    ConfigError,
    FacegenConfig,
    apply_overrides,
    load_config,
    parse_overrides,
    set_dotted,
    with_updates,
)
from facegen_ray.registry import Registry, RegistryError
from facegen_ray.storage import Layout, Storage, StorageError, fs_path_to_uri, join


# ---------------------------------------------------------------- config
def test_defaults_and_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  num_workers: 3\n  g_lr: 0.001\nmodel:\n  resolution: 32\n")
    cfg = load_config(cfg_file, ["train.num_workers=2", "loss.name=wgan-gp", "eval.metrics=[fid,kid]"])
    assert cfg.train.num_workers == 2  # --set wins over the file
    assert cfg.train.g_lr == 0.001
    assert cfg.model.resolution == 32
    assert cfg.loss.name == "wgan-gp" and cfg.loss.critic_steps == 5
    assert cfg.eval.metrics == ["fid", "kid"]


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.resolution=48", "model.resolution"),
        ("train.num_workers=0", "train.num_workers"),
        ("loss.name=hinge", "loss.name"),
        ("train.nonexistent=1", "train.nonexistent"),
        ("serve.min_replicas=5", "serve"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.num_workers"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_start_resolution_cannot_exceed_model_resolution():
    with pytest.raises(ConfigError, match="start_resolution"):
        load_config(None, ["model.resolution=16", "train.start_resolution=32"])


def test_with_updates_sets_nested_keys_and_leaves_the_original_alone():
    cfg = load_config(None, ["train.batch_size={4: 64, 16: 8}"])
    before = cfg.model_dump()
    model = {**cfg.model.model_dump(), "resolution": 32}
    new = with_updates(
        cfg, {"train.num_workers": 3, "train.batch_size.16": 4, "eval.metrics": ["fid", "kid"], "model": model}
    )
    assert isinstance(new, FacegenConfig) and new is not cfg
    assert new.train.num_workers == 3 and new.eval.metrics == ["fid", "kid"] and new.model.resolution == 32
    assert new.train.batch_size == {4: 64, 16: 4}  # "16" below a mapping field is the int key 16
    assert cfg.model_dump() == before  # the original is unchanged
    model["resolution"] = 64
    assert new.model.resolution == 32  # and holds no reference to the values passed
    # mappings and keys apply in order: a later one wins, a key below a section set earlier lands in it
    later = with_updates(
        cfg, {"train": {**cfg.train.model_dump(), "g_lr": 0.5}, "train.num_workers": 2}, {"train.num_workers": 4}
    )
    assert later.train.g_lr == 0.5 and later.train.num_workers == 4
    assert with_updates(cfg) == cfg  # nothing to update: an equal copy


@pytest.mark.parametrize(
    "key, message",
    [
        ("train.num_workerz", "unknown config field 'train.num_workerz' (did you mean train.num_workers?)"),
        ("trian.num_workers", "unknown config section 'trian' in 'trian.num_workers' (did you mean 'train'?)"),
        ("train.num_workers.x", "train.num_workers is not a mapping, so 'train.num_workers.x' does not exist"),
        ("train..g_lr", "is not a config field; use section.field"),
    ],
)
def test_with_updates_unknown_key_names_it(key, message):
    cfg = FacegenConfig()
    with pytest.raises(ConfigError) as e:
        with_updates(cfg, {key: 1})
    assert message in str(e.value)
    assert cfg == FacegenConfig()


def test_with_updates_validates_the_result():
    cfg = FacegenConfig()
    with pytest.raises(ConfigError) as e:
        with_updates(cfg, {"model.resolution": 48})
    assert "model.resolution" in str(e.value) and "power of two" in str(e.value)
    with pytest.raises(ConfigError, match="start_resolution"):
        with_updates(cfg, {"model.resolution": 16, "train.start_resolution": 32})
    with pytest.raises(ConfigError, match="train.num_workers"):
        with_updates(cfg, {"train.num_workers": 0})
    assert cfg == FacegenConfig()


def test_set_dotted_is_the_one_writer_of_dotted_keys():
    """--set strings and parsed overrides write through set_dotted: same dict either way,
    int keys below mapping fields, a non-mapping on the path is an error."""
    sets = ["train.batch_size.64=8", "train.batch_size={4: 2}", "train.batch_size.64=16", "train.g_lr=0.01"]
    by_string = apply_overrides({}, sets)
    by_value: dict = {}
    for key, value in parse_overrides(sets).items():
        set_dotted(by_value, key, value)
    assert by_string == by_value == {"train": {"batch_size": {4: 2, 64: 16}, "g_lr": 0.01}}
    with pytest.raises(ConfigError, match="'g_lr' is not a section"):
        set_dotted(by_value, "train.g_lr.x", 1)
    with pytest.raises(ConfigError, match=r"--set train.g_lr.x: 'g_lr' is not a section"):
        apply_overrides(by_string, ["train.g_lr.x=1"])


def test_batch_for_falls_back_to_nearest_smaller():
    cfg = load_config(None, ["train.batch_size={4: 64, 16: 8}"])
    assert cfg.train.batch_for(4) == 64
    assert cfg.train.batch_for(8) == 64
    assert cfg.train.batch_for(64) == 8


# ---------------------------------------------------------------- storage
def _storage_roundtrip(st: Storage, root: str):
    st.write_json(join(root, "a", "m.json"), {"x": 1})
    assert st.read_json(join(root, "a", "m.json")) == {"x": 1}
    st.write_bytes(join(root, "a", "b", "c.bin"), b"\x00\x01")
    assert st.read_bytes(join(root, "a", "b", "c.bin")) == b"\x00\x01"
    assert st.exists(join(root, "a", "m.json"))
    assert not st.exists(join(root, "nope"))
    files = st.find(join(root, "a"))
    assert files == sorted([join(root, "a", "b", "c.bin"), join(root, "a", "m.json")])
    assert st.create_exclusive(join(root, "x", "once"), b"1") is True
    assert st.create_exclusive(join(root, "x", "once"), b"2") is False
    assert st.read_bytes(join(root, "x", "once")) == b"1"
    st.copy_tree(join(root, "a"), join(root, "copy"))
    assert st.read_bytes(join(root, "copy", "b", "c.bin")) == b"\x00\x01"
    st.rm(join(root, "copy"), recursive=True)
    assert not st.exists(join(root, "copy", "b", "c.bin"))


def test_local_storage(tmp_path):
    _storage_roundtrip(Storage(), str(tmp_path / "root"))


def test_s3_storage_on_moto(s3_storage, s3_root):
    _storage_roundtrip(s3_storage, s3_root)


def test_local_write_is_atomic_under_concurrent_readers(tmp_path):
    """Readers of a file rewritten many times never see a partial document."""
    st = Storage()
    uri = str(tmp_path / "m.json")
    st.write_json(uri, {"v": 0, "pad": "x" * 100_000})
    errors: list[Exception] = []

    def reader():
        for _ in range(200):
            try:
                json.loads(open(uri).read())
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(100):
        st.write_json(uri, {"v": i, "pad": "x" * 100_000})
    t.join()
    assert errors == []


def test_create_exclusive_concurrent_single_winner(tmp_path):
    st = Storage()
    uri = str(tmp_path / "rec")
    wins = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(st.create_exclusive(uri, str(i).encode()))) for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_unwritable_storage_is_reported(tmp_path):
    # a path below a regular file cannot be created, whoever runs the test (root included)
    (tmp_path / "file-not-dir").write_text("I am a file")
    with pytest.raises(StorageError, match="not writable"):
        Storage().check_writable(join(str(tmp_path / "file-not-dir"), "sub"))
    assert (tmp_path / "file-not-dir").read_text() == "I am a file"


def test_layout_is_the_only_path_builder():
    lay = Layout("s3://bucket/prefix/")
    assert lay.registry() == "s3://bucket/prefix/models/registry.json"
    assert lay.run("r1") == "s3://bucket/prefix/runs/r1"
    assert Layout.dataset_version(lay.dataset("faces"), 3) == "s3://bucket/prefix/datasets/faces/v3"


# ---------------------------------------------------------------- registry
def _fake_model_dir(st: Storage, uri: str, tag: str) -> str:
    st.write_bytes(join(uri, "generator.pt"), tag.encode())
    st.write_json(join(uri, "model.json"), {"format": 1, "metadata": {"tag": tag}})
    return uri


def test_registry_register_promote_resolve(tmp_path):
    st = Storage()
    root = str(tmp_path / "root")
    reg = Registry(st, root)
    with pytest.raises(RegistryError, match="no model is serving"):
        reg.resolve("serving")
    m1 = _fake_model_dir(st, str(tmp_path / "m1"), "one")
    m2 = _fake_model_dir(st, str(tmp_path / "m2"), "two")
    assert reg.register(m1) == "v1"
    assert reg.register(m2, source="run-b") == "v2"
    with pytest.raises(RegistryError, match="already exists"):
        reg.register(m2, version="v2")
    with pytest.raises(RegistryError, match="invalid model version"):
        reg.register(m2, version="../escape")
    reg.promote("v1")
    reg.promote("v2")
    data = reg.load()
    assert data["serving"] == "v2"
    assert data["versions"]["v1"]["status"] == "retired"
    uri, version = reg.resolve("serving")
    assert version == "v2" and st.read_bytes(join(uri, "generator.pt")) == b"two"
    assert reg.resolve("v1")[0] == Layout(root).model("v1")
    assert reg.resolve(m1) == (m1, "")
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.promote("v9")
    with pytest.raises(RegistryError, match="neither a registered"):
        reg.resolve(str(tmp_path / "nothing"))
    with pytest.raises(RegistryError, match="not a model directory"):
        reg.register(str(tmp_path / "nothing"))
    # the registry on disk is intact after the refused operations
    assert reg.load()["serving"] == "v2" and set(reg.versions()) == {"v1", "v2"}


# ---------------------------------------------------------------- CLI
def test_cli_config_error_exits_2(capsys, tmp_path):
    rc = main(["prepare", str(tmp_path), str(tmp_path / "out"), "--set", "data.resolution=48"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data.resolution" in err and "power of two" in err


def test_cli_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "facegen_ray.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "prepare" in out.stdout


def test_fs_path_to_uri():
    """Ray reports checkpoint paths on its pyarrow filesystem; we hand users URIs."""
    assert fs_path_to_uri("bucket/p/run/checkpoint-1", "s3://bucket/p/run") == "s3://bucket/p/run/checkpoint-1"
    assert fs_path_to_uri("s3://bucket/k", "s3://bucket") == "s3://bucket/k"
    assert fs_path_to_uri("/data/runs/r/checkpoint-1", "/data/runs/r") == "/data/runs/r/checkpoint-1"
    assert fs_path_to_uri(None, "s3://bucket") is None
