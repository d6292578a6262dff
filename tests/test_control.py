"""Control over the face (issue 17): style mixing, interpolation and attribute edits in W.

In process, no Ray: the W-space maths (models/latent.py), fitting and storing directions
(models/directions.py), the CLI (`facegen generate --mix/--interpolate/--edit`, `facegen
directions`), the benchmark on a tiny model, and the HTTP API through the ingress's real FastAPI
app with an in-process generator stand-in that renders controlled requests with the replica's
own code (serve/control.py). The live Serve test is `test_controls_live` in tests/test_serve.py.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, start_session, tiny_model_dict
from PIL import Image

from facegen_ray.cli import main as cli_main
from facegen_ray.config import ModelConfig
from facegen_ray.errors import UserError
from facegen_ray.models import Generator, save_model_dir
from facegen_ray.models.attributes import AttributeNet, save_classifier, to_input
from facegen_ray.models.directions import (
    DIRECTIONS_FILE,
    Directions,
    boundaries,
    directions_doc,
    gram_schmidt,
    load_directions,
    save_directions,
)
from facegen_ray.models.latent import (
    Control,
    ControlError,
    apply_edit,
    control_ws,
    interpolate_ws,
    mix_ws,
    seed_ws,
    slerp,
    synthesize,
)
from facegen_ray.models.sampling import generate, seeds_to_z
from facegen_ray.provenance import inspect, read_metadata
from facegen_ray.serve import generation as gen
from facegen_ray.serve.messages import RenderRequest, RenderResult
from facegen_ray.storage import Storage


def _tiny_G(seed: int = 0, conditional: bool = False) -> Generator:
    cfg = ModelConfig(**tiny_model_dict(16, conditional=conditional))
    torch.manual_seed(seed)
    G = Generator(cfg)
    G.set_stage(G.max_stage, 1.0)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


def synthetic_directions(w_dim: int, names=("age", "gender", "race_white"), seed: int = 0) -> dict:
    """A directions.json document with random orthonormal vectors (for models without a classifier)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((w_dim, len(names))))
    return {
        "format": 1,
        "space": "w",
        "w_dim": w_dim,
        "num_samples": 0,
        "order": list(names),
        "directions": {
            n: {
                "vector": q[:, i].tolist(),
                "margin_scale": 0.5,
                "kind": "synthetic",
                "positive": n,
                "fit": {},
                "num_samples": {},
            }
            for i, n in enumerate(names)
        },
        "skipped": {},
    }


def save_calibrated_classifier(storage: Storage, uri: str, G, n: int = 96) -> None:
    """A real AttributeNet folder whose (random) heads are re-centred on G's faces, so that its
    predictions are spread over the classes (a trained classifier would be; an untrained one often
    answers one class)."""
    torch.manual_seed(1)
    classes = {"age": 8, "gender": 2, "race": 5}
    net = AttributeNet(classes, width=4).eval()
    images = generate(G, list(range(1000, 1000 + n)), 1.0)
    with torch.no_grad():
        h = net.trunk(to_input(images, 16)).mean(dim=(2, 3))
        for _k, head in net.heads.items():
            logits = head(h)
            head.bias -= logits.median(dim=0).values
    meta = {
        "format": 1,
        "classes": classes,
        "age_buckets": [0, 13, 20, 30, 40, 50, 60, 70],
        "resolution": 16,
        "width": 4,
        "held_out": {
            "age": {"accuracy": 0.5, "n": 10},
            "gender": {"accuracy": 0.8, "n": 10},
            "race": {"accuracy": 0.6, "n": 10},
        },
    }
    save_classifier(storage, uri, net, meta)


