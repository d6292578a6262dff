"""Metric math without the Inception: Fréchet distance, KID, precision/recall, IS, diversity,
the attribute classifier and the sweep plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facegen_ray.errors import UserError
from facegen_ray.metrics.diversity import distribution, total_variation
from facegen_ray.metrics.fid import feature_stats, fid_from_features, fid_to_stats, frechet_distance
from facegen_ray.metrics.inception_score import inception_score
from facegen_ray.metrics.kid import kernel_inception_distance, polynomial_mmd2_unbiased
from facegen_ray.metrics.precision_recall import knn_radii, precision_recall

# ---------------------------------------------------------------- Fréchet distance


def test_frechet_1d_closed_form():
    # N(0,1) vs N(1,4): (0-1)^2 + 1 + 4 - 2*sqrt(1*4) = 2
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]), np.array([[4.0]])) == pytest.approx(
        2.0
    )


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)  # standard deviations
    expected = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(m1, np.diag(s1**2), m2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_scaled_full_covariance():
    # S2 = k^2 S1 (non-diagonal): Tr(S1 + k^2 S1 - 2k S1) = (1-k)^2 Tr(S1)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    s1 = a @ a.T + 0.1 * np.eye(6)
    mu = rng.normal(size=6)
    assert frechet_distance(mu, s1, mu, 9.0 * s1) == pytest.approx(4.0 * np.trace(s1), rel=1e-8)


def test_fid_self_zero_including_singular_covariance():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(20, 64))  # N < D: singular covariance, as in small evaluations
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    g = rng.normal(size=(20, 64)) + 0.5
    v = fid_from_features(f, g)
    assert np.isfinite(v) and v > 64 * 0.25 * 0.5


def test_feature_stats_shapes_and_errors():
    mu, sigma = feature_stats(np.ones((3, 4)))
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    with pytest.raises(ValueError):
        feature_stats(np.ones((1, 4)))


# ---------------------------------------------------------------- KID


def test_kid_unbiased_on_equal_distributions():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    kid = kernel_inception_distance(x, y, subsets=50, subset_size=100, seed=0)
    shifted = kernel_inception_distance(x, y + 0.5, subsets=50, subset_size=100, seed=0)
    assert kid["subset_size"] == 100 and kid["subsets"] == 50
    assert abs(kid["mean"]) < 0.05 * shifted["mean"]
    # unbiased estimator: individual subset estimates straddle 0 on equal distributions
    vals = [polynomial_mmd2_unbiased(x[i * 40 : (i + 1) * 40], y[i * 40 : (i + 1) * 40]) for i in range(10)]
    assert min(vals) < 0 < max(vals)


def test_kid_subset_size_capped_at_n():
    rng = np.random.default_rng(4)
    kid = kernel_inception_distance(rng.normal(size=(10, 4)), rng.normal(size=(30, 4)), subsets=3, subset_size=1000)
    assert kid["subset_size"] == 10


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(5)
    r = rng.normal(size=(50, 8))
    assert precision_recall(r, r, k=3) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(r + 100.0, r, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_partial_coverage():
    # generated only covers one of two real clusters: precision 1, recall about 1/2
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(40, 4)), rng.normal(size=(40, 4)) + 50.0
    g = rng.normal(size=(40, 4))
    pr = precision_recall(g, np.concatenate([a, b]), k=3, batch_size=7)
    assert pr["precision"] > 0.9
    assert 0.35 < pr["recall"] <= 0.5


def test_knn_radii_kth_neighbour():
    pts = np.array([[0.0], [1.0], [3.0], [6.0]])
    # k=1: nearest other point
    assert knn_radii(pts, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        knn_radii(pts, k=4)


# ---------------------------------------------------------------- IS


def test_inception_score_bounds():
    assert inception_score(np.zeros((20, 10)), splits=2)["mean"] == pytest.approx(1.0)
    confident = np.full((40, 4), -50.0)
    confident[np.arange(40), np.arange(40) % 4] = 50.0
    assert inception_score(confident, splits=1)["mean"] == pytest.approx(4.0, rel=1e-6)


# ---------------------------------------------------------------- diversity


def test_distribution_and_tv():
    p = distribution(np.array([0, 0, 1, -1, 1, 1]), 3)
    assert p.tolist() == pytest.approx([0.4, 0.6, 0.0])
    assert total_variation(p, p) == 0.0
    assert total_variation([1, 0], [0, 1]) == 1.0


# ---------------------------------------------------------------- attribute classifier


def _toy_labelled(n: int = 24, res: int = 16, seed: int = 0):
    from facegen_ray.models.attributes import LabelledImages

    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    imgs = rng.integers(0, 60, (n, res, res, 3)).astype(np.uint8)
    imgs[gender == 1] += 150  # learnable: bright = gender 1
    race = rng.integers(-1, 5, n)
    age = np.full(n, -1)  # no age labels at all: that head must be ignored, not NaN
    return LabelledImages(imgs, age.astype(np.int64), gender.astype(np.int64), race.astype(np.int64))


def test_attribute_classifier_trains_predicts_and_round_trips(tmp_path):
    from facegen_ray.models.attributes import load_tagger, save_classifier, train_attribute_classifier
    from facegen_ray.models.conditioning import age_to_bucket
    from facegen_ray.storage import Storage

    buckets = [0, 13, 20, 30, 40, 50, 60, 70]
    data = _toy_labelled()
    model, meta = train_attribute_classifier(data, buckets, resolution=16, epochs=15, batch_size=8, width=8)
    assert meta["classes"] == {"age": 8, "gender": 2, "race": 5}
    assert meta["held_out"]["age"] == {"accuracy": None, "n": 0}
    assert meta["held_out"]["gender"]["n"] > 0 and meta["held_out"]["gender"]["accuracy"] is not None
    for p in model.parameters():
        assert torch.isfinite(p).all()
    storage = Storage()
    uri = str(tmp_path / "attr")
    save_classifier(storage, uri, model, meta)
    tagger = load_tagger(storage, uri)
    out = tagger(data.images[:5])
    assert set(out) == {"age", "gender", "race"}
    assert all(v.shape == (5,) and v.dtype == np.int64 for v in out.values())
    # ages come back in years and map to the predicted bucket
    buckets_pred = tagger.predict_buckets(data.images[:5])
    assert [age_to_bucket(a, buckets) for a in out["age"]] == buckets_pred["age"].tolist()
    # the bright/dark gender signal is learnt
    pred = tagger.predict_buckets(data.images)["gender"]
    assert (pred == data.gender).mean() >= 0.75
    with pytest.raises(UserError, match="attributes train"):
        load_tagger(storage, str(tmp_path / "nothing"))


def test_multi_head_loss_ignores_unknown():
    from facegen_ray.models.attributes import multi_head_loss

    logits = {"age": torch.randn(4, 3), "gender": torch.randn(4, 2), "race": torch.randn(4, 5)}
    t = {"age": torch.full((4,), -1), "gender": torch.tensor([0, 1, -1, -1]), "race": torch.full((4,), -1)}
    loss = multi_head_loss(logits, t)
    expected = torch.nn.functional.cross_entropy(logits["gender"][:2], t["gender"][:2])
    assert torch.allclose(loss, expected)


def test_plot_sweep_png():
    from facegen_ray.metrics.evaluate import plot_sweep

    rows = [
        {"truncation": p, "fid": 10 * p, "precision": 1 - p / 2, "recall": p, "num_gen": 8} for p in (0.5, 0.7, 1.0)
    ]
    png = plot_sweep(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_frechet_very_singular_matches_symmetric_form():
    """N << D (8 vs 6 samples in 256-d): result is real, finite and equals the symmetric form."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(8, 256)), rng.normal(size=(6, 256)) + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    expected = d @ d + np.trace(s1) + np.trace(s2) - 2 * tr
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n,m,d", [(6, 40, 32), (20, 300, 64), (90, 200, 64)])
def test_fid_to_stats_matches_full_sqrtm(n, m, d):
    """The N x N eigen path (N <= D) and the D x D path (N > D) equal the sqrtm definition."""
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
    b = rng.normal(size=(m, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
    mu, sigma = feature_stats(b)
    expected = frechet_distance(*feature_stats(a), mu, sigma)
    assert fid_to_stats(a, mu, sigma) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_to_stats_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        fid_to_stats(np.zeros((1, 4)), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="mismatched"):
        fid_to_stats(np.zeros((3, 4)), np.zeros(5), np.eye(5))


# ---------------------------------------------------------------- conditional: per-group FID, CFID, attribute accuracy


def test_conditional_fid_per_group_and_mean():
    """Each group's FID is the FID of its generated rows against its reals; a group whose
    generated features are its reals gives 0; CFID is the mean of the computed groups; groups
    under min_images are skipped with the reason and no number."""
    from facegen_ray.metrics.conditional import conditional_fid

    rng = np.random.default_rng(8)
    m, d = 40, 8
    real = rng.normal(size=(m, d))
    labels = {
        "age": np.arange(m) % 2,  # buckets 0/1: 20 each; bucket 2: none
        "gender": (np.arange(m) >= 20).astype(np.int64),  # 20 male, 20 female
        "race": np.where(np.arange(m) < 36, 0, 1),
    }  # 36 white, 4 black
    labels["race"][0] = -1  # unknown: in no race group
    gen = real.copy()
    gen[20:] = gen[20:] * 1.5 + 2.0  # female faces drawn off
    gen_c = np.stack([labels["age"], labels["gender"], labels["race"]], 1)
    out = conditional_fid(gen, gen_c, real, labels, age_buckets=[0, 20, 40], min_images=5)

    by = {g["group"]: g for g in out["groups"]}
    assert list(by) == [
        "age=0",
        "age=1",
        "age=2",
        "gender=0",
        "gender=1",
        "race=0",
        "race=1",
        "race=2",
        "race=3",
        "race=4",
    ]
    assert by["gender=0"]["name"] == "male" and by["age=2"]["name"] == "40+" and by["race=2"]["name"] == "asian"
    assert by["gender=0"]["fid"] == pytest.approx(0.0, abs=1e-9)  # generated == its reals
    assert by["gender=0"]["n_gen"] == by["gender=0"]["n_real"] == 20
    assert by["gender=1"]["fid"] == pytest.approx(fid_from_features(gen[20:], real[20:]), rel=1e-9)
    assert by["gender=1"]["fid"] > 1.0
    for name, mask_g, mask_r in (
        ("age=0", gen_c[:, 0] == 0, labels["age"] == 0),
        ("race=0", gen_c[:, 2] == 0, labels["race"] == 0),
    ):
        assert by[name]["fid"] == pytest.approx(fid_from_features(gen[mask_g], real[mask_r]), rel=1e-9)
    assert by["race=0"]["n_real"] == 35  # the unknown row is left out
    assert by["race=1"]["fid"] is None and by["race=1"]["skipped"] == (
        "too few images: 4 real, 4 generated (each needs eval.cfid_min_images = 5)"
    )
    assert by["age=2"]["fid"] is None and "0 real, 0 generated" in by["age=2"]["skipped"]
    computed = [g["fid"] for g in out["groups"] if g["fid"] is not None]
    assert len(computed) == 5 == out["groups_computed"] and out["groups_skipped"] == 5
    assert out["mean"] == pytest.approx(np.mean(computed), rel=1e-12)
    assert out["min_images"] == 5 and "reason" not in out


def test_conditional_fid_nothing_computable_and_bad_input():
    from facegen_ray.metrics.conditional import conditional_fid

    rng = np.random.default_rng(9)
    real, gen = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    labels = {"age": np.zeros(6, np.int64), "gender": np.full(6, -1), "race": np.full(6, -1)}
    c = np.stack([labels["age"], labels["gender"], labels["race"]], 1)
    out = conditional_fid(gen, c, real, labels, age_buckets=[0, 20], min_images=10)
    assert out["mean"] is None and out["groups_computed"] == 0 and "cfid_min_images" in out["reason"]
    assert all(g["fid"] is None and g["skipped"] for g in out["groups"])
    assert conditional_fid(gen, c, real, labels, [0, 20], min_images=6)["groups_computed"] == 1  # age=0 only
    with pytest.raises(ValueError, match=">= 2"):
        conditional_fid(gen, c, real, labels, [0, 20], min_images=1)
    with pytest.raises(ValueError, match=r"\[N,3\]"):
        conditional_fid(gen, c[:, :2], real, labels, [0, 20])


def test_attribute_accuracy_per_attribute_and_overall():
    from facegen_ray.metrics.conditional import attribute_accuracy

    requested = np.array([[0, 1, 2], [1, 0, -1], [2, 1, 4], [-1, -1, 3]])
    pred = {"age": np.array([0, 1, 0, 5]), "gender": np.array([1, 1, 1, 0]), "race": np.array([2, 0, 1, 3])}
    out = attribute_accuracy(pred, requested, held_out={"gender": {"accuracy": 0.9, "n": 10}})
    assert out["n_gen"] == 4
    assert out["age"] == {"accuracy": pytest.approx(2 / 3), "n": 3}  # -1 requests are not counted
    assert out["gender"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert out["race"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert out["overall"] == {"accuracy": pytest.approx(6 / 9), "n": 9}
    assert out["classifier_held_out"]["gender"]["accuracy"] == 0.9
    skipped = attribute_accuracy(pred, requested, skip={"age": "age buckets differ"})
    assert skipped["age"]["skipped"] == "age buckets differ" and skipped["age"]["accuracy"] is None
    assert skipped["overall"] == {"accuracy": pytest.approx(4 / 6), "n": 6}
    none = attribute_accuracy(pred, np.full((4, 3), -1))
    assert none["overall"] == {"accuracy": None, "n": 0}


def test_fid_floor_benchmark_compares_disjoint_reals(tmp_path):
    """benchmarks/fid_floor.py: real-vs-real FID from cached features, one JSON line; a sample
    of the same distribution reads far lower than a shifted one."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((600, 8))
    np.savez(tmp_path / "ref.npz", features=feats)
    np.savez(tmp_path / "held.npz", features=rng.standard_normal((100, 8)))
    np.savez(tmp_path / "shifted.npz", features=rng.standard_normal((100, 8)) + 2.0)
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "fid_floor.py"

    def run(*extra):
        r = subprocess.run(
            [sys.executable, str(bench), "--features", str(tmp_path / "ref.npz"), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return r.returncode, r.stdout.strip().splitlines(), r.stderr

    rc, lines, err = run("--splits", "100,300", "--repeats", "2", "--holdout", str(tmp_path / "held.npz"))
    assert rc == 0, err
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert [f["real_a"] for f in doc["floors"]] == [100, 300, 100] and doc["floors"][2]["real_b"] == 600
    assert all(len(f["fid"]) == 2 for f in doc["floors"][:2])
    same = doc["floors"][2]["fid"][0]
    rc, lines, _ = run("--splits", "100", "--repeats", "1", "--holdout", str(tmp_path / "shifted.npz"))
    shifted = json.loads(lines[0])["floors"][1]["fid"][0]
    assert 0 < same < 1.0 < 8 * 4 * 0.9 < shifted  # mean shift of 2 in 8 dims: FID ~ 32
    rc, _, err = run("--splits", "599")
    assert rc == 2 and "at least 2" in err
