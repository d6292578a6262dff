"""The generated side of an evaluation: a generator's images for a list of seeds (the same
seed -> face mapping as serving) and their Inception features, in-process or from Ray actors
that each hold the generator and the Inception.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from facegen_ray.config import EvalConfig
from facegen_ray.metrics.inception import InceptionExtractor, resolve_device
from facegen_ray.metrics.reals import _Progress
from facegen_ray.models.export import load_model_dir
from facegen_ray.models.sampling import generate as sample_images
from facegen_ray.storage import Storage

# Imported where used, not here: ray (only with actors).


# ---------------------------------------------------------------- generated images


def generate_uint8(
    G: torch.nn.Module,
    seeds: Sequence[int],
    truncation: float,
    *,
    c: torch.Tensor | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Images for seeds with truncation ψ and const noise -> uint8 [N,R,R,3] — the same
    seed -> face mapping as serving (facegen_ray.models.sampling)."""
    if not len(seeds):
        return np.zeros((0, 0, 0, 3), np.uint8)
    return sample_images(G, list(seeds), truncation, c=c, device=device, batch_size=batch_size)


def conditioning_for(
    G: torch.nn.Module, labels: dict[str, np.ndarray] | None, n: int, seed: int
) -> torch.Tensor | None:
    """Conditional models: attribute rows drawn (seeded) from the data's labels, [n,3]; else None."""
    if not getattr(G, "conditional", False) or labels is None or len(labels["age"]) == 0:
        return None
    idx = np.random.default_rng(seed + 1).integers(0, len(labels["age"]), size=n)
    return torch.as_tensor(
        np.stack([labels["age"][idx], labels["gender"][idx], labels["race"][idx]], 1), dtype=torch.long
    )


class GeneratedFeatureWorker:
    """Holds a generator and the Inception; seeds -> (features [n,2048], uint8 images or None).
    Used directly in-process and as a Ray actor (ray.remote(GeneratedFeatureWorker))."""

    def __init__(
        self,
        storage: Storage,
        model_uri: str,
        inception_path: str | None,
        device: str,
        batch_size: int,
        inception_mode: str = "auto",
    ):
        self.device = resolve_device(device)
        self.G, self.model_cfg, self.metadata = load_model_dir(storage, model_uri, device=self.device)
        self.extractor = InceptionExtractor(inception_path, self.device, batch_size, inception_mode, storage=storage)
        self.batch_size = batch_size

    def run(
        self, seeds: Sequence[int], truncation: float, c: torch.Tensor | None = None, keep_images: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        imgs = generate_uint8(self.G, seeds, truncation, c=c, batch_size=self.batch_size, device=self.device)
        return self.extractor(imgs), (imgs if keep_images else None)


def generated_features(
    seeds: Sequence[int],
    truncation: float,
    cfg: EvalConfig,
    *,
    c: torch.Tensor | None = None,
    keep_images: bool = False,
    actors: list | None = None,
    local: GeneratedFeatureWorker | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of the generator's images for `seeds`, from Ray actors (when given) or `local`."""
    chunk = max(1, cfg.batch_size)
    parts = [list(seeds[i : i + chunk]) for i in range(0, len(seeds), chunk)]
    cs = [c[i : i + chunk] if c is not None else None for i in range(0, len(seeds), chunk)]
    bar = _Progress(len(seeds), f"inception(generated, psi={truncation})")
    results: list[tuple[np.ndarray, np.ndarray | None]] = []
    if actors:
        from ray.util import ActorPool

        pool = ActorPool(actors)
        for res in pool.map(lambda a, v: a.run.remote(v[0], truncation, v[1], keep_images), list(zip(parts, cs))):
            results.append(res)
            bar.update(len(res[0]))
    else:
        assert local is not None
        for p, cc in zip(parts, cs):
            results.append(local.run(p, truncation, cc, keep_images))
            bar.update(len(p))
    bar.close()
    feats = np.concatenate([r[0] for r in results])
    imgs = np.concatenate([r[1] for r in results]) if keep_images else None
    return feats, imgs