# ----------------------------------------------------------------------------- W-space maths
def test_mix_takes_the_other_faces_ws_from_the_crossover_on():
    G = _tiny_G()
    a, b = seed_ws(G, [1, 2], 0.7), seed_ws(G, [9], 0.7)
    for k in range(1, G.num_ws):
        m = mix_ws(a, b, k)
        assert torch.equal(m[:, :k], a[:, :k])
        assert torch.equal(m[:, k:], b[:, k:].expand(2, -1, -1))
    for bad in (0, G.num_ws, -1):
        with pytest.raises(ControlError, match="crossover"):
            mix_ws(a, b, bad)
    # through the request path: the image equals synthesising the hand-mixed ws
    ctl = Control.from_item({"mix": {"seed": 9, "crossover": 3}})
    assert np.array_equal(synthesize(G, control_ws(G, [1, 2], 0.7, None, ctl)), synthesize(G, mix_ws(a, b, 3)))


@pytest.mark.parametrize("space", ["w", "z"])
def test_interpolation_endpoints_are_the_two_faces(space):
    G = _tiny_G()
    face_a, face_b = generate(G, [4], 0.7), generate(G, [11], 0.7)
    start = synthesize(G, interpolate_ws(G, [4], 11, 0.0, space, 0.7))
    end = synthesize(G, interpolate_ws(G, [4], 11, 1.0, space, 0.7))
    assert np.abs(start.astype(int) - face_a.astype(int)).max() <= 1
    assert np.abs(end.astype(int) - face_b.astype(int)).max() <= 1
    assert torch.equal(interpolate_ws(G, [4], 11, 0.0, space, 0.7), seed_ws(G, [4], 0.7))
    mid = synthesize(G, interpolate_ws(G, [4], 11, 0.5, space, 0.7))
    assert not np.array_equal(mid, start) and not np.array_equal(mid, end)
    with pytest.raises(ControlError):
        interpolate_ws(G, [4], 11, 1.5, space)


def test_slerp_keeps_norms_and_w_interpolation_is_linear():
    z = seeds_to_z([3, 8], 64)
    a, b = z[:1], z[1:] * (z[0].norm() / z[1].norm())  # equal norms
    for t in np.linspace(0, 1, 11):
        s = slerp(a, b, float(t))
        assert torch.allclose(s.norm(), a.norm(), rtol=1e-5)
    a2, b2 = z[:1], 3 * z[1:]  # unequal norms: the norm moves linearly, the angle uniformly
    s = slerp(a2, b2, 0.25)
    assert torch.allclose(s.norm(), 0.75 * a2.norm() + 0.25 * b2.norm(), rtol=1e-5)
    cos = lambda u, v: float((u * v).sum() / (u.norm() * v.norm()))  # noqa: E731
    omega = np.arccos(cos(a2, b2))
    assert np.isclose(np.arccos(np.clip(cos(a2, s), -1, 1)), 0.25 * omega, atol=1e-4)
    G = _tiny_G()
    wa, wb = seed_ws(G, [1], 1.0), seed_ws(G, [2], 1.0)
    assert torch.allclose(interpolate_ws(G, [1], 2, 0.3, "w"), 0.7 * wa + 0.3 * wb, atol=1e-6)


def test_edit_of_strength_zero_is_the_identity_and_edits_are_linear():
    G = _tiny_G()
    d = Directions.from_doc(synthetic_directions(G.w_dim))
    ws = seed_ws(G, [5, 6], 0.7)
    assert torch.equal(d.edit(ws, {"age": 0.0, "gender": 0.0}), ws)
    ctl = Control.from_item({"edit": {"age": 0.0}})
    assert np.array_equal(synthesize(G, control_ws(G, [5, 6], 0.7, None, ctl, d)), synthesize(G, ws))
    moved = d.edit(ws, {"age": 2.0})
    delta = (moved - ws)[:, :, :]  # every layer moved by 2 * scale along the unit vector
    expected = 2.0 * 0.5 * d.vectors[0]
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-5)
    assert torch.allclose(
        apply_edit(ws, d.vectors[:2], [0.5, 0.5], [1.0, -1.0]) - ws,
        (0.5 * d.vectors[0] - 0.5 * d.vectors[1]).expand_as(ws),
        atol=1e-5,
    )


