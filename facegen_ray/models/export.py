"""Model directories: the exported generator that evaluate / generate / serve load.

<uri>/generator.pt   torch state_dict of G_ema (incl. buffers stage, alpha, w_avg, const noise)
<uri>/model.json     {"format": 1, "model": ModelConfig dump, "metadata": {...}} -- written
                     LAST: its presence marks a complete directory (registry.MODEL_MARKER).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from facegen_ray.config import ModelConfig
from facegen_ray.errors import UserError
from facegen_ray.models.ema import unwrap
from facegen_ray.models.generator import Generator
from facegen_ray.storage import Storage, join

FORMAT = 1
WEIGHTS_FILE = "generator.pt"
MODEL_FILE = "model.json"


def save_model_dir(storage: Storage, uri: str, G_ema: nn.Module, model_cfg: ModelConfig, metadata: dict) -> None:
    """Write the generator weights, then model.json (the completeness marker)."""
    G = unwrap(G_ema)
    state = {k: v.detach().cpu().clone() for k, v in G.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(join(uri, WEIGHTS_FILE), buf.getvalue())
    meta = dict(metadata or {})
    meta.setdefault("stage", int(G.synthesis.current_stage) if hasattr(G, "synthesis") else None)
    meta.setdefault("alpha", float(G.synthesis.current_alpha) if hasattr(G, "synthesis") else None)
    meta.setdefault("conditional", bool(model_cfg.conditional))
    doc = {"format": FORMAT, "model": model_cfg.model_dump(mode="json"), "metadata": meta}
    storage.write_json(join(uri, MODEL_FILE), doc)


def load_model_dir(
    storage: Storage, uri: str, device: str | torch.device = "cpu"
) -> tuple[Generator, ModelConfig, dict[str, Any]]:
    """(Generator in eval mode at the stage/alpha it was saved with, its ModelConfig, metadata).

    Raises UserError when the directory is missing, incomplete or corrupt.
    """
    marker = join(uri, MODEL_FILE)
    try:
        present = storage.exists(marker)
    except Exception as e:  # noqa: BLE001 - unreachable storage is a user problem here
        raise UserError(f"cannot read model directory {uri}: {e}") from e
    if not present:
        raise UserError(
            f"{uri} is not a model directory (no {MODEL_FILE}); pass a directory written by "
            f"`facegen train` / export or a registry version"
        )
    try:
        doc = json.loads(storage.read_text(marker))
    except (ValueError, OSError) as e:
        raise UserError(f"{marker} is corrupt (not valid JSON): {e}") from e
    if not isinstance(doc, dict) or "model" not in doc:
        raise UserError(f"{marker} is missing the 'model' section; the model directory is corrupt")
    if int(doc.get("format", 0)) > FORMAT:
        raise UserError(
            f"{marker} has format {doc.get('format')}; this facegen reads format <= {FORMAT}; upgrade facegen"
        )
    model_doc = dict(doc["model"]) if isinstance(doc["model"], dict) else doc["model"]
    if isinstance(model_doc, dict):
        # models exported before `architecture` existed were all ProGAN-style ('orig') generators
        model_doc.setdefault("architecture", "orig")
    try:
        cfg = ModelConfig.model_validate(model_doc)
    except ValidationError as e:
        raise UserError(f"{marker} holds an invalid model config: {e}") from e
    weights = join(uri, WEIGHTS_FILE)
    try:
        data = storage.read_bytes(weights)
    except FileNotFoundError:
        raise UserError(f"model directory {uri} has no {WEIGHTS_FILE}; it is incomplete or corrupt") from None
    except OSError as e:
        raise UserError(f"cannot read {weights}: {e}") from e
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise UserError(f"{weights} is corrupt (cannot be loaded by torch): {e}") from e
    G = Generator(cfg)
    try:
        G.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{weights} does not match the model config in {MODEL_FILE}: {e}") from e
    G.set_stage(G.synthesis.current_stage, G.synthesis.current_alpha)  # validates the stored values
    G = G.to(device).eval().requires_grad_(False)
    return G, cfg, dict(doc.get("metadata") or {})
