"""Progressive growing's (stage, fade-in alpha) on the networks that grow: the synthesis
network and the discriminator.

The value a forward uses is a plain Python pair: either passed to `forward(stage=, alpha=)`
or, when not passed, the pair the schedule last set with `set_stage` (the training loop sets
it from `ProgressiveSchedule` before every step). Reading it costs no device sync (a CUDA
buffer's `.item()` waits for every queued kernel, and CUDA graph capture refuses it), and
under torch.compile a different pair recompiles instead of reusing a stale graph.

The `stage` / `alpha` buffers hold the same pair so that it travels with the state dict
(checkpoints, exported models); loading a state dict sets the Python pair from them, and the
EMA copies it along with the buffers (models/ema.py).
"""

from __future__ import annotations

import torch
from torch import nn


def set_progressive_state(
    stage_buf: torch.Tensor, alpha_buf: torch.Tensor, num_stages: int, stage: int, alpha: float
) -> None:
    """Validate and store (stage, fade-in alpha) in a network's buffers (so they checkpoint)."""
    stage, alpha = check_progress(num_stages, stage, alpha)
    with torch.no_grad():
        stage_buf.fill_(stage)
        alpha_buf.fill_(alpha)


def check_progress(num_stages: int, stage: int, alpha: float) -> tuple[int, float]:
    """(int stage, float alpha), or ValueError when outside [0, num_stages) x [0, 1]."""
    stage, alpha = int(stage), float(alpha)
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages - 1}], got {stage}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return stage, alpha


class Progressive(nn.Module):
    """Base of a network that grows: `stage` / `alpha` buffers, `set_stage`, and `progress`,
    the Python (stage, alpha) its forward uses by default. Subclasses set `num_stages` and
    call `init_progressive()` in their __init__."""

    num_stages: int
    progress: tuple[int, float]

    def init_progressive(self) -> None:
        """Start at the last stage, fully faded in (a full-resolution network)."""
        self.register_buffer("stage", torch.tensor(self.num_stages - 1, dtype=torch.long))
        self.register_buffer("alpha", torch.tensor(1.0))
        self.progress = (self.num_stages - 1, 1.0)
        self.register_load_state_dict_post_hook(_progress_from_buffers)

    def set_stage(self, stage: int, alpha: float = 1.0) -> None:
        set_progressive_state(self.stage, self.alpha, self.num_stages, stage, alpha)
        self.progress = (int(stage), float(alpha))

    def resolve_progress(self, stage: int | None, alpha: float | None) -> tuple[int, float]:
        """The (stage, alpha) a forward uses: the arguments, each defaulting to `progress`."""
        if stage is None and alpha is None:
            return self.progress
        held_stage, held_alpha = self.progress
        return check_progress(
            self.num_stages, held_stage if stage is None else stage, held_alpha if alpha is None else alpha
        )


def _progress_from_buffers(module: Progressive, incompatible_keys) -> None:
    """load_state_dict post-hook: the loaded buffers may hold another stage; read them once."""
    module.progress = (int(module.stage.item()), float(module.alpha.item()))


def copy_progress(dst: nn.Module, src: nn.Module) -> None:
    """Every Progressive module of `dst` takes the (stage, alpha) of the module of `src` with the
    same name (the two have the same structure: G and its EMA)."""
    src_modules = dict(src.named_modules())
    for name, m in dst.named_modules():
        if isinstance(m, Progressive):
            m.progress = src_modules[name].progress
