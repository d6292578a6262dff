"""Deterministic sampling: seed -> latent -> image, shared by the Serve app and `facegen generate`.

No Ray here (the CLI uses it without a cluster). The pieces:

- `seeds_to_z(seeds, z_dim)`: each seed draws its own latent from a CPU `torch.Generator`,
  so a seed means the same z whatever else is in the batch and on whichever device G runs.
- `generate(G, seeds, truncation, c, device)`: uint8 images NHWC with `noise_mode="const"`
  (the stored noise buffers), so a (model, seed, psi, attributes) tuple fixes the image. The
  float output may still differ in the last bits between batch compositions (matrix kernels
  block differently for different N); the Serve app therefore stores the first rendering of
  every image id and serves those stored bytes on repeats -- see feedback.FeedbackStore.
- `image_id(...)`: the hex id the feedback store files an image under: sha256 over
  (model version, weights digest, seed, quantised psi, condition codes), 32 hex chars. Same
  request on the same model -> same id; any change of weights -> a different id.
- `LoadedModel` / `load_model(storage, ref, root, device)`: a model directory or registry
  version resolved, loaded and fingerprinted (sha256 of generator.pt).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from facegen_ray.config import ModelConfig
from facegen_ray.errors import UserError
from facegen_ray.models import load_model_dir
from facegen_ray.models.directions import load_directions
from facegen_ray.models.sampling import (  # noqa: F401 - re-exported: the serving API
    PSI_DECIMALS,
    generate,
    quantize_psi,
    seeds_to_z,
    to_uint8,
)
from facegen_ray.provenance import GENERATOR, METADATA_KEY, PNG_COMPRESS_LEVEL, WATERMARK_ID, provenance_record
from facegen_ray.provenance import encode as encode_with_provenance
from facegen_ray.registry import Registry, RegistryError
from facegen_ray.storage import Storage, join

MAX_SEED = 2**31 - 1  # fits a JS number and every RNG API
IMAGE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
WEIGHTS_FILE = "generator.pt"
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


def encode_image(
    arr: np.ndarray, fmt: str = "png", quality: int = 95, provenance: dict[str, Any] | None = None
) -> bytes:
    """uint8 [H,W,3] -> PNG or JPEG bytes (deterministic: no timestamps or random chunks).
    With `provenance` (facegen_ray.provenance.provenance_record): the invisible watermark goes
    into the pixels and the record into a PNG text chunk / JPEG EXIF."""
    if fmt not in CONTENT_TYPES:
        raise UserError(f"unknown image format {fmt!r}; use png or jpeg")
    if provenance is not None:
        return encode_with_provenance(arr, fmt, quality, provenance)
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [H,W,3]."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [N,H,W,3] -> one uint8 [rows*(H+pad)-pad, cols*(W+pad)-pad, 3] grid (black padding)."""
    n, h, w, _ = images.shape
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[i]
    return grid


