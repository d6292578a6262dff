"""Exponential moving average of generator weights (G_ema), used for sampling and export."""

from __future__ import annotations

import torch
from torch import nn

from facegen_ray.models.progressive import copy_progress


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (stage, alpha, w_avg,
    const noise) are copied. beta = 0 copies everything; beta = 1 leaves ema unchanged.
    Either argument may be wrapped in DDP or torch.compile."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"EMA beta must be in [0, 1], got {beta}")
    ema_model, model = unwrap(ema_model), unwrap(model)
    src_params = dict(model.named_parameters())
    for name, p_ema in ema_model.named_parameters():
        p = src_params[name]
        p_ema.copy_(p.detach().to(p_ema.dtype).lerp(p_ema, beta))
    src_buffers = dict(model.named_buffers())
    for name, b_ema in ema_model.named_buffers():
        b_ema.copy_(src_buffers[name])
    copy_progress(ema_model, model)  # the (stage, alpha) forwards use, beside its buffers