def test_control_errors_say_what_to_do():
    G = _tiny_G()
    d = Directions.from_doc(synthetic_directions(G.w_dim))
    with pytest.raises(ControlError, match="facegen directions"):
        control_ws(G, [1], 1.0, None, Control(edit={"age": 1.0}), None)
    with pytest.raises(ControlError, match="unknown attribute"):
        control_ws(G, [1], 1.0, None, Control(edit={"smile": 1.0}), d)
    with pytest.raises(ControlError, match=r"within \[-5, 5\]"):
        control_ws(G, [1], 1.0, None, Control(edit={"age": 6.0}), d)
    with pytest.raises(ControlError, match="cannot be combined"):
        Control.from_item({"mix": {"seed": 1, "crossover": 1}, "interpolate": {"seed_b": 2, "t": 0.5}})
    with pytest.raises(ControlError, match=f"between 1 and {G.num_ws - 1}"):
        control_ws(G, [1], 1.0, None, Control(mix_seed=2, crossover=G.num_ws), d)
    # a model trained without style mixing refuses mixing (and only mixing)
    with pytest.raises(ControlError, match="trained without style mixing"):
        control_ws(G, [1], 1.0, None, Control(mix_seed=2, crossover=1), d, style_mixing_prob=0.0)
    for p in (None, 0.9):
        assert control_ws(G, [1], 1.0, None, Control(mix_seed=2, crossover=1), d, style_mixing_prob=p).shape[0] == 1
    assert control_ws(G, [1], 1.0, None, Control(edit={"age": 1.0}), d, style_mixing_prob=0.0).shape[0] == 1


# ----------------------------------------------------------------------------- directions
def test_boundaries_recover_planted_directions_and_are_orthonormal():
    rng = np.random.default_rng(0)
    D, N = 16, 1200
    W = rng.standard_normal((N, D))
    age_dir = np.eye(D)[0]
    gender_dir = (np.eye(D)[0] + np.eye(D)[1]) / np.sqrt(2)  # correlated with age
    age = 40 + 15 * (W @ age_dir) + rng.normal(0, 2, N)
    gender = (W @ gender_dir + rng.normal(0, 0.1, N) > 0).astype(np.int64)
    race = np.argmax(W[:, 2:7] + rng.normal(0, 0.1, (N, 5)), axis=1)
    fits, skipped = boundaries(W, {"gender": gender, "race": race}, age, seed=0)
    names = [f["name"] for f in fits]
    assert names[:2] == ["age", "gender"] and not skipped
    V = np.stack([f["normal"] for f in fits])
    assert np.allclose(V @ V.T, np.eye(len(V)), atol=1e-8)  # orthonormal
    assert V[0] @ age_dir > 0.95  # age is first: kept as fitted
    assert V[1] @ np.eye(D)[1] > 0.9  # gender loses its age component
    assert fits[1]["fit"]["accuracy_held_out"] > 0.9 and fits[0]["fit"]["r2_held_out"] > 0.8
    doc = directions_doc(W, fits, skipped, weights_sha256="x" * 64, classifier={"uri": "c"}, num_samples=N, seed=0)
    d = Directions.from_doc(json.loads(json.dumps(doc)))
    assert d.names == names and np.isclose(d.scales[0], (W @ V[0]).std())
    assert torch.allclose(d.vectors @ d.vectors.T, torch.eye(len(names)), atol=1e-5)


def test_boundaries_skip_what_they_cannot_fit():
    W = np.random.default_rng(1).standard_normal((100, 8))
    fits, skipped = boundaries(
        W, {"gender": np.zeros(100, np.int64), "race": np.r_[np.zeros(98), [1, 1]].astype(int)}, np.full(100, 30.0)
    )
    assert fits == [] and {"age", "gender", "race_white", "race_black", "race_asian"} <= set(skipped)
    assert gram_schmidt([np.eye(3)[0], 2 * np.eye(3)[0], np.eye(3)[1]])[1] is None


