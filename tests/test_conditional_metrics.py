"""Conditional metrics end to end: `facegen evaluate --metrics cfid,attr_acc` on a tiny
conditional model, the promotion gate showing (and optionally gating on) them, and the clear
refusal for unconditional models. The per-group FID math itself is tested on synthetic
features in test_metrics.py.

One module-scoped world, no training and no Ray: 24 sample faces at 16 px with their UTKFace
labels (test_metrics_inception.write_tiny_dataset), three untrained 16-px generators registered
as v1 (conditional, serving), v2 (conditional), v3 (unconditional), and an attribute classifier
trained for 2 epochs on the same faces. The real Inception runs on CPU on 24 generated / 24 real
images per evaluation (reals once: their features are cached).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model_dict
from test_metrics_inception import RES, write_tiny_dataset

from facegen_ray.cli import main
from facegen_ray.config import EvalConfig, GateConfig, ModelConfig
from facegen_ray.registry import Registry
from facegen_ray.storage import Layout, Storage

N = 24
MIN_IMAGES = 4
EVAL = [
    "--num-gen",
    str(N),
    "--num-real",
    str(N),
    "--set",
    "eval.batch_size=24",
    "--set",
    "eval.device=cpu",
    "--set",
    f"eval.cfid_min_images={MIN_IMAGES}",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from facegen_ray.data.attributes import read_labelled
    from facegen_ray.models import Generator
    from facegen_ray.models.attributes import save_classifier, train_attribute_classifier
    from facegen_ray.models.export import save_model_dir

    root = str(tmp_path_factory.mktemp("condroot"))
    storage = Storage()
    data_uri = Layout(root).dataset("faces")
    write_tiny_dataset(storage, data_uri, N)
    reg = Registry(storage, root)
    for seed, version, conditional in ((0, "v1", True), (1, "v2", True), (2, "v3", False)):
        cfg = ModelConfig.model_validate(tiny_model_dict(RES, conditional=conditional))
        torch.manual_seed(seed)
        G = Generator(cfg)
        G.set_stage(G.max_stage, 1.0)
        save_model_dir(storage, f"{root}/exports/{version}", G, cfg, {"version": version, "resolution": RES})
        reg.register(f"{root}/exports/{version}", version)
    reg.promote("v1")
    buckets = ModelConfig().age_buckets
    model, meta = train_attribute_classifier(
        read_labelled(storage, data_uri, buckets), buckets, resolution=RES, epochs=2, batch_size=8, width=8
    )
    attr_uri = f"{root}/attributes"
    save_classifier(storage, attr_uri, model, meta)
    return {"root": root, "storage": storage, "data": data_uri, "attr": attr_uri, "reg": reg}


def test_evaluate_conditional_model_reports_cfid_and_attr_acc(world, capsys):
    """The JSON line has each group's FID with n_gen/n_real (or why it was skipped) and their
    mean, and the attribute accuracy per attribute and overall; both agree with recomputing them
    by hand from the same seeds, conditions, reals and labels."""
    from facegen_ray.metrics.evaluate import conditioning_for, data_labels, generate_uint8, reference_features
    from facegen_ray.metrics.fid import fid_from_features
    from facegen_ray.metrics.inception import InceptionExtractor
    from facegen_ray.models.attributes import load_tagger
    from facegen_ray.models.export import load_model_dir

    root, storage, data_uri = world["root"], world["storage"], world["data"]
    rc = main(
        [
            "evaluate",
            "v1",
            "--data",
            data_uri,
            "--root",
            root,
            "--local",
            *EVAL,
            "--metrics",
            "fid,cfid,attr_acc",
            "--attribute-model",
            world["attr"],
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    doc = json.loads(out[0])
    assert doc["num_gen"] == N and doc["num_real"] == N and doc["fid"] > 0

    # the same seeds, conditions, reals and labels the evaluation used
    G, model_cfg, _ = load_model_dir(storage, world["reg"].get("v1")["uri"])
    ecfg = EvalConfig(num_gen=N, num_real=N, batch_size=24, device="cpu")
    real, info = reference_features(storage, data_uri, ecfg)
    assert info["cached"] is True
    labels = data_labels(storage, info["selection"], model_cfg.age_buckets)
    seeds = list(range(N))
    c = conditioning_for(G, labels, N, 0).numpy()  # [N,3]

    cfid = doc["cfid"]
    groups = cfid["groups"]
    assert [g["group"] for g in groups] == (
        [f"age={i}" for i in range(8)] + ["gender=0", "gender=1"] + [f"race={i}" for i in range(5)]
    )
    for g in groups:
        col = ("age", "gender", "race").index(g["attribute"])
        assert g["n_real"] == int((labels[g["attribute"]] == g["code"]).sum())
        assert g["n_gen"] == int((c[:, col] == g["code"]).sum())
        if g["fid"] is None:
            assert min(g["n_real"], g["n_gen"]) < MIN_IMAGES and "eval.cfid_min_images = 4" in g["skipped"]
        else:
            assert min(g["n_real"], g["n_gen"]) >= MIN_IMAGES and np.isfinite(g["fid"]) and g["fid"] > 0
    computed = [g["fid"] for g in groups if g["fid"] is not None]
    assert computed and cfid["groups_computed"] == len(computed) and cfid["groups_skipped"] == 15 - len(computed)
    assert cfid["groups_skipped"] > 0  # 24 faces: some age buckets / races have too few
    assert cfid["mean"] == pytest.approx(np.mean(computed), rel=1e-12)

    # one group by hand: generate only its faces, extract, FID against its reals
    g = max((g for g in groups if g["fid"] is not None), key=lambda g: g["n_gen"])
    col = ("age", "gender", "race").index(g["attribute"])
    mask = c[:, col] == g["code"]
    imgs = generate_uint8(G, [s for s, m in zip(seeds, mask) if m], 1.0, c=torch.as_tensor(c[mask]))
    gen = InceptionExtractor(device="cpu", batch_size=24)(imgs)
    assert g["fid"] == pytest.approx(fid_from_features(gen, real[labels[g["attribute"]] == g["code"]]), rel=1e-3)

    # attribute accuracy: the classifier on all generated faces vs the requested codes
    tagger = load_tagger(storage, world["attr"])
    pred = tagger.predict_buckets(generate_uint8(G, seeds, 1.0, c=torch.as_tensor(c), batch_size=24))
    acc = doc["attr_acc"]
    hits = total = 0
    for col, attr in enumerate(("age", "gender", "race")):
        known = c[:, col] >= 0
        assert acc[attr]["n"] == int(known.sum())
        assert acc[attr]["accuracy"] == pytest.approx(float((pred[attr][known] == c[known, col]).mean()))
        hits, total = hits + int((pred[attr][known] == c[known, col]).sum()), total + int(known.sum())
    assert acc["overall"] == {"accuracy": pytest.approx(hits / total), "n": total}
    assert acc["n_gen"] == N and acc["classifier_held_out"] == tagger.meta["held_out"]


def test_unconditional_model_and_bad_metric_names_get_clear_errors(world, capsys):
    root, data_uri = world["root"], world["data"]
    rc = main(["evaluate", "v3", "--data", data_uri, "--root", root, "--local", *EVAL, "--metrics", "fid,cfid"])
    err = capsys.readouterr().err
    assert rc == 2 and "conditional" in err and "v3" in err and "drop cfid from --metrics" in err
    rc = main(
        [
            "evaluate",
            "v3",
            "--data",
            data_uri,
            "--root",
            root,
            "--local",
            *EVAL,
            "--metrics",
            "attr_acc",
            "--attribute-model",
            world["attr"],
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "drop attr_acc from --metrics" in err
    rc = main(["evaluate", "v1", "--data", data_uri, "--root", root, "--local", *EVAL, "--metrics", "attr_acc"])
    assert rc == 2 and "--attribute-model" in capsys.readouterr().err
    rc = main(["evaluate", "v1", "--data", data_uri, "--root", root, "--local", *EVAL, "--metrics", "fid,cfd"])
    err = capsys.readouterr().err
    assert rc == 2 and "'cfd'" in err and "'cfid'" in err and "'attr_acc'" in err
    # the gate refuses a CFID rule when a model is unconditional, before evaluating anything
    rc = main(["gate", "v3", "--root", root, "--data", data_uri, *EVAL, "--set", "gate.cfid_tolerance=0.1"])
    err = capsys.readouterr().err
    assert rc == 2 and "gate.cfid_tolerance" in err and "v3 is unconditional" in err
    assert world["reg"].get("v3")["metrics"] == {}


def test_gate_shows_cfid_and_attr_acc_and_can_gate_on_them(world, capsys):
    """Candidate v2 vs serving v1: CFID gated (tolerance set), attribute accuracy shown without
    a rule; both land beside FID/KID/PR in the printed lines, the JSON, the stored report and
    the registry entry."""
    root, storage, reg = world["root"], world["storage"], world["reg"]
    rc = main(
        [
            "gate",
            "v2",
            "--root",
            root,
            "--data",
            world["data"],
            *EVAL,
            "--set",
            "eval.kid_subsets=4",
            "--set",
            "gate.cfid_tolerance=1e6",
            "--set",
            f"gate.attribute_model={world['attr']}",
            "--no-promote",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("[facegen] gate: ")]
    doc = json.loads(out.strip().splitlines()[-1])
    cand, serv = doc["candidate_metrics"], doc["serving_metrics"]
    for m in (cand, serv):
        assert {"fid", "kid", "precision", "recall", "cfid", "cfid_groups", "attr_acc", "attr_acc_by_attribute"} <= set(
            m
        )
        assert np.isfinite(m["cfid"]) and 0 <= m["attr_acc"] <= 1 and len(m["cfid_groups"]) == 15
    assert [r.split(":")[0] for r in doc["reasons"]] == ["fid", "cfid"]
    cfid_line = next(ln for ln in lines if ln.startswith("[facegen] gate: cfid: candidate"))
    assert f"{cand['cfid']:.6g}" in cfid_line and "-> ok" in cfid_line
    acc_line = next(ln for ln in lines if ln.startswith("[facegen] gate: attr_acc:"))
    assert f"candidate {cand['attr_acc']:.6g}, serving {serv['attr_acc']:.6g}" in acc_line
    assert "not a rule: set gate.attr_acc_margin" in acc_line and doc["notes"] == [acc_line[len("[facegen] gate: ") :]]
    report = storage.read_json(doc["gate_report"])
    assert (
        report["candidate_metrics"]["cfid"] == cand["cfid"]
        and report["serving_metrics"]["attr_acc"] == serv["attr_acc"]
    )
    assert report["eval"]["metrics"] == ["fid", "kid", "pr", "cfid", "attr_acc"]
    entry = reg.get("v2")["metrics"]
    assert entry["cfid"] == cand["cfid"] and entry["attr_acc"] == cand["attr_acc"]
    assert reg.serving() == "v1"


def test_decide_and_notes_for_conditional_metrics():
    from facegen_ray.lifecycle.gate import conditional_notes, decide

    cand = {
        "fid": 10.0,
        "kid": 0.01,
        "precision": 0.5,
        "recall": 0.5,
        "cfid": 30.0,
        "cfid_groups_computed": 5,
        "cfid_groups_skipped": 10,
        "attr_acc": 0.70,
    }
    serv = {**cand, "cfid": 25.0, "attr_acc": 0.80}
    d, reasons, checks = decide(cand, serv, GateConfig(cfid_tolerance=0.1))
    assert d == "rejected" and [c["metric"] for c in checks] == ["fid", "cfid"]
    assert checks[1]["limit"] == pytest.approx(27.5) and "cfid: candidate 30 > limit 27.5" in reasons[1]
    assert decide(cand, serv, GateConfig(cfid_tolerance=0.25))[0] == "promoted"
    gcfg = GateConfig(attribute_model="x", attr_acc_margin=0.05)
    d, reasons, checks = decide(cand, serv, gcfg)
    assert d == "rejected" and checks[1]["metric"] == "attr_acc" and checks[1]["limit"] == pytest.approx(0.75)
    assert decide(cand, serv, GateConfig(attribute_model="x", attr_acc_margin=0.15))[0] == "promoted"
    # a model without the metric (unconditional serving) fails a rule that needs it
    plain = {k: v for k, v in serv.items() if k not in ("cfid", "attr_acc")}
    assert decide(cand, plain, GateConfig(cfid_tolerance=1.0))[0] == "rejected"
    # no rule: shown, never gating
    assert decide(cand, serv, GateConfig())[0] == "promoted"
    assert conditional_notes(cand, serv, GateConfig()) == [
        "cfid: candidate 30 (5 groups, 10 skipped), serving 25 (5 groups, 10 skipped) "
        "(shown, not a rule: set gate.cfid_tolerance to gate on it)",
        "attr_acc: candidate 0.7, serving 0.8 (shown, not a rule: set gate.attr_acc_margin to gate on it)",
    ]
    assert conditional_notes(cand, plain, GateConfig(cfid_tolerance=1.0))[0].endswith(
        "serving not measured (shown, not a rule: set gate.attr_acc_margin to gate on it)"
    )
    assert conditional_notes({"fid": 1.0}, {"fid": 1.0}, GateConfig()) == []
    with pytest.raises(ValueError, match="gate.attribute_model"):
        GateConfig(attr_acc_margin=0.1)
