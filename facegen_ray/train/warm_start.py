"""Warm start: a NEW training run that begins from the weights of another one (`train.init_from`).

What `facegen retrain` uses to fine-tune the serving model on base + feedback data. The source
is either

    a checkpoint directory   (<root>/runs/<run>/checkpoint-<images>/ with state.pt + meta.json):
                             G, D, G_ema, both optimisers, AMP scalers and the loss state are
                             loaded, and the image/step counters continue from it (so the EMA
                             ramp-up and the lazy-regularisation phase carry on instead of
                             restarting); the data position and RNG states do NOT (new data);
    a model directory        (model.json + generator.pt, e.g. when the run's checkpoints are
                             gone): G and G_ema start from the exported G_ema, D and the
                             optimisers are fresh, images_seen continues from its metadata.

A run that already has a checkpoint of its own resumes from that instead (Ray Train restores
it), so re-running a warm-started run name continues it exactly.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from facegen_ray.config import ModelConfig
from facegen_ray.errors import UserError
from facegen_ray.models.export import MODEL_FILE, WEIGHTS_FILE
from facegen_ray.storage import Storage, join
from facegen_ray.train.checkpoint import META_FILE, STATE_FILE


def source_kind(storage: Storage, uri: str) -> str:
    """ "checkpoint" | "model" for a warm-start URI; UserError when it is neither."""
    try:
        if storage.exists(join(uri, STATE_FILE)) and storage.exists(join(uri, META_FILE)):
            return "checkpoint"
        if storage.exists(join(uri, MODEL_FILE)) and storage.exists(join(uri, WEIGHTS_FILE)):
            return "model"
    except Exception as e:  # noqa: BLE001 - unreachable storage is a user problem here
        raise UserError(f"cannot read train.init_from {uri}: {e}") from None
    raise UserError(
        f"train.init_from {uri} is neither a complete checkpoint directory ({STATE_FILE} + {META_FILE}) "
        f"nor a model directory ({MODEL_FILE} + {WEIGHTS_FILE})"
    )


def check_init_from(storage: Storage, uri: str, model_cfg: ModelConfig) -> str:
    """Driver-side check before any worker starts: the source exists and was made with the same
    model architecture. Returns its kind."""
    kind = source_kind(storage, uri)
    if kind == "checkpoint":
        saved = json.loads(storage.read_text(join(uri, META_FILE))).get("config", {}).get("model")
    else:
        saved = json.loads(storage.read_text(join(uri, MODEL_FILE))).get("model")
    if isinstance(saved, dict):
        saved = {"architecture": "orig", **saved}  # saved before `architecture` existed: ProGAN-style G
    if saved is not None and ModelConfig.model_validate(saved) != model_cfg:
        raise UserError(
            f"train.init_from {uri} was trained with a different model config than this run's "
            f"model section; use the same model settings (facegen retrain copies them for you)"
        )
    return kind


def load_init_state(storage: Storage, uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The warm-start state of `uri`: {"kind", "G", "G_ema", "D"?, "opt_g"?, "opt_d"?,
    "scaler_g"?, "scaler_d"?, "loss"?, "counters"} (keys missing for a model directory)."""
    kind = source_kind(storage, uri)
    if kind == "checkpoint":
        state = torch.load(
            io.BytesIO(storage.read_bytes(join(uri, STATE_FILE))), map_location=map_location, weights_only=False
        )
        keep = ("G", "D", "G_ema", "opt_g", "opt_d", "scaler_g", "scaler_d", "loss")
        out = {k: state[k] for k in keep if k in state}
        c = state.get("counters", {})
        out["counters"] = {k: int(c.get(k, 0)) for k in ("images_seen", "d_steps", "g_steps", "iterations")}
    else:
        g = torch.load(
            io.BytesIO(storage.read_bytes(join(uri, WEIGHTS_FILE))), map_location=map_location, weights_only=True
        )
        meta = json.loads(storage.read_text(join(uri, MODEL_FILE))).get("metadata") or {}
        out = {
            "G": g,
            "G_ema": g,
            "counters": {"images_seen": int(meta.get("images_seen") or 0), "d_steps": 0, "g_steps": 0, "iterations": 0},
        }
    out["kind"] = kind
    return out


def apply_init_state(gan, init: dict[str, Any]) -> dict[str, int]:
    """Load a load_init_state() result into a GANSteps (train.steps); returns the counters to
    continue from. Parts the source lacks (D, optimisers for a model dir) stay freshly initialised."""
    gan.G.load_state_dict(init["G"])
    gan.G_ema.load_state_dict(init["G_ema"])
    if "D" in init:
        gan.D.load_state_dict(init["D"])
    for name in ("opt_g", "opt_d", "scaler_g", "scaler_d"):
        if name in init:
            getattr(gan, name).load_state_dict(init[name])
    fn = getattr(gan.loss, "load_state_dict", None)
    if callable(fn) and init.get("loss"):
        fn(init["loss"])
    return dict(init["counters"])


def warm_start(gan, storage: Storage, uri: str, device: str | torch.device = "cpu") -> dict[str, int]:
    """load_init_state + apply_init_state (what a Ray Train worker runs)."""
    return apply_init_state(gan, load_init_state(storage, uri, map_location=device))


__all__ = ["source_kind", "check_init_from", "load_init_state", "apply_init_state", "warm_start"]
