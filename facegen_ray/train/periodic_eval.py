"""FID during training: what rank 0 measures at `train.eval_every_images` points (and at the
end of the run) so Ray Tune can rank trials and stop bad ones early (ASHA).

The numbers use the same functions and conventions as `facegen evaluate`: the dataset's cached
reference features (Layout.reference_stats; `facegen tune` computes them once on the driver
before the trials start, so trials only read the cache), seeds eval.seed .. eval.seed+num_gen-1
with truncation eval.truncation and constant noise, the TorchScript Inception. So the FID of the
final point equals what `facegen evaluate` reports for the exported model with the same eval
settings. While the network is still growing, G_ema renders at the current stage's resolution
(lower than the dataset's); its FID is then that of the upsampled low-resolution faces.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from facegen_ray.config import FacegenConfig
from facegen_ray.metrics.evaluate import (
    compute_metrics,
    conditioning_for,
    data_labels,
    generate_uint8,
    reference_features,
)
from facegen_ray.metrics.fid import feature_stats
from facegen_ray.metrics.inception import InceptionExtractor
from facegen_ray.storage import Storage

log = logging.getLogger(__name__)

EVAL_METRICS = ("fid", "kid")  # the ones cheap enough to compute inside training


class PeriodicEvaluator:
    """Callable on rank 0: G_ema -> {"fid", ["kid", "kid_std"], "eval_num_gen", "eval_num_real",
    "eval_s"}. Loads the Inception and the reference features on first use and keeps them."""

    def __init__(self, cfg: FacegenConfig, storage: Storage, data_uri: str, device: torch.device):
        self.cfg = cfg
        self.storage = storage
        self.data_uri = data_uri
        self.device = device
        self._real = None  # [n_real,2048] float64
        self._mu_sigma = None
        self._extractor = None
        self._labels = None

    def _load(self, G_ema: torch.nn.Module) -> None:
        ecfg = self.cfg.eval
        self._extractor = InceptionExtractor(
            ecfg.inception_path, str(self.device), ecfg.batch_size, ecfg.inception_mode, storage=self.storage
        )
        real, info = reference_features(self.storage, self.data_uri, ecfg, extractor=self._extractor)
        sel = info.pop("selection")
        self._real = real
        self._mu_sigma = feature_stats(real)
        if getattr(G_ema, "conditional", False):
            self._labels = data_labels(self.storage, sel, self.cfg.model.age_buckets)

    @torch.no_grad()
    def __call__(self, G_ema: torch.nn.Module) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self._extractor is None:
            self._load(G_ema)
        ecfg = self.cfg.eval
        seeds = list(range(ecfg.seed, ecfg.seed + ecfg.num_gen))
        c = conditioning_for(G_ema, self._labels, len(seeds), ecfg.seed)
        # sampling is seeded per image; fork the RNGs anyway so training streams stay untouched
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            imgs = generate_uint8(
                G_ema, seeds, ecfg.truncation, c=c, batch_size=ecfg.batch_size, device=str(self.device)
            )  # [N,R,R,3] uint8
            feats = self._extractor(imgs)  # [N,2048]
        wanted = ["fid"] + (["kid"] if "kid" in ecfg.metrics else [])
        m = compute_metrics(feats, self._real, wanted, ecfg, self._mu_sigma)
        out: dict[str, Any] = {"fid": float(m["fid"]), "eval_num_gen": m["num_gen"], "eval_num_real": m["num_real"]}
        if "kid" in m:
            out["kid"], out["kid_std"] = float(m["kid"]["mean"]), float(m["kid"]["std"])
        out["eval_s"] = round(time.perf_counter() - t0, 3)
        return out