def test_directions_file_roundtrip_and_mismatch(tmp_path):
    st = Storage()
    doc = synthetic_directions(32)
    doc["weights_sha256"] = "a" * 64
    save_directions(st, str(tmp_path), doc)
    assert (tmp_path / DIRECTIONS_FILE).is_file()
    assert load_directions(st, str(tmp_path), 32, "a" * 64).names == ["age", "gender", "race_white"]
    assert load_directions(st, str(tmp_path / "none")) is None
    with pytest.raises(UserError, match="other generator weights"):
        load_directions(st, str(tmp_path), 32, "b" * 64)
    with pytest.raises(UserError, match="w_dim"):
        load_directions(st, str(tmp_path), 64)
    (tmp_path / DIRECTIONS_FILE).write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_directions(st, str(tmp_path))


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("control-model")
    G = _tiny_G(3)
    save_model_dir(Storage(), str(root / "m"), G, G.cfg, {"version": "c1"})
    return str(root / "m")


def test_generate_mix_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "mix.png"
    assert (
        cli_main(
            ["generate", model_dir, "--mix", "0-2", "5,6", "--crossover", "3", "--truncation", "0.7", "--out", str(out)]
        )
        == 0
    )
    assert "style-mixing grid 3x2" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (4 * 18 - 2, 3 * 18 - 2, 3)  # (rows+1) x (cols+1) tiles of 16 px, 2 px padding
    G = gen.load_model(Storage(), model_dir, str(tmp_path)).G
    tile = lambda r, c: grid[r * 18 : r * 18 + 16, c * 18 : c * 18 + 16].astype(int)  # noqa: E731
    # the written grid carries the invisible watermark (~2 grey levels RMS): tiles match their
    # source up to it, and are far from the other tiles
    near = lambda a, b: np.abs(a - b.astype(int)).mean() < 3  # noqa: E731
    assert np.abs(tile(0, 0)).mean() < 3  # the blank corner
    col5, row1 = synthesize(G, seed_ws(G, [5], 0.7))[0], synthesize(G, seed_ws(G, [1], 0.7))[0]
    assert near(tile(0, 1), col5) and not near(tile(0, 1), row1)  # column source on top
    assert near(tile(2, 0), row1) and not near(tile(2, 0), col5)  # row source on the left
    mixed = synthesize(G, mix_ws(seed_ws(G, [1], 0.7), seed_ws(G, [6], 0.7), 3))[0]
    assert near(tile(2, 2), mixed) and not near(tile(2, 2), row1)
    report = inspect(out.read_bytes())  # provenance, as on every image facegen writes
    assert report["synthetic"] and report["watermark"]["found"] and report.get("consistent") is True
    assert report["metadata"]["edit"] == {"mode": "mix", "rows": [0, 1, 2], "cols": [5, 6], "crossover": 3}
    assert report["metadata"]["seed"] == [0, 1, 2, 5, 6] and report["metadata"]["psi"] == 0.7
    assert cli_main(["generate", model_dir, "--mix", "0", "1", "--crossover", str(G.num_ws), "--out", str(out)]) == 2
    assert "crossover must be between 1 and" in capsys.readouterr().err
    assert cli_main(["generate", model_dir, "--crossover", "2", "--out", str(out)]) == 2
    # a model trained without style mixing: exit 2 with the reason, nothing written
    G0 = _tiny_G(3)
    G0.cfg = G0.cfg.model_copy(update={"style_mixing_prob": 0.0})
    save_model_dir(Storage(), str(tmp_path / "nomix"), G0, G0.cfg, {"version": "n1"})
    out0 = tmp_path / "nomix.png"
    capsys.readouterr()
    assert cli_main(["generate", str(tmp_path / "nomix"), "--mix", "0", "1", "--out", str(out0)]) == 2
    assert "trained without style mixing" in capsys.readouterr().err and not out0.exists()


