"""A small CNN attribute classifier (age bucket, gender, race) for two jobs: tagging images
without labels in `facegen prepare --attribute-model`, and measuring the demographic mix of
generated faces (facegen_ray.metrics.diversity). Trained by `facegen attributes train`.

Saved as a folder: attributes.pt (state_dict) + attributes.json (classes, input resolution,
age buckets, held-out accuracy per head). It is a rough tagger: read its accuracy before
trusting what it says.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facegen_ray.errors import UserError
from facegen_ray.models.conditioning import NUM_GENDERS, NUM_RACES
from facegen_ray.storage import Storage, join, normalize

log = logging.getLogger(__name__)

WEIGHTS_FILE = "attributes.pt"
META_FILE = "attributes.json"  # written last: marks a complete classifier folder
HEADS = ("age", "gender", "race")
FORMAT = 1


class AttributeNet(nn.Module):
    """Conv trunk (3 stride-2 blocks) + global average pool + one linear head per attribute."""

    def __init__(self, num_classes: dict[str, int], width: int = 32):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, n) for k, n in num_classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [N,3,R,R] in [-1,1] -> {head: logits [N,C_head]}."""
        h = self.trunk(x).mean(dim=(2, 3))  # [N,4w]
        return {k: head(h) for k, head in self.heads.items()}


def to_input(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float32 [N,3,R,R] in [-1,1] (antialiased bilinear resize when needed)."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N,3,H,W]
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=x.shape[-1] > resolution
        )
    return x


def multi_head_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of cross-entropy, ignoring unknown (-1) labels; a head with none adds 0."""
    total = logits[HEADS[0]].new_zeros(())
    for k, z in logits.items():
        t = targets[k]
        if (t >= 0).any():
            total = total + F.cross_entropy(z, t, ignore_index=-1)
    return total


def representative_ages(age_buckets: Sequence[int]) -> list[int]:
    """One age in years per bucket (the middle of its range; lower bound + 5 for the last), so
    that age_to_bucket(representative_ages[i]) == i (prepare stores ages in years)."""
    out = []
    for i, lo in enumerate(age_buckets):
        hi = age_buckets[i + 1] if i + 1 < len(age_buckets) else lo + 11
        out.append(int((lo + hi - 1) // 2))
    return out


@dataclass
class LabelledImages:
    """Distinct labelled images of a dataset (data.attributes.read_labelled): images uint8 [N,H,W,3];
    labels int64 [N] (-1 unknown)."""

    images: np.ndarray
    age_bucket: np.ndarray
    gender: np.ndarray
    race: np.ndarray


def _accuracy(model: AttributeNet, x: torch.Tensor, y: dict[str, torch.Tensor]) -> dict[str, dict[str, float | int]]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    out = {}
    for k in HEADS:
        known = y[k] >= 0
        n = int(known.sum())
        acc = float((logits[k].argmax(1)[known] == y[k][known]).float().mean()) if n else None
        out[k] = {"accuracy": acc, "n": n}
    return out


def train_attribute_classifier(
    data: LabelledImages,
    age_buckets: Sequence[int],
    *,
    resolution: int = 32,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    holdout: float = 0.2,
    seed: int = 0,
) -> tuple[AttributeNet, dict[str, Any]]:
    """Train on (1 - holdout) of the images, report per-head accuracy on the rest -> (model, meta)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(data.images)
    order = rng.permutation(n)
    n_val = max(1, int(round(n * holdout)))
    val, tr = order[:n_val], order[n_val:]
    x = to_input(data.images, resolution)  # [N,3,R,R]
    y = {
        "age": torch.as_tensor(data.age_bucket),
        "gender": torch.as_tensor(data.gender),
        "race": torch.as_tensor(data.race),
    }
    classes = {"age": len(age_buckets), "gender": NUM_GENDERS, "race": NUM_RACES}
    model = AttributeNet(classes, width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        perm = tr[rng.permutation(len(tr))]
        losses = []
        for i in range(0, len(perm), batch_size):
            idx = torch.as_tensor(perm[i : i + batch_size])
            if len(idx) < 2:  # BatchNorm needs 2+
                continue
            xb = x[idx]
            if rng.random() < 0.5:
                xb = xb.flip(-1)  # horizontal flip: labels are mirror-invariant
            loss = multi_head_loss(model(xb), {k: v[idx] for k, v in y.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        log.info(
            "attributes: epoch %d/%d loss %.4f", epoch + 1, epochs, float(np.mean(losses)) if losses else float("nan")
        )
    vidx = torch.as_tensor(val)
    held_out = _accuracy(model, x[vidx], {k: v[vidx] for k, v in y.items()})
    meta = {
        "format": FORMAT,
        "classes": classes,
        "age_buckets": list(age_buckets),
        "resolution": resolution,
        "width": width,
        "held_out": held_out,
        "num_train": int(len(tr)),
        "num_held_out": int(len(val)),
        "epochs": epochs,
    }
    return model.eval(), meta


def save_classifier(storage: Storage, uri: str, model: AttributeNet, meta: dict[str, Any]) -> None:
    """Weights first, then the JSON that marks the folder complete."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    storage.write_bytes(join(uri, WEIGHTS_FILE), buf.getvalue())
    storage.write_json(join(uri, META_FILE), meta)


class AttributeTagger:
    """Callable: uint8 [N,H,W,3] -> {"age" (years, a representative age of the bucket),
    "gender", "race": int64 [N]}; `predict_buckets` gives age bucket indices instead."""

    def __init__(self, model: AttributeNet, meta: dict[str, Any], batch_size: int = 256):
        self.model = model.eval()
        self.meta = meta
        self.resolution = int(meta["resolution"])
        self.age_buckets = list(meta["age_buckets"])
        self.batch_size = batch_size

    @torch.no_grad()
    def predict_buckets(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in HEADS}
        for i in range(0, len(images), self.batch_size):
            logits = self.model(to_input(images[i : i + self.batch_size], self.resolution))
            for k in HEADS:
                out[k].append(logits[k].argmax(1).numpy().astype(np.int64))
        return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in out.items()}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        pred = self.predict_buckets(images)
        ages = np.asarray(representative_ages(self.age_buckets), np.int64)
        return {"age": ages[pred["age"]], "gender": pred["gender"], "race": pred["race"]}


def load_tagger(storage: Storage, uri: str) -> AttributeTagger:
    """Load a classifier folder written by `facegen attributes train`; UserError if missing/corrupt."""
    uri = normalize(uri)
    meta_uri = join(uri, META_FILE)
    try:
        present = storage.exists(meta_uri)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read attribute model {uri}: {e}") from e
    if not present:
        raise UserError(f"{uri} is not an attribute model (no {META_FILE}); train one with `facegen attributes train`")
    try:
        meta = json.loads(storage.read_text(meta_uri))
        model = AttributeNet({k: int(v) for k, v in meta["classes"].items()}, int(meta.get("width", 32)))
        state = torch.load(
            io.BytesIO(storage.read_bytes(join(uri, WEIGHTS_FILE))), map_location="cpu", weights_only=True
        )
        model.load_state_dict(state)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise UserError(f"attribute model {uri} is incomplete or corrupt: {e}") from e
    return AttributeTagger(model, meta)


__all__ = [
    "AttributeNet",
    "AttributeTagger",
    "LabelledImages",
    "train_attribute_classifier",
    "save_classifier",
    "load_tagger",
    "multi_head_loss",
    "representative_ages",
    "to_input",
]
