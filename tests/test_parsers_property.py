"""Property tests for the parsers a user's bytes reach outside HTTP (issue 16): `--set` values,
sweep files, dataset manifests and image decoding in prepare. Each input either parses or
gives the parser's own clear error (ConfigError / SweepError / UserError / a counted reject),
never another exception. The HTTP bodies and feedback records have theirs in
test_serve_hostile.py."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facegen_ray.config import ConfigError, FacegenConfig, load_config
from facegen_ray.data.shards import read_manifest
from facegen_ray.data.transforms import REJECT_REASONS, Rejected, process_image
from facegen_ray.errors import UserError
from facegen_ray.storage import Storage
from facegen_ray.tune.spec import SweepError, load_sweep

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# real dotted keys, so the values reach the validators instead of stopping at "unknown field"
KEYS = [
    "train.num_workers",
    "train.g_lr",
    "train.batch_size",
    "train.betas",
    "loss.name",
    "loss.r1_gamma",
    "model.resolution",
    "model.fmap_base",
    "data.resolution",
    "data.min_sharpness",
    "eval.num_gen",
    "serve.max_batch_size",
    "storage.root",
    "gate.min_votes",
    "train",
    "model",
    "nosuch.key",
]
YAML_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "null",
            "-1",
            "0",
            "1e309",
            ".nan",
            "-.inf",
            "[1, 2",
            "{a: 1}",
            "[0.0, 0.99]",
            "yes",
            "'x'",
            "!!python/object:os.system ls",
            "&a [*a]",
            "\x00",
            "2" * 400,
            "{8: 0}",
        ]
    ),
    st.text(max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@FAST
@given(key=st.sampled_from(KEYS) | st.text(max_size=20), value=YAML_VALUES)
def test_set_values_parse_or_give_a_config_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as e:
        assert str(e).strip()
    else:
        assert isinstance(cfg, FacegenConfig)


@FAST
@given(raw=st.text(max_size=80))
def test_any_set_string_parses_or_gives_a_config_error(raw):
    try:
        load_config(None, [raw])
    except ConfigError as e:
        assert str(e).strip()


SWEEP_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["ok", "", "bad name", "../x", 3]),
        "metric": st.sampled_from(["fid", "kid", "is", None, 1]),
        "num_samples": st.sampled_from([1, 0, -1, "2", 1.5]),
        "overrides": st.sampled_from([{}, {"train.g_lr": 0.001}, {"train.g_lr": -1}, {"nosuch": 1}, [], "x"]),
        "search_space": st.sampled_from(
            [
                {},
                {"train.g_lr": {"grid": [0.001, 0.002]}},
                {"train.g_lr": {"loguniform": [0, 1]}},
                {"train.g_lr": {"uniform": [2, 1]}},
                {"loss.name": {"choice": ["wgan", "nope"]}},
                {"train.g_lr": {"grid": []}},
                {"train.g_lr": [1, 2]},
                {"x.y": {"grid": [1]}},
                {"model.resolution": {"randint": [3, 3]}},
                None,
            ]
        ),
        "scheduler": st.sampled_from([{"type": "fifo"}, {"type": "asha"}, {"type": "nope"}, "asha"]),
        "max_concurrent_trials": st.sampled_from([1, 0, "a"]),
        "eval": st.sampled_from([{}, {"num_gen": 1}, {"num_gen": 16, "num_real": 16}, {"every_images": 0}, []]),
        "extra_key": st.just(1),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=SWEEP_FIELDS)
def test_sweep_files_load_or_give_a_sweep_error(tmp_path, fields):
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(fields))
    try:
        sweep = load_sweep(path)
    except SweepError as e:
        assert str(e).strip()
    else:
        assert sweep.num_trials() >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_sweep_files_of_any_bytes_load_or_give_a_sweep_error(tmp_path, raw):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(raw)
    with pytest.raises(UserError):  # no sweep file of ≤200 random bytes is complete
        load_sweep(path)


MANIFESTS = st.one_of(
    st.binary(max_size=120),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"version": st.one_of(st.integers(-2, 3), st.text(max_size=3), st.none())}).map(
        lambda v: json.dumps(v).encode()
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=MANIFESTS)
def test_dataset_manifests_read_or_give_a_user_error(tmp_path, raw):
    dest = tmp_path / "faces"
    dest.mkdir(exist_ok=True)
    (dest / "manifest.json").write_bytes(raw)
    try:
        m = read_manifest(Storage(), str(dest))
    except UserError as e:
        assert str(e).strip()
    else:
        assert isinstance(m, dict) and "version" in m and m["path"]


# ---------------------------------------------------------------- image decoding in prepare
def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int = 60_000) -> bytes:
    """A 57-byte PNG whose header claims side x side RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 4), dtype=np.uint8), "CMYK").save(buf, "JPEG")
    return buf.getvalue()


def _animated_gif() -> bytes:
    rng = np.random.default_rng(2)
    frames = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _textured(side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (side, side, 3), dtype=np.uint8)


def _grey16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(4).random((48, 48)) * 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data,expect",
    [
        ("zero bytes", b"", "unreadable"),
        ("decompression bomb", _bomb_png(), "reject"),
        ("CMYK JPEG", _cmyk_jpeg(), "ok"),
        ("animated GIF (first frame)", _animated_gif(), "ok"),
        ("16-bit grey", _grey16(), "ok"),
        ("truncated JPEG", _cmyk_jpeg()[:300], "unreadable"),
    ],
)
def test_hostile_images_decode_or_are_rejected_by_reason(name, data, expect):
    try:
        out = process_image(data, resolution=16, min_size=16)
    except Rejected as e:
        assert expect != "ok", f"{name}: rejected ({e.reason}) but should decode"
        assert e.reason in REJECT_REASONS
        if expect != "reject":
            assert e.reason == expect
    else:
        assert expect == "ok", f"{name}: decoded but should be rejected"
        assert out.image and out.sha256


def _mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in cuts:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


@settings(max_examples=80, deadline=None)
@given(
    base=st.sampled_from(["png", "jpeg", "gif", "bomb"]),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    keep=st.floats(0, 1),
)
def test_mutated_images_decode_or_give_a_counted_reject(base, cuts, keep):
    src = {"png": _png_bytes(_textured()), "jpeg": _cmyk_jpeg(), "gif": _animated_gif(), "bomb": _bomb_png()}[base]
    data = _mutate(src, cuts)[: max(0, int(len(src) * keep))] if keep < 1 else _mutate(src, cuts)
    try:
        out = process_image(data, resolution=16, min_size=16)
    except Rejected as e:
        assert e.reason in REJECT_REASONS
    else:
        assert out.image and len(out.sha256) == 64


def test_admin_token_never_leaves_the_process_in_a_config(monkeypatch):
    """The token (env or serve.admin_token) is usable in the config object but absent from every
    dump and repr: those are what checkpoints, exports, sweep results and logs store."""
    monkeypatch.setenv("FACEGEN_ADMIN_TOKEN", "s3cr3t-env-token")
    cfg = load_config(None, ["serve.max_batch_size=4"])
    assert cfg.serve.admin_token == "s3cr3t-env-token"
    explicit = load_config(None, ["serve.admin_token=s3cr3t-set-token"])
    assert explicit.serve.admin_token == "s3cr3t-set-token"
    for c, secret in ((cfg, "s3cr3t-env-token"), (explicit, "s3cr3t-set-token")):
        for text in (json.dumps(c.model_dump(mode="json")), c.model_dump_json(), repr(c), str(c), repr(c.serve)):
            assert secret not in text