@pytest.mark.parametrize("space", ["w", "z"])
def test_generate_interpolation_strip_and_gif(model_dir, tmp_path, capsys, space):
    out = tmp_path / "lerp.png"
    assert (
        cli_main(
            ["generate", model_dir, "--interpolate", "3", "9", "--steps", "6", "--space", space, "--out", str(out)]
        )
        == 0
    )
    assert f"interpolation 3 -> 9 in {space.upper()}, 6 steps" in capsys.readouterr().out
    strip = np.asarray(Image.open(out).convert("RGB"))
    assert strip.shape == (16, 6 * 18 - 2, 3)
    with Image.open(tmp_path / "lerp.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 6 and gif.info.get("loop") == 0
    for f in (out, tmp_path / "lerp.gif"):  # the strip is watermarked; the GIF says it in its comment
        meta = read_metadata(f.read_bytes())
        assert meta["synthetic"] is True and meta["edit"] == {
            "mode": "interpolate",
            "seed_b": 9,
            "space": space,
            "steps": 6,
        }
    report = inspect(out.read_bytes())  # a 16 px high strip is below the watermark's 32 px period: not marked,
    assert (
        report["synthetic"] and not report["watermark"]["found"] and report["metadata"]["watermark"] is None
    )  # and says so
    assert cli_main(["generate", model_dir, "--interpolate", "3", "9", "--steps", "1", "--out", str(out)]) == 2
    assert cli_main(["generate", model_dir, "--interpolate", "3", "9", "--mix", "1", "2", "--out", str(out)]) == 2


def test_generate_edit_strip_needs_directions(tmp_path, capsys):
    G = _tiny_G(4)
    mdir = str(tmp_path / "m")
    save_model_dir(Storage(), mdir, G, G.cfg, {"version": "e1"})
    out = tmp_path / "edit.png"
    args = ["generate", mdir, "--seeds", "1,2", "--edit", "age=-2..2", "--steps", "5", "--out", str(out)]
    assert cli_main(args) == 2
    assert "facegen directions" in capsys.readouterr().err
    doc = synthetic_directions(G.w_dim)
    doc["weights_sha256"] = gen.load_model(Storage(), mdir, str(tmp_path)).digest
    save_directions(Storage(), mdir, doc)
    assert cli_main(args + ["--gif", str(tmp_path / "anim.gif")]) == 0
    strip = np.asarray(Image.open(out).convert("RGB"))
    assert strip.shape == (2 * 18 - 2, 5 * 18 - 2, 3)  # a strip per seed
    middle = np.abs(strip[:16, 36:52].astype(int) - generate(G, [1], 0.7)[0].astype(int)).mean()
    ends = np.abs(strip[:16, :16].astype(int) - strip[:16, 64:80].astype(int)).mean()
    assert middle < 6 and ends > 2 * middle  # middle = strength 0 (up to the watermark); the ends differ
    assert read_metadata(out.read_bytes())["edit"] == {"mode": "edit", "edit": {"age": [-2.0, 2.0]}, "steps": 5}
    with Image.open(tmp_path / "anim.gif") as gif:
        assert gif.n_frames == 5
    assert cli_main(["generate", mdir, "--edit", "smile=1", "--out", str(out)]) == 2
    assert "unknown attribute" in capsys.readouterr().err
    assert cli_main(["generate", mdir, "--edit", "age=-9..2", "--out", str(out)]) == 2
    assert cli_main(["generate", mdir, "--edit", "age", "--out", str(out)]) == 2


def test_directions_command_writes_orthonormal_directions(tmp_path, capsys):
    G = _tiny_G(5)
    mdir = str(tmp_path / "m")
    st = Storage()
    save_model_dir(st, mdir, G, G.cfg, {"version": "d1"})
    save_calibrated_classifier(st, str(tmp_path / "attr"), G)
    assert cli_main(["directions", mdir, "--attribute-model", str(tmp_path / "attr"), "--num-samples", "240"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["directions_file"].endswith(DIRECTIONS_FILE) and out["num_samples"] == 240
    assert out["classifier_held_out"]["gender"]["accuracy"] == 0.8
    model = gen.load_model(st, mdir, str(tmp_path))
    d = model.directions
    assert d is not None and d.names and set(d.names) | set(out["skipped"]) >= {"age", "gender"}
    assert torch.allclose(d.vectors @ d.vectors.T, torch.eye(len(d.names)), atol=1e-4)
    assert d.doc["weights_sha256"] == model.digest and all(s > 0 for s in d.scales)
    assert model.describe()["directions"] == d.names
    assert cli_main(["directions", mdir, "--attribute-model", str(tmp_path / "nope")]) == 2


@pytest.mark.slow  # runs benchmarks/directions.py end to end (~1 min); the directions maths and CLI stay in the default run
def test_directions_benchmark_on_a_tiny_model(tmp_path):
    G = _tiny_G(5)
    mdir = str(tmp_path / "m")
    st = Storage()
    save_model_dir(st, mdir, G, G.cfg, {"version": "b1"})
    save_calibrated_classifier(st, str(tmp_path / "attr"), G)
    assert cli_main(["directions", mdir, "--attribute-model", str(tmp_path / "attr"), "--num-samples", "240"]) == 0
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "directions.py"),
            "--model",
            mdir,
            "--attribute-model",
            str(tmp_path / "attr"),
            "--num-faces",
            "24",
            "--strength",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["benchmark"] == "directions" and doc["num_faces"] == 24
    names = gen.load_model(st, mdir, str(tmp_path)).directions.names
    assert set(doc["directions"]) == set(names)
    for _name, v in doc["directions"].items():
        assert "target_change" in v and set(v["changes"]) >= {"age_years", "p_female", "p_race_white"}
    if "age" in doc["directions"]:
        assert doc["directions"]["age"]["target"] == "age_years"


# ----------------------------------------------------------------------------- HTTP, in process
class _Method:
    def __init__(self, fn) -> None:
        self.remote = fn


class ControlGenerator:
    """The GeneratorDeployment handle in process: plain requests via generation.generate, requests
    with controls via serve/control.py (the replica's own code for them)."""

    def __init__(self, model: gen.LoadedModel) -> None:
        self.model = model
        self.render = _Method(self._render)
        self.render_many = _Method(self._render_many)  # the ingress's micro-batched calls (serve/hop.py)
        self.info = _Method(self._info)

    async def _render_many(self, reqs: list[RenderRequest]) -> list[RenderResult]:
        return [await self._render(r) for r in reqs]

    async def _render(self, req: RenderRequest) -> RenderResult:
        from facegen_ray.serve.control import control_of, render_controlled

        try:
            ctl = control_of(req.item())
        except UserError as e:
            return RenderResult.failure(422, str(e))
        if ctl is None:
            images = gen.generate(self.model.G, req.seeds, req.truncation)
        else:
            (images,) = render_controlled(self.model, [(list(req.seeds), req.truncation, None, ctl)], 8)
            if isinstance(images, UserError):
                return RenderResult.failure(422, str(images))
        return RenderResult.success(self.model.describe(), images)

    async def _info(self) -> dict:
        return {**self.model.describe(), "replica": "in-process", "generation": 1}


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    from ray import serve
    from starlette.testclient import TestClient

    from facegen_ray.data.feedback import FeedbackStore
    from facegen_ray.serve.ingress import Ingress, api

    root = str(tmp_path_factory.mktemp("control-http"))
    st = Storage()
    G = _tiny_G(6)
    save_model_dir(st, f"{root}/exports/m", G, G.cfg, {"version": "k1"})
    save_model_dir(st, f"{root}/exports/bare", G, G.cfg, {"version": "k0"})
    nomix_cfg = G.cfg.model_copy(update={"style_mixing_prob": 0.0})
    save_model_dir(st, f"{root}/exports/nomix", G, nomix_cfg, {"version": "k2"})
    doc = synthetic_directions(G.w_dim)
    doc["weights_sha256"] = gen.load_model(st, f"{root}/exports/m", root).digest
    save_directions(st, f"{root}/exports/m", doc)
    model = gen.load_model(st, f"{root}/exports/m", root)
    bare = gen.load_model(st, f"{root}/exports/bare", root)
    nomix = gen.load_model(st, f"{root}/exports/nomix", root)
    cfg = {"max_request_bytes": 16_384, "default_truncation": 0.7}
    inst = Ingress(ControlGenerator(model), None, root, {}, cfg, None)
    inst_bare = Ingress(ControlGenerator(bare), None, root, {}, cfg, None)
    inst_nomix = Ingress(ControlGenerator(nomix), None, root, {}, cfg, None)
    current = {"inst": inst}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=current["inst"]))
        with TestClient(api, raise_server_exceptions=False) as c:
            start_session(c)
            yield SimpleNamespace(
                client=c,
                G=G,
                model=model,
                store=FeedbackStore(st, root),
                current=current,
                inst=inst,
                bare=inst_bare,
                nomix=inst_nomix,
            )
        current["inst"] = inst


