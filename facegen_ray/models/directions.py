"""Attribute directions in W (InterFaceGAN-style linear boundaries), stored with the model.

    <model dir>/directions.json   written by `facegen directions MODEL --attribute-model URI`

How they are made (`fit_directions`): sample w = mapping(z) for `num_samples` seeds (psi = 1),
render the faces, label them with the attribute classifier, then fit one linear model per
attribute on the w's:
- "age": ridge regression of the predicted age (years, the bucket's representative age) on w;
  the direction points to older faces. Quality: R^2 and sign accuracy on a held-out fifth.
- "gender": logistic regression male (0) vs female (1); +1 = more female.
- "race_<name>": logistic regression of that race against the others (one-vs-rest).
The normals are orthonormalised by Gram-Schmidt in that order (age first), so moving along one
moves as little as possible along the earlier ones; an attribute whose classes are too rare in
the sample, or whose normal is (nearly) spanned by the earlier ones, is skipped and listed.

Unit of an edit strength: `margin_scale`, the standard deviation of the sampled w's along the
(orthonormalised) direction; strength s moves every layer's w by s * margin_scale * d. (A
logistic regression's own margin 1/|beta| collapses when the classes are separable, so the
spread of W along d is the stable unit.) Strengths are bounded |s| <= 5.

File: {"format": 1, "space": "w", "w_dim", "num_samples", "weights_sha256" (the generator the
directions belong to), "classifier": {"uri", "held_out"} (the classifier's own accuracy),
"order": [names], "directions": {name: {"vector" [w_dim], "margin_scale", "kind", "positive",
"fit": {...held-out figures...}, "num_samples": {...class counts...}}}, "skipped": {name: reason}}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facegen_ray.errors import UserError
from facegen_ray.models.conditioning import NUM_RACES
from facegen_ray.models.latent import apply_edit, seed_ws, synthesize
from facegen_ray.storage import Storage, join

DIRECTIONS_FILE = "directions.json"
FORMAT = 1
RACE_NAMES = ("white", "black", "asian", "indian", "other")  # UTKFace coding 0-4
MIN_CLASS_SAMPLES = 5  # a boundary needs at least this many faces on each side
GS_EPS = 0.05  # a normal with less than 5% of its length left after Gram-Schmidt is dropped


@dataclass
class Directions:
    """Orthonormal attribute directions: names [K], vectors [K,w_dim], scales [K] + the file's doc."""

    names: list[str]
    vectors: torch.Tensor
    scales: list[float]
    doc: dict[str, Any] = field(default_factory=dict)

    def edit(self, ws: torch.Tensor, strengths: Mapping[str, float]) -> torch.Tensor:
        """ws [N,L,D] moved by strengths {name: s} (names must be known)."""
        idx = [self.names.index(k) for k in strengths]
        return apply_edit(ws, self.vectors[idx], [self.scales[i] for i in idx], [strengths[k] for k in strengths])

    def summary(self) -> dict[str, Any]:
        return {
            n: {"margin_scale": s, **{k: self.doc["directions"][n].get(k) for k in ("kind", "positive", "fit")}}
            for n, s in zip(self.names, self.scales)
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Directions:
        """Parse a directions.json document (ValueError when malformed)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("directions"), Mapping):
            raise ValueError("no 'directions' object")
        if int(doc.get("format", 0)) > FORMAT:
            raise ValueError(f"format {doc.get('format')} is newer than this facegen reads ({FORMAT})")
        order = list(doc.get("order") or doc["directions"].keys())
        vecs, scales = [], []
        for n in order:
            d = doc["directions"][n]
            v = [float(x) for x in d["vector"]]
            s = float(d["margin_scale"])
            if not all(math.isfinite(x) for x in v) or not math.isfinite(s) or s <= 0:
                raise ValueError(f"direction {n!r} has non-finite values or a non-positive margin_scale")
            vecs.append(v)
            scales.append(s)
        if len({len(v) for v in vecs}) > 1:
            raise ValueError("directions of different lengths")
        vectors = torch.tensor(vecs, dtype=torch.float32) if vecs else torch.zeros(0, int(doc.get("w_dim", 0)))
        return cls(order, vectors, scales, dict(doc))


# ----------------------------------------------------------------------------- storage
def directions_uri(model_uri: str) -> str:
    return join(model_uri, DIRECTIONS_FILE)


def save_directions(storage: Storage, model_uri: str, doc: dict[str, Any]) -> str:
    uri = directions_uri(model_uri)
    storage.write_json(uri, doc)
    return uri


def load_directions(
    storage: Storage, model_uri: str, w_dim: int | None = None, weights_sha256: str | None = None
) -> Directions | None:
    """The model's directions; None when it has none. UserError when the file is corrupt, does not
    fit the model's w_dim, or was fitted for other weights."""
    uri = directions_uri(model_uri)
    if not storage.exists(uri):
        return None
    try:
        d = Directions.from_doc(json.loads(storage.read_text(uri)))
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{uri} is corrupt ({e}); remake it with `facegen directions`") from e
    if w_dim is not None and d.names and d.vectors.shape[1] != w_dim:
        raise UserError(
            f"{uri} holds {d.vectors.shape[1]}-d directions for a model with w_dim {w_dim}; "
            "remake it with `facegen directions`"
        )
    fitted_for = d.doc.get("weights_sha256")
    if weights_sha256 and fitted_for and fitted_for != weights_sha256:
        raise UserError(
            f"{uri} was fitted for other generator weights ({fitted_for[:12]}, this model is "
            f"{weights_sha256[:12]}); remake it with `facegen directions`"
        )
    return d


# ----------------------------------------------------------------------------- fitting
def _split(n: int, rng: np.random.Generator, holdout: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_val = max(1, int(round(n * holdout)))
    return order[n_val:], order[:n_val]


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = X.mean(0)
    sd = X.std(0)
    return mu, np.where(sd > 1e-8, sd, 1.0)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 200) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (full-batch L-BFGS in float64) -> (beta [D], bias) in X's
    units. y in {0,1}; classes are weighted to balance."""
    mu, sd = _standardise(X)
    Xs = torch.as_tensor((X - mu) / sd, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.float64)
    pos = float(t.mean())
    w_s = torch.where(t > 0, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))  # balanced classes
    beta = torch.zeros(Xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit = Xs @ beta + b
        loss = (w_s * torch.nn.functional.binary_cross_entropy_with_logits(logit, t, reduction="none")).mean()
        loss = loss + 0.5 * l2 * (beta * beta).sum()
        loss.backward()
        return loss

    opt.step(closure)
    beta_x = beta.detach().numpy() / sd
    return beta_x, float(b.detach()) - float(beta_x @ mu)


def fit_ridge(X: np.ndarray, y: np.ndarray, l2: float = 1e-1) -> tuple[np.ndarray, float]:
    """Ridge regression y ~ X beta + b (on standardised X) -> (beta [D], bias) in X's units."""
    mu, sd = _standardise(X)
    Xs = (X - mu) / sd
    ym = float(y.mean())
    A = Xs.T @ Xs + l2 * len(X) * np.eye(X.shape[1])
    beta_s = np.linalg.solve(A, Xs.T @ (y - ym))
    beta = beta_s / sd
    return beta, ym - float(beta @ mu)


def gram_schmidt(vectors: Sequence[np.ndarray], eps: float = GS_EPS) -> list[np.ndarray | None]:
    """Orthonormalise in order; a vector with < eps of its length left is None (dependent)."""
    out: list[np.ndarray | None] = []
    basis: list[np.ndarray] = []
    for v in vectors:
        v = np.asarray(v, np.float64)
        n0 = np.linalg.norm(v)
        u = v.copy()
        for q in basis:
            u -= (u @ q) * q
        n = np.linalg.norm(u)
        if n0 == 0 or n < eps * n0:
            out.append(None)
            continue
        u /= n
        basis.append(u)
        out.append(u)
    return out


def boundaries(
    W: np.ndarray,
    labels: Mapping[str, np.ndarray],
    age_years: np.ndarray | None,
    seed: int = 0,
    min_class: int = MIN_CLASS_SAMPLES,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Fit every boundary on W [N,D] -> ([{"name", "normal", "kind", "positive", "fit",
    "num_samples"}] in Gram-Schmidt order, {skipped name: reason}). labels: "gender", "race"
    int arrays [N]; age_years [N] (or None)."""
    rng = np.random.default_rng(seed)
    tr, va = _split(len(W), rng)
    fits: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if age_years is not None:
        y = np.asarray(age_years, np.float64)
        if np.unique(y).size < 2:
            skipped["age"] = "the classifier predicted one age bucket for every sampled face"
        else:
            beta, b = fit_ridge(W[tr], y[tr])
            pred = W[va] @ beta + b
            ss = float(((y[va] - y[va].mean()) ** 2).sum())
            r2 = 1 - float(((y[va] - pred) ** 2).sum()) / ss if ss > 0 else None
            dy, dp = y[va][:, None] - y[va][None, :], pred[:, None] - pred[None, :]
            pairs = dy != 0
            order_acc = float(((dy * dp)[pairs] > 0).mean()) if pairs.any() else None
            fits.append(
                {
                    "name": "age",
                    "normal": beta,
                    "kind": "ridge",
                    "positive": "older",
                    "fit": {"r2_held_out": r2, "pair_order_accuracy_held_out": order_acc},
                    "num_samples": {str(int(v)): int((y == v).sum()) for v in np.unique(y)},
                }
            )

    def binary(name: str, y: np.ndarray, positive: str) -> None:
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        counts = {"positive": n_pos, "negative": n_neg}
        if min(n_pos, n_neg) < min_class or y[tr].min() == y[tr].max():
            skipped[name] = f"too few faces on one side ({counts}); sample more with --num-samples"
            return
        beta, b = fit_logistic(W[tr], y[tr])
        acc = float((((W[va] @ beta + b) > 0).astype(np.int64) == y[va]).mean())
        fits.append(
            {
                "name": name,
                "normal": beta,
                "kind": "logistic",
                "positive": positive,
                "fit": {"accuracy_held_out": acc, "num_held_out": int(len(va))},
                "num_samples": counts,
            }
        )

    if "gender" in labels:
        g = np.asarray(labels["gender"])
        known = g >= 0
        if known.all():
            binary("gender", (g == 1).astype(np.int64), "female")
    if "race" in labels:
        r = np.asarray(labels["race"])
        for k in range(NUM_RACES):
            binary(f"race_{RACE_NAMES[k]}", (r == k).astype(np.int64), RACE_NAMES[k])
    ortho = gram_schmidt([f["normal"] for f in fits])
    out = []
    for f, u in zip(fits, ortho):
        if u is None:
            skipped[f["name"]] = "its boundary is (nearly) spanned by the directions before it"
            continue
        f = dict(f)
        f["raw_cosine"] = float(u @ (f["normal"] / np.linalg.norm(f["normal"])))
        f["normal"] = u
        out.append(f)
    return out, skipped


def directions_doc(
    W: np.ndarray,
    fits: list[dict[str, Any]],
    skipped: dict[str, str],
    *,
    weights_sha256: str,
    classifier: dict[str, Any],
    num_samples: int,
    seed: int,
) -> dict[str, Any]:
    """The directions.json document for boundaries fitted on W [N,D]."""
    dirs = {}
    for f in fits:
        proj = W @ f["normal"]  # [N]
        dirs[f["name"]] = {
            "vector": [float(x) for x in f["normal"]],
            "margin_scale": float(max(proj.std(), 1e-6)),
            "kind": f["kind"],
            "positive": f["positive"],
            "fit": f["fit"],
            "num_samples": f["num_samples"],
            "raw_cosine": f["raw_cosine"],
        }
    return {
        "format": FORMAT,
        "space": "w",
        "w_dim": int(W.shape[1]),
        "num_samples": int(num_samples),
        "seed": int(seed),
        "weights_sha256": weights_sha256,
        "classifier": classifier,
        "order": [f["name"] for f in fits],
        "directions": dirs,
        "skipped": skipped,
    }


@torch.no_grad()
def sample_and_label(
    G, tagger: Callable[[np.ndarray], dict[str, np.ndarray]], num_samples: int, seed: int = 0, batch_size: int = 64
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """w for seeds seed..seed+num_samples-1 (psi 1, conditional models with unknown attributes)
    and the tagger's labels of their faces -> (W [N,w_dim] float64, {"age", "gender", "race": [N]})."""
    Ws, labels = [], {}
    for i in range(0, num_samples, batch_size):
        seeds = list(range(seed + i, seed + min(i + batch_size, num_samples)))
        ws = seed_ws(G, seeds, 1.0)  # [n,L,D]; w is the same on every layer before any control
        pred = tagger(synthesize(G, ws))
        Ws.append(ws[:, 0].double().cpu().numpy())
        for k, v in pred.items():
            labels.setdefault(k, []).append(np.asarray(v))
    return np.concatenate(Ws), {k: np.concatenate(v) for k, v in labels.items()}
