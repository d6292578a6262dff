"""Full training state <-> a checkpoint directory (what Ray Train uploads and hands back).

A checkpoint directory holds

    state.pt          (rank 0) torch.save of: G, D, G_ema state_dicts, both optimizers, both
                      AMP GradScalers, loss state (path-length mean), counters (images seen,
                      D/G steps), data position (epoch, rows consumed), stage, alpha, history
    meta.json         (rank 0) counters + config JSON, readable without torch
    rng-rank<R>.pt    (every rank) that worker's torch/CUDA/numpy/python RNG states

Ray Train V2 merges the directories every worker reports into one, so each rank writes only
its own files. `meta.json` is written last by rank 0: a directory without it is incomplete.
"""

from __future__ import annotations

import io
import json
import os
import random
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = 1


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step draws from, as picklable objects."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def save_checkpoint(directory: str, rank: int, state: dict[str, Any] | None, meta: dict[str, Any] | None) -> None:
    """Write this rank's part of a checkpoint into a local directory.

    state/meta are only given on rank 0 (the model state is identical on every rank);
    every rank writes its RNG states.
    """
    os.makedirs(directory, exist_ok=True)
    _torch_save(capture_rng(), os.path.join(directory, rng_file(rank)))
    if rank == 0:
        if state is None or meta is None:
            raise ValueError("rank 0 must write the model state and meta")
        _torch_save({"format": FORMAT, **state}, os.path.join(directory, STATE_FILE))
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump({"format": FORMAT, **meta}, f, indent=2, sort_keys=True, default=str)


def load_checkpoint(directory: str, rank: int, map_location: str | torch.device = "cpu") -> tuple[dict, dict | None]:
    """(state dict, this rank's RNG states or None if that rank did not exist before).

    Raises FileNotFoundError / ValueError for an incomplete or foreign directory.
    """
    meta_path = os.path.join(directory, META_FILE)
    state_path = os.path.join(directory, STATE_FILE)
    if not (os.path.isfile(meta_path) and os.path.isfile(state_path)):
        raise FileNotFoundError(f"incomplete checkpoint in {directory}: needs {STATE_FILE} and {META_FILE}")
    state = torch.load(state_path, map_location=map_location, weights_only=False)
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {directory} has format {state.get('format')!r}, expected {FORMAT}")
    rng_path = os.path.join(directory, rng_file(rank))
    rng = torch.load(rng_path, map_location="cpu", weights_only=False) if os.path.isfile(rng_path) else None
    return state, rng


def read_meta(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, META_FILE)) as f:
        return json.load(f)