def _img(data: str) -> np.ndarray:
    return gen.decode_png(base64.b64decode(data))


def test_http_healthz_lists_directions(http):
    h = http.client.get("/healthz").json()
    assert h["directions"] == ["age", "gender", "race_white"] and h["num_ws"] == http.G.num_ws
    assert h["max_edit_strength"] == 5.0


def test_http_mix_interpolate_edit(http):
    c, G = http.client, http.G
    plain = c.post("/generate", json={"seed": 7, "num_images": 2}).json()["images"]
    r = c.post("/generate", json={"seed": 7, "num_images": 2, "mix": {"seed": 40, "crossover": 2}})
    assert r.status_code == 200, r.text
    mixed = r.json()["images"]
    assert [m["seed"] for m in mixed] == [7, 8]
    assert {m["image_id"] for m in mixed}.isdisjoint({p["image_id"] for p in plain})
    want = synthesize(G, mix_ws(seed_ws(G, [7, 8], 0.7), seed_ws(G, [40], 0.7), 2))
    assert np.array_equal(_img(mixed[0]["data"]), want[0]) and np.array_equal(_img(mixed[1]["data"]), want[1])
    rec = http.store.get_image_record(mixed[0]["image_id"])
    assert rec["control"] == {"mix": {"seed": 40, "crossover": 2}} and rec["seed"] == 7
    assert http.store.get_image_record(plain[0]["image_id"]).get("control") is None

    end = c.post("/generate", json={"seed": 7, "interpolate": {"seed_b": 40, "t": 1.0, "space": "z"}}).json()["images"][
        0
    ]
    assert np.abs(_img(end["data"]).astype(int) - generate(G, [40], 0.7)[0].astype(int)).max() <= 1
    half = c.post("/generate", json={"seed": 7, "interpolate": {"seed_b": 40, "t": 0.5}}).json()["images"][0]
    assert http.store.get_image_record(half["image_id"])["control"] == {
        "interpolate": {"seed_b": 40, "t": 0.5, "space": "w"}
    }

    e = c.post("/generate", json={"seed": 7, "edit": {"age": 1.5, "gender": -1.0}, "mix": {"seed": 40, "crossover": 2}})
    assert e.status_code == 200, e.text
    img = e.json()["images"][0]
    ws = http.model.directions.edit(
        mix_ws(seed_ws(G, [7], 0.7), seed_ws(G, [40], 0.7), 2), {"age": 1.5, "gender": -1.0}
    )
    assert np.array_equal(_img(img["data"]), synthesize(G, ws)[0])
    rec = http.store.get_image_record(img["image_id"])
    assert rec["control"]["edit"] == {"age": 1.5, "gender": -1.0}
    # feedback on the edited face records the edit
    f = c.post("/feedback", json={"image_id": img["image_id"], "approved": True})
    assert f.status_code == 201
    assert http.store.get_feedback(f.json()["feedback_id"])["control"]["edit"] == {"age": 1.5, "gender": -1.0}
    # the same edited request again -> the same image id (deterministic)
    again = c.post(
        "/generate", json={"seed": 7, "edit": {"gender": -1.0, "age": 1.5}, "mix": {"seed": 40, "crossover": 2}}
    )
    assert again.json()["images"][0]["image_id"] == img["image_id"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"seed": 1, "edit": {"smile": 1.0}}, "unknown attribute"),
        ({"seed": 1, "edit": {"age": 5.5}}, "less than or equal to 5"),
        ({"seed": 1, "edit": {"age": -7}}, "greater than or equal to -5"),
        ({"seed": 1, "edit": {"Age!": 1}}, "pattern"),
        ({"seed": 1, "mix": {"seed": 2, "crossover": 0}}, "greater than or equal to 1"),
        ({"seed": 1, "mix": {"seed": 2, "crossover": 63}}, "crossover must be between 1 and"),
        ({"seed": 1, "mix": {"seed": 2}}, "crossover"),
        ({"seed": 1, "interpolate": {"seed_b": 2, "t": 1.01}}, "less than or equal to 1"),
        ({"seed": 1, "interpolate": {"seed_b": 2, "t": 0.5, "space": "x"}}, "'w' or 'z'"),
        ({"seed": 1, "mix": {"seed": 2, "crossover": 1}, "interpolate": {"seed_b": 2, "t": 0.5}}, "cannot be combined"),
        ({"seed": 1, "mix": {"seed": 2, "crossover": 1, "extra": 1}}, "extra"),
    ],
)
def test_http_bad_controls_are_422_with_a_message(http, body, fragment):
    r = http.client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    assert fragment in json.dumps(r.json()["detail"])