def parse_seeds(spec: str, max_count: int = 10_000) -> list[int]:
    """ "0-15" / "1,5,9" / "3" / "0-3,10" -> list of seeds (order kept, duplicates dropped)."""
    seeds: list[int] = []
    text = str(spec).strip()
    if not text:
        raise UserError("--seeds is empty; use e.g. 0-15 or 1,5,9")
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise UserError(f"seed range {part!r} is backwards; write it low-high (e.g. 0-15)")
            if b - a + 1 > max_count:
                raise UserError(f"seed range {part!r} has more than {max_count} seeds")
            seeds.extend(range(a, b + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise UserError(
                f"cannot parse seed {part!r}: use non-negative integers, ranges like 0-15, separated by commas"
            )
    out = list(dict.fromkeys(seeds))
    if len(out) > max_count:
        raise UserError(f"too many seeds ({len(out)} > {max_count})")
    bad = [s for s in out if s > MAX_SEED]
    if bad:
        raise UserError(f"seed {bad[0]} is too large (max {MAX_SEED})")
    return out


def image_id(
    model_version: str,
    weights_digest: str,
    seed: int,
    truncation: float,
    condition: Sequence[int] | None,
    control: dict[str, Any] | None = None,
) -> str:
    """32 hex chars identifying one rendered image: sha256 of the canonical JSON of
    (model version, weights digest, seed, quantised psi, condition codes or null[, controls]).
    control: `models.latent.Control.describe()` (mix / interpolate / edit); plain images (no
    controls) keep the ids they always had."""
    fields: list[Any] = [
        1,
        str(model_version),
        str(weights_digest),
        int(seed),
        f"{quantize_psi(truncation):.{PSI_DECIMALS}f}",
        [int(x) for x in condition] if condition is not None else None,
    ]
    if control:
        fields.append(control)
    payload = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def image_provenance(model: dict[str, Any], item: dict[str, Any], seed: int, image_id: str) -> dict[str, Any]:
    """The provenance record of one served image: model version, seed, psi, and every other
    request field (attributes, edits, style mixing) under "edit"."""
    edit = {"attributes": item["attributes"]} if item.get("attributes") else {}
    control = item.get("control")
    if control is None:
        control = {k: v for k, v in item.items() if k not in ("seeds", "truncation", "attributes")}
    edit.update({k: v for k, v in control.items() if v is not None})
    return provenance_record(model["model_version"], image_id, int(seed), float(item["truncation"]), edit)


def choose_device(num_gpus: float) -> str:
    """cuda when the replica asked for a GPU and one is visible, else cpu."""
    if num_gpus > 0 and torch.cuda.is_available():
        return "cuda"
    return "cpu"


@dataclass
class LoadedModel:
    """A generator ready to sample, plus what identifies it."""

    G: torch.nn.Module
    cfg: ModelConfig
    metadata: dict[str, Any]
    uri: str
    version: str  # label shown to clients
    digest: str  # sha256 of generator.pt (hex)
    device: str
    extra: dict[str, Any] = field(default_factory=dict)
    directions: Any = None  # models.directions.Directions when the directory has directions.json
    directions_error: str | None = None  # why directions.json could not be used (edits answer it)
    synthesis: Any = None  # models.sampling.GraphedSynthesis on GPU replicas (serve.cuda_graphs), else None

    @property
    def conditional(self) -> bool:
        return bool(self.cfg.conditional)

    @property
    def resolution(self) -> int:
        return int(self.G.current_resolution)

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "model_uri": self.uri,
            "weights_sha256": self.digest,
            "conditional": self.conditional,
            "resolution": self.resolution,
            "device": self.device,
            "num_ws": int(self.G.num_ws),
            "style_mixing": float(self.cfg.style_mixing_prob) > 0,
            "directions": list(self.directions.names) if self.directions is not None else None,
        }


def resolve_model(storage: Storage, ref: str, root: str) -> tuple[str, str]:
    """MODEL (dir URI / registry version / serving / latest) -> (model dir URI, registry label or "")."""
    try:
        return Registry(storage, root).resolve(ref)
    except RegistryError as e:
        raise UserError(str(e)) from None


def load_model(
    storage: Storage, ref: str, root: str, device: str = "cpu", *, resolved: tuple[str, str] | None = None
) -> LoadedModel:
    """Resolve and load a model; the version label is the registry name, else metadata["version"],
    else "sha-<first 12 hex of the weights digest>". `resolved` = (uri, label) skips the
    registry lookup (the Serve replicas load what the ingress already resolved). Raises
    UserError for bad references."""
    uri, label = resolved if resolved is not None else resolve_model(storage, ref, root)
    G, cfg, meta = load_model_dir(storage, uri, device=device)
    try:
        digest = hashlib.sha256(storage.read_bytes(join(uri, WEIGHTS_FILE))).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read {join(uri, WEIGHTS_FILE)}: {e}") from e
    version = label or str(meta.get("version") or "") or f"sha-{digest[:12]}"
    model = LoadedModel(G=G, cfg=cfg, metadata=meta, uri=uri, version=version, digest=digest, device=str(device))

    try:  # a bad directions.json must not stop the model from serving: edits report it
        model.directions = load_directions(storage, uri, cfg.w_dim, digest)
    except (UserError, OSError) as e:
        model.directions_error = str(e)
    return model


def response_provenance(model: dict[str, Any], truncation: float) -> dict[str, Any]:
    """What a /generate response says about its images (each image also carries it inside)."""
    return {
        "synthetic": True,
        "generator": GENERATOR,
        "model_version": model["model_version"],
        "psi": quantize_psi(truncation),
        "watermark": WATERMARK_ID,
        "metadata": f"PNG text chunk {METADATA_KEY!r} / JPEG EXIF ImageDescription (JSON)",
        "notice": "AI-generated faces: not photographs of real people",
    }
