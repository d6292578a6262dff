"""Rendering requests with controls (mix / interpolate / edit) on a loaded model; no Ray here.

The generator replica (serve/replica.py) renders a batch's plain requests with
`generation.generate` and hands the requests with controls to `render_controlled`: every
request's ws are computed on its own (its mix/interpolation partner and edit), then all rows of
the batch go through the synthesis network together, `forward_batch` rows at a time. A
request the model cannot do (unknown direction, crossover beyond its layers, no directions,
mixing on a model trained without style mixing)
gets its ControlError (the replica answers it 422) and does not affect the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from facegen_ray.models.latent import Control, ControlError, control_ws, synthesize


def control_of(item: dict[str, Any]) -> Control | None:
    """The request item's controls (None for a plain request); ControlError when they clash."""
    return Control.from_item(item)


def render_controlled(
    model, jobs: Sequence[tuple[list[int], float, list[int] | None, Control]], forward_batch: int | None = None
) -> list[np.ndarray | ControlError]:
    """jobs: (seeds, psi, condition codes or None, controls) per request -> per request uint8
    images [k,H,W,3] or the ControlError that refused it."""
    G = model.G
    out: list[np.ndarray | ControlError | None] = [None] * len(jobs)
    rows: list[torch.Tensor] = []
    owners: list[int] = []
    for j, (seeds, psi, cond, ctl) in enumerate(jobs):
        try:
            if ctl.edit and model.directions is None and model.directions_error:
                raise ControlError(model.directions_error)
            c = torch.tensor([cond], dtype=torch.long) if (cond is not None and model.conditional) else None  # [1,3]
            ws = control_ws(G, seeds, psi, c, ctl, model.directions, model.cfg.style_mixing_prob)  # [k,L,D]
        except ControlError as e:
            out[j] = e
            continue
        rows.append(ws)
        owners.append(j)
    if rows:
        images = synthesize(G, torch.cat(rows, dim=0), forward_batch)  # [sum k,H,W,3]
        pos = 0
        for j, ws in zip(owners, rows):
            out[j] = images[pos : pos + ws.shape[0]]
            pos += ws.shape[0]
    return out  # type: ignore[return-value]