def test_http_model_without_directions_says_how_to_make_them(http):
    http.current["inst"] = http.bare
    try:
        assert http.client.get("/healthz").json()["directions"] is None
        r = http.client.post("/generate", json={"seed": 1, "edit": {"age": 1.0}})
        assert r.status_code == 422 and "facegen directions" in r.json()["detail"]
        assert http.client.post("/generate", json={"seed": 1, "mix": {"seed": 3, "crossover": 1}}).status_code == 200
    finally:
        http.current["inst"] = http.inst


def test_http_mixing_on_a_model_trained_without_it_is_422(http):
    assert http.client.get("/healthz").json()["style_mixing"] is True
    http.current["inst"] = http.nomix
    try:
        assert http.client.get("/healthz").json()["style_mixing"] is False
        r = http.client.post("/generate", json={"seed": 1, "mix": {"seed": 3, "crossover": 1}})
        assert r.status_code == 422 and "trained without style mixing" in r.json()["detail"]
        assert http.client.post("/generate", json={"seed": 1}).status_code == 200
        assert (
            http.client.post("/generate", json={"seed": 1, "interpolate": {"seed_b": 2, "t": 0.5}}).status_code == 200
        )
    finally:
        http.current["inst"] = http.inst


def test_page_has_direction_sliders_and_mix_control():
    static = Path(REPO) / "facegen_ray" / "serve" / "static"
    page = (static / "index.html").read_text() + (static / "index.js").read_text()  # the script is its own file
    for marker in (
        'id="controls"',
        'id="sliders"',
        'id="mix-seed"',
        'id="mix-crossover"',
        "/healthz",
        "edit",
        "mix",
        "info.style_mixing === false",
    ):
        assert marker in page
