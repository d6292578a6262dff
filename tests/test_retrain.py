"""The feedback loop: feedback merge, warm-started retrain (Ray Train), the promotion gate.

One module-scoped world: the real `facegen prepare` of 48 sample faces at 16 px, a tiny 8 px
model trained for 96 images and promoted (v1), and feedback records made with FeedbackStore
on real images of that model (the way the Serve app records them). The gate runs the real
Inception on 16 generated / 24 real images.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from facegen_ray.cli import main as cli_main
from facegen_ray.config import FacegenConfig
from facegen_ray.storage import Layout, Storage, join
from tests.conftest import tiny_model_dict

BASE_TRAIN = {
    "run_name": "base",
    "start_resolution": 4,
    "stabilize_images": 32,
    "fade_images": 16,
    "total_images": 96,
    "batch_size": {4: 16, 8: 16},
    "checkpoint_every_images": 48,
    "log_every_images": 48,
    "keep_checkpoints": 2,
    "shuffle_buffer": 16,
    "ema_half_life_images": 200,
    "max_failures": 0,
    "seed": 3,
    "amp": False,
}
GATE_SETS = [
    "--num-gen",
    "16",
    "--num-real",
    "24",
    "--set",
    "eval.batch_size=16",
    "--set",
    "eval.device=cpu",
    "--set",
    "eval.kid_subsets=4",
]


def base_cfg(root: str) -> FacegenConfig:
    return FacegenConfig.model_validate(
        {
            "storage": {"root": root},
            "model": tiny_model_dict(8),
            "loss": {"name": "nonsaturating", "r1_gamma": 1.0, "r1_interval": 4},
            "train": BASE_TRAIN,
        }
    )


def record(store, loaded, seed: int, psi: float) -> str:
    """Render one image of the loaded model and record it like the Serve app does."""
    from facegen_ray.serve import generation as gen

    img = gen.generate(loaded.G, [seed], psi)[0]
    iid = gen.image_id(loaded.version, loaded.digest, seed, psi, None)
    store.record_image(
        iid,
        gen.encode_image(img, "png"),
        {
            "seed": seed,
            "truncation": psi,
            "attributes": None,
            "condition": None,
            "model_version": loaded.version,
            "model_uri": loaded.uri,
            "weights_sha256": loaded.digest,
            "resolution": int(img.shape[0]),
        },
    )
    return iid


@pytest.fixture(scope="module")
def world(ray_session, sample_zip, tmp_path_factory):
    """root with datasets/faces v1 (16 px), model v1 serving (8 px, 96 images), feedback."""
    from facegen_ray.data.feedback import FeedbackStore
    from facegen_ray.registry import Registry
    from facegen_ray.serve.generation import load_model
    from facegen_ray.train.trainer import train

    root = str(tmp_path_factory.mktemp("retrain-root"))
    faces = Layout(root).dataset("faces")
    assert cli_main(["prepare", str(sample_zip), faces, "--resolution", "16", "--limit", "48"]) == 0
    out = train(base_cfg(root), export=True)
    assert out.version == "v1" and out.images_seen == 96
    storage = Storage()
    Registry(storage, root).promote("v1")
    loaded = load_model(storage, "serving", root)
    store = FeedbackStore(storage, root)
    ids = {
        "approved": record(store, loaded, 0, 0.7),
        "approved2": record(store, loaded, 1, 0.7),
        "tie": record(store, loaded, 2, 0.7),
        "rejected": record(store, loaded, 3, 0.7),
        "same_a": record(store, loaded, 10, 0.0),  # psi 0: every seed renders w_avg -> same pixels
        "same_b": record(store, loaded, 11, 0.0),
        "unvoted": record(store, loaded, 4, 0.7),
    }
    store.add_feedback(ids["approved"], True, 5, client_key="alice")
    store.add_feedback(ids["approved2"], True, client_key="alice")
    store.add_feedback(ids["approved2"], True, 4, client_key="bob")
    store.add_feedback(ids["tie"], True, client_key="alice")
    store.add_feedback(ids["tie"], False, client_key="bob")
    store.add_feedback(ids["rejected"], False, 1, client_key="alice")
    store.add_feedback(ids["same_a"], True, client_key="alice")
    store.add_feedback(ids["same_b"], True, client_key="alice")
    return {"root": root, "faces": faces, "ids": ids, "store": store, "loaded": loaded, "base": out}


# The merge's poisoning brakes (data/feedback_brakes.py: 2 distinct raters, new-rater quarantine,
# a cap of 5% of the base) are tested in tests/test_feedback_brakes.py; these tests check the
# merge mechanics with the brakes released (their feedback records are seconds old).
NO_BRAKES = [
    "--set",
    "retrain.min_approvals=1",
    "--set",
    "retrain.quarantine_new_rater_minutes=0",
    "--set",
    "retrain.max_feedback_share=1",
]


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- merge
def test_selection_rule_matches_approved_images(world):
    from facegen_ray.data.feedback import approved_images
    from facegen_ray.data.feedback_merge import select_feedback

    storage, root, ids = Storage(), world["root"], world["ids"]
    items, skipped = select_feedback(storage, root, 1)
    assert [i.image_id for i in items] == [a["image_id"] for a in approved_images(storage, root, 1)]
    assert {i.image_id for i in items} == {ids["approved"], ids["approved2"], ids["same_a"], ids["same_b"]}
    assert skipped["rejected"] == 2  # the tie and the plain rejection; unvoted images are not counted
    items2, skipped2 = select_feedback(storage, root, 2)
    assert [i.image_id for i in items2] == [ids["approved2"]] and skipped2["too_few_approvals"] == 3
    assert sorted(items2[0].feedback_ids) == items2[0].feedback_ids and len(items2[0].feedback_ids) == 2
    _, skipped3 = select_feedback(storage, root, 1, min_rating=4.5)
    assert skipped3["low_rating"] == 1  # approved2's mean rating is 4; unrated images pass


def test_fit_resolution_round_trips_through_the_training_downsample():
    from facegen_ray.data.feedback_merge import fit_resolution
    from facegen_ray.data.shards import downsample

    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    up = fit_resolution(arr, 16)
    assert up.shape == (16, 16, 3) and np.array_equal(downsample(up[None], 8)[0].astype(np.uint8), arr)
    down = fit_resolution(np.repeat(np.repeat(arr, 2, 0), 2, 1), 8)
    assert np.array_equal(down, arr)
    assert fit_resolution(arr, 8) is arr
    assert fit_resolution(arr, 12) is None and fit_resolution(arr[:, :6], 8) is None


def test_labels_from_conditional_records():
    from facegen_ray.data.feedback_merge import _labels

    assert _labels({"condition": None, "attributes": None}) == (None, None, None, None)
    assert _labels({"condition": [3, 1, 2], "attributes": {"age": 35, "gender": 1, "race": 2}}) == (
        35,
        1,
        2,
        "requested",
    )
    assert _labels({"condition": [-1, 0, -1], "attributes": None}) == (None, 0, None, "requested")
    assert _labels({"condition": [-1, -1, -1], "attributes": {}}) == (None, None, None, None)


def test_merge_only_writes_a_new_version(world, capsys):
    import pyarrow.parquet as pq

    from facegen_ray.data.shards import decode_image, list_versions, read_manifest, shard_uris

    storage, root, faces, ids = Storage(), world["root"], world["faces"], world["ids"]
    v1_manifest = storage.read_bytes(join(faces, "v1", "manifest.json"))
    v1_files = {p: storage.size(p) for p in storage.find(join(faces, "v1"))}
    rc = cli_main(["retrain", "--merge-only", "--root", root, "--set", "retrain.feedback_weight=2.5", *NO_BRAKES])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = _last_json(out)
    ds = doc["dataset"]
    assert ds["version"] == 2 and ds["base_version"] == 1 and ds["merged"] == 3  # one of the psi=0 twins
    assert ds["skipped"]["rejected"] == 2 and ds["skipped"]["duplicate"] == 1
    assert "[facegen] merged 3 approved image(s)" in out
    # the base version is untouched; the dataset pointer moved to v2
    assert storage.read_bytes(join(faces, "v1", "manifest.json")) == v1_manifest
    assert {p: storage.size(p) for p in storage.find(join(faces, "v1"))} == v1_files
    m = read_manifest(storage, faces)
    assert m["version"] == 2 and m["num_images"] == read_manifest(storage, join(faces, "v1"))["num_images"] + 3
    fb = m["feedback"]
    assert fb["merged"] == 3 and fb["rows"] == 3 and fb["base_version"] == 1 and fb["weight"] == 2.5
    assert fb["reference"] == join(faces, "v1") and set(fb["image_ids"]) < set(ids.values())
    assert ids["tie"] not in fb["image_ids"] and ids["rejected"] not in fb["image_ids"]
    assert len(fb["feedback_ids"]) == 4  # approved (1) + approved2 (2) + one twin (1)
    rows = [r for u in shard_uris(m) for r in pq.read_table(u).to_pylist()]
    assert len(rows) == m["num_images"] and len({r["sha256"] for r in rows}) == len(rows)
    fbrows = [r for r in rows if r["origin"] == "feedback"]
    assert len(fbrows) == 3 and all(
        r["weight"] == 2.5 and r["age"] is None and r["label_source"] is None for r in fbrows
    )
    assert all(r["origin"] == "dataset" and r["weight"] == 1.0 for r in rows if r not in fbrows)
    # the stored pixels are the approved image, upscaled 8 -> 16 exactly
    row = next(r for r in fbrows if ids["approved"] in r["source"])
    gen8 = decode_image(world["store"].read_image(ids["approved"]))
    assert np.array_equal(decode_image(row["image"])[::2, ::2], gen8)
    # nothing new to merge now: exit 2, no version written
    rc = cli_main(["retrain", "--merge-only", "--root", root, *NO_BRAKES])
    err = capsys.readouterr().err
    assert (
        rc == 2 and "no new approved feedback images" in err and "in_base=4" in err
    )  # both psi=0 twins match the merged one
    assert list_versions(storage, faces) == [1, 2]


def test_no_serving_model_unknown_dataset_unknown_candidate_exit_2(world, tmp_path, capsys):
    from facegen_ray.data.shards import list_versions

    empty = str(tmp_path / "empty")
    assert cli_main(["retrain", "--root", empty]) == 2
    assert "no model is serving" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(empty, "datasets"))
    assert cli_main(["retrain", "--root", world["root"], "--dataset", str(tmp_path / "nope")]) == 2
    assert "no dataset at" in capsys.readouterr().err
    assert cli_main(["gate", "v99", "--root", world["root"]]) == 2
    assert "unknown model version 'v99'" in capsys.readouterr().err
    assert cli_main(["gate", "v1", "--root", world["root"]]) == 2  # v1 is the serving model
    assert "already the serving model" in capsys.readouterr().err
    assert list_versions(Storage(), world["faces"]) in ([1], [1, 2])


# ---------------------------------------------------------------------------- warm start
def test_warm_start_loads_the_serving_checkpoint(world):
    from facegen_ray.lifecycle.retrain import serving_source
    from facegen_ray.train.checkpoint import load_checkpoint
    from facegen_ray.train.distributed import module_digest
    from facegen_ray.train.steps import GANSteps
    from facegen_ray.train.warm_start import warm_start

    storage = Storage()
    src = serving_source(storage, world["root"])
    assert src.kind == "checkpoint" and src.init_from.endswith("checkpoint-000000000096") and src.images_seen == 96
    cfg = base_cfg(world["root"]).model_copy(deep=True)
    cfg.train.seed = 12345  # a different fresh init
    gan = GANSteps(cfg, torch.device("cpu"))
    state, _ = load_checkpoint(src.init_from, 0)
    ref = GANSteps(cfg, torch.device("cpu"))
    ref.load_state_dict(state)
    assert module_digest(gan.G) != module_digest(ref.G)
    counters = warm_start(gan, storage, src.init_from)
    assert counters["images_seen"] == 96 and counters["d_steps"] == state["counters"]["d_steps"]
    for name in ("G", "D", "G_ema"):
        assert module_digest(getattr(gan, name)) == module_digest(getattr(ref, name)), name
    assert gan.opt_g.state_dict()["state"].keys() == ref.opt_g.state_dict()["state"].keys()
    # model-directory source: G and G_ema = the exported weights, D stays fresh
    gan2 = GANSteps(cfg, torch.device("cpu"))
    d_before = module_digest(gan2.D)
    c2 = warm_start(gan2, storage, src.model_uri)
    assert c2["images_seen"] == 96 and module_digest(gan2.D) == d_before
    assert module_digest(gan2.G_ema) == module_digest(ref.G_ema) == module_digest(gan2.G)


# ---------------------------------------------------------------------------- retrain + gate
def test_retrain_end_to_end_promotes_with_huge_tolerance(world, capsys):
    from facegen_ray.registry import Registry

    storage, root, ids = Storage(), world["root"], world["ids"]
    world["store"].add_feedback(ids["unvoted"], True, client_key="carol")  # one new approval since the merge
    rc = cli_main(["retrain", "--root", root, "--images", "32", "--tolerance", "1e6", *GATE_SETS, *NO_BRAKES])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = _last_json(out)
    assert doc["serving_before"] == "v1" and doc["candidate"] == "v2" and doc["decision"] == "promoted"
    assert doc["dataset"]["merged"] == 1 and doc["dataset"]["version"] == 3 and doc["warm_start"] == "checkpoint"
    assert doc["images_seen"] >= 96 + 32 and doc["serving"] == "v2"
    for side in ("candidate_metrics", "serving_metrics"):
        m = doc[side]
        assert m["num_gen"] == 16 and m["num_real"] == 24 and m["fid"] > 0 and m["data_version"] == 1
    assert doc["serving_metrics"]["reference_cached"] is True  # same reals, cached once
    assert "[facegen] warm start from" in out or "warm start:" in out
    reg = Registry(storage, root)
    assert reg.serving() == "v2" and reg.get("v1")["status"] == "retired"
    entry = reg.get("v2")
    assert (
        entry["metrics"]["gate"]["decision"] == "promoted"
        and entry["metrics"]["fid"] == doc["candidate_metrics"]["fid"]
    )
    assert entry["metrics"]["gate"]["serving"]["fid"] == doc["serving_metrics"]["fid"]
    assert entry["metrics"]["retrain"]["init_from"].endswith("checkpoint-000000000096")
    assert storage.read_json(doc["gate_report"])["decision"] == "promoted"
    # the candidate run really warm-started: it started counting at the serving model's 96 images
    run_json = storage.read_json(join(Layout(root).run(doc["run"]), "run.json"))
    assert run_json["config"]["train"]["init_from"].endswith("checkpoint-000000000096")
    assert run_json["config"]["train"]["start_resolution"] == 8 and run_json["dataset"].endswith("/v3")
    history = storage.read_json(join(Layout(root).run(doc["run"]), "history.json"))
    entries = history if isinstance(history, list) else history.get("history", [])
    assert entries and min(e["images_seen"] for e in entries) > 96 and all(e["resolution"] == 8 for e in entries)


def test_gate_rejects_with_impossible_tolerance(world, capsys):
    from facegen_ray.registry import Registry

    storage, root = Storage(), world["root"]
    reg = Registry(storage, root)
    assert reg.serving() == "v2", "runs after the end-to-end test"
    rc = cli_main(["gate", "v1", "--root", root, "--tolerance", "-1", *GATE_SETS])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = _last_json(out)
    assert doc["decision"] == "rejected" and doc["serving"] == "v2" and "FAILS" in " ".join(doc["reasons"])
    assert reg.serving() == "v2"
    entry = reg.get("v1")
    assert entry["metrics"]["gate"]["decision"] == "rejected" and entry["metrics"]["gate"]["serving_version"] == "v2"
    assert entry["metrics"]["gate"]["candidate"]["fid"] == doc["candidate_metrics"]["fid"]
    # --require-promotion turns a rejection into exit 1; the pointer still does not move
    assert cli_main(["gate", "v1", "--root", root, "--tolerance", "-1", "--require-promotion", *GATE_SETS]) == 1
    capsys.readouterr()
    assert reg.serving() == "v2"


def test_allow_empty_no_gate_and_refusals_write_nothing(world, capsys):
    """No approved feedback -> exit 2 and no new dataset version; --set model.* -> exit 2 before
    any write; --allow-empty --no-gate -> a candidate trained on the base data, registered but
    not evaluated or promoted."""
    from facegen_ray.data.shards import list_versions
    from facegen_ray.registry import Registry

    storage, root = Storage(), world["root"]
    reg = Registry(storage, root)
    serving = reg.serving()
    versions = list_versions(storage, world["faces"])
    assert cli_main(["retrain", "--root", root, "--min-approvals", "9", "--images", "32"]) == 2
    assert "no new approved feedback images" in capsys.readouterr().err
    assert cli_main(["retrain", "--root", root, "--set", "model.w_dim=16"]) == 2
    assert "keeps the serving model's architecture" in capsys.readouterr().err
    assert list_versions(storage, world["faces"]) == versions
    rc = cli_main(["retrain", "--root", root, "--min-approvals", "9", "--allow-empty", "--no-gate", "--images", "32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = _last_json(out)
    assert doc["decision"] is None and doc["serving"] == serving and doc["dataset"]["merged"] == 0
    assert doc["dataset"]["uri"] == storage.read_json(join(world["faces"], "manifest.json"))["path"]
    assert list_versions(storage, world["faces"]) == versions
    entry = Registry(storage, root).get(doc["candidate"])
    assert entry["status"] == "candidate" and "gate" not in entry.get("metrics", {})
    assert Registry(storage, root).serving() == serving


def test_init_from_with_another_architecture_is_refused(world, tmp_path, capsys):
    from facegen_ray.errors import UserError
    from facegen_ray.lifecycle.retrain import serving_source
    from facegen_ray.train.warm_start import check_init_from

    storage = Storage()
    src = serving_source(storage, world["root"])
    same = base_cfg(world["root"]).model
    assert check_init_from(storage, src.init_from, same) == "checkpoint"
    assert check_init_from(storage, src.model_uri, same) == "model"
    other = same.model_copy(update={"w_dim": same.w_dim * 2})
    for uri in (src.init_from, src.model_uri):
        with pytest.raises(UserError, match="different model config"):
            check_init_from(storage, uri, other)
    # through `facegen train`: exit 2 before Ray Train starts, no run folder
    model_sets = [
        a
        for k, v in {**tiny_model_dict(8), "w_dim": other.w_dim}.items()
        for a in ("--set", f"model.{k}={str(v).lower() if isinstance(v, bool) else v}")
    ]
    rc = cli_main(
        [
            "train",
            "--root",
            world["root"],
            "--set",
            "train.run_name=wrong-arch",
            "--set",
            f"train.init_from={src.model_uri}",
            *model_sets,
        ]
    )
    assert rc == 2 and "different model config" in capsys.readouterr().err
    assert not storage.exists(Layout(world["root"]).run("wrong-arch"))


def test_retrain_config_takes_typed_overrides(tmp_path):
    """The candidate's config: the serving model's architecture, the command's train.*/loss.*
    overrides (parsed values, not --set strings), then the fields retrain fixes; --set model.*
    is refused."""
    from facegen_ray.errors import UserError
    from facegen_ray.lifecycle.retrain import WarmStartSource, retrain_config

    cfg = base_cfg(str(tmp_path))
    model = {**tiny_model_dict(8), "w_dim": 16}
    src = WarmStartSource(
        version="v1",
        model_uri="/m/v1",
        model_doc={"model": model},
        run=None,
        images_seen=96,
        init_from="/m/v1",
        kind="model",
        note="",
    )
    overrides = {"train.g_lr": 0.01, "loss.r1_gamma": 2.5, "train.run_name": "mine", "eval.num_gen": 7}
    rcfg = retrain_config(Storage(), cfg, src, "/d/faces/v2", "cand", overrides)
    assert rcfg.model.w_dim == 16 and rcfg.model.resolution == 8  # the serving model's, not cfg's
    assert rcfg.train.g_lr == 0.01 and rcfg.loss.r1_gamma == 2.5
    assert rcfg.eval.num_gen == cfg.eval.num_gen  # only train.* and loss.* overrides apply
    assert rcfg.train.run_name == "cand" and rcfg.train.dataset == "/d/faces/v2" and rcfg.train.export is True
    assert rcfg.train.start_resolution == 8 and rcfg.train.total_images == 96 + cfg.retrain.images
    assert rcfg.train.init_from == "/m/v1"
    assert cfg.model.w_dim != 16 and cfg.train.run_name == "base"  # cfg itself is unchanged
    with pytest.raises(UserError, match="keeps the serving model's architecture"):
        retrain_config(Storage(), cfg, src, "/d/faces/v2", "cand", {"model.w_dim": 32})


def test_gate_with_human_votes_pending_then_promoted(world, capsys):
    """The human rule on (gate.min_human_win_rate / min_votes): a candidate without enough
    /compare votes against the serving model is "pending" (exit 3, not promoted, recorded);
    with them the gate promotes it, and the report shows the votes, win rate and Wilson
    interval beside FID/KID/PR."""
    from facegen_ray.data.comparison import ComparisonStore
    from facegen_ray.lifecycle.human_votes import wilson_interval
    from facegen_ray.registry import Registry

    storage, root = Storage(), world["root"]
    reg = Registry(storage, root)
    serving = reg.serving()
    cand = reg.register(reg.get(serving)["uri"], "human-1")  # the serving weights: FID/KID/PR pass
    human_sets = ["--tolerance", "1e6", "--set", "gate.min_human_win_rate=0.2", "--set", "gate.min_votes=4"]
    rc = cli_main(["gate", cand, "--root", root, *human_sets, *GATE_SETS])
    out = capsys.readouterr().out
    assert rc == 3, out
    doc = _last_json(out)
    assert doc["decision"] == "pending" and doc["serving"] == serving and "is pending human votes" in out
    assert doc["human"]["verdict"] == "pending" and doc["human"]["votes"] == 0 and doc["human"]["min_votes"] == 4
    assert reg.serving() == serving
    gate = reg.get(cand)["metrics"]["gate"]
    assert gate["decision"] == "pending" and gate["promoted"] is False and gate["human"]["verdict"] == "pending"
    # people vote: 3 for the candidate, 1 can't tell (half a win) -> 3.5 of 4; Wilson lower bound 0.396 >= 0.2
    store = ComparisonStore(storage, root)
    sides = {v: {"version": v, "uri": reg.get(v)["uri"], "weights_sha256": "-"} for v in (serving, cand)}
    c = store.start(sides[serving], sides[cand])
    for choice in ["left", "right", "left", "cant_tell"]:
        cand_side = "left" if choice != "right" else "right"
        other = "right" if cand_side == "left" else "left"
        pair = store.record_pair(
            c, cand_side, {cand_side: {"version": cand, "seed": 1}, other: {"version": serving, "seed": 2}}, 0.7, 60
        )
        store.vote(pair["pair_id"], choice)
    store.stop()
    rc = cli_main(["gate", cand, "--root", root, *human_sets, *GATE_SETS])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = _last_json(out)
    assert doc["decision"] == "promoted" and doc["serving"] == cand and reg.serving() == cand
    h = doc["human"]
    assert (h["votes"], h["wins"], h["losses"], h["cant_tell"], h["win_rate"]) == (4, 3, 0, 1, 0.875)
    assert h["ci"] == pytest.approx(list(wilson_interval(3.5, 4, 0.95))) and h["ci"][0] == pytest.approx(
        0.3958, abs=1e-3
    )
    assert h["verdict"] == "pass" and h["comparisons"] == [c["comparison_id"]]
    report = storage.read_json(doc["gate_report"])
    assert report["human"] == h and report["decision"] == "promoted"
    assert [r.split(":")[0] for r in report["reasons"]] == ["fid", "human votes"]


def test_decide_rules():
    from facegen_ray.config import GateConfig
    from facegen_ray.lifecycle.gate import decide

    cand = {"fid": 11.0, "kid": 0.02, "precision": 0.5, "recall": 0.4}
    serv = {"fid": 10.0, "kid": 0.01, "precision": 0.6, "recall": 0.4}
    assert decide(cand, serv, GateConfig())[0] == "rejected"
    assert decide(cand, serv, GateConfig(fid_tolerance=0.1))[0] == "promoted"
    d, reasons, checks = decide(cand, serv, GateConfig(fid_tolerance=0.1, kid_margin=0.005, precision_margin=0.2))
    assert d == "rejected" and [c["metric"] for c in checks] == ["fid", "kid", "precision"]
    assert [c["passed"] for c in checks] == [True, False, True] and "FAILS" in reasons[1]
    assert decide({**cand, "fid": float("nan")}, serv, GateConfig(fid_tolerance=1e9))[0] == "rejected"


def test_merge_on_s3(s3_server, s3_root, s3_storage, ray_session, sample_zip):
    """The merge reads the base shards and the feedback store from s3:// (moto) and commits the
    new version there; a 16 px feedback image is box-downscaled to the 8 px dataset."""
    import pyarrow.parquet as pq

    from facegen_ray.data.feedback import FeedbackStore
    from facegen_ray.data.feedback_merge import merge_feedback
    from facegen_ray.data.ingest import worker_filesystem, worker_filesystem_path
    from facegen_ray.data.shards import read_manifest, shard_uris
    from facegen_ray.serve import generation as gen

    faces = Layout(s3_root).dataset("faces")
    assert (
        cli_main(
            [
                "prepare",
                str(sample_zip),
                faces,
                "--resolution",
                "8",
                "--limit",
                "24",
                "--set",
                f"storage.endpoint_url={s3_server}",
                "--set",
                "storage.region=us-east-1",
            ]
        )
        == 0
    )
    store = FeedbackStore(s3_storage, s3_root)
    rng = np.random.default_rng(1)
    ids = []
    for k in range(3):
        iid = gen.image_id("v1", "d" * 64, k, 0.7, None)
        png = gen.encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "png")
        store.record_image(
            iid, png, {"seed": k, "truncation": 0.7, "attributes": None, "condition": None, "model_version": "v1"}
        )
        store.add_feedback(iid, k != 2, client_key="u1")
        ids.append(iid)
    cfg = FacegenConfig.model_validate(
        {
            "storage": {**s3_storage.cfg.model_dump(), "root": s3_root},
            # brakes released (tests/test_feedback_brakes.py covers them): one fresh rater, a 24-image base
            "retrain": {
                "feedback_repeats": 2,
                "min_approvals": 1,
                "quarantine_new_rater_minutes": 0,
                "max_feedback_share": 1,
            },
        }
    )
    res = merge_feedback(cfg, faces, storage=s3_storage)
    assert res.merged == 2 and res.skipped["rejected"] == 1 and res.version_uri == join(faces, "v2")
    m = read_manifest(s3_storage, faces)
    assert m["version"] == 2 and m["feedback"]["rows"] == 4 and m["feedback"]["repeats"] == 2
    assert m["num_images"] == read_manifest(s3_storage, join(faces, "v1"))["num_images"] + 4
    fs, _ = worker_filesystem(s3_storage, faces)
    rows = [r for u in shard_uris(m) for r in pq.read_table(worker_filesystem_path(u), filesystem=fs).to_pylist()]
    fb = [r for r in rows if r["origin"] == "feedback"]
    assert len(fb) == 4 and len({r["sha256"] for r in fb}) == 2
    assert {r["source"] for r in fb} == {store.image_uri(i) for i in ids[:2]}
    assert all(r["source"].startswith("s3://") for r in fb)
