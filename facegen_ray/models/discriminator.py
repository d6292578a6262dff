"""StyleGAN discriminator, the mirror of the generator, grown progressively.

    img [N,3,R,R] -> FromRGB_s -> DBlock_s (R -> R/2) -> ... -> DBlock_1 (8 -> 4)
                  -> MinibatchStdDev -> conv 3x3 -> FC -> FC -> logit [N]

While stage s fades in (alpha < 1) the features entering DBlock_{s-1}'s level are
lerp(FromRGB_{s-1}(downsample(img)), DBlock_s(FromRGB_s(img)), alpha).
Conditional models add a projection term <embed(c), h> with h the last hidden features
(Miyato & Koyama, cGANs with projection discriminator).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from facegen_ray.config import ModelConfig
from facegen_ray.models.conditioning import ConditionEmbedding
from facegen_ray.models.generator import _broadcast_condition
from facegen_ray.models.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStdDev,
    downsample2x,
)
from facegen_ray.models.progressive import Progressive


class FromRGB(nn.Module):
    """1x1 equalized conv + leaky ReLU: [N,3,R,R] -> [N,C,R,R]."""

    def __init__(self, out_ch: int):
        super().__init__()
        self.conv = EqualizedConv2d(3, out_ch, 1, activation="lrelu")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.conv(img)


class DBlock(nn.Module):
    """Residual down-sampling block: [N,in,R,R] -> [N,out,R/2,R/2].

    main: conv3x3 (in->in) lrelu -> conv3x3 (in->out) lrelu with 2x box down-sampling;
    skip: 2x box down-sampling -> conv1x1 (in->out, no bias); output (main + skip) / sqrt(2).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3, activation="lrelu")
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3, activation="lrelu", down=True)
        self.skip = EqualizedConv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (main + skip) / sqrt(2), the 1/sqrt(2) carried by both branches' last weights
        y = self.skip(downsample2x(x), gain=math.sqrt(0.5))
        return self.conv1(self.conv0(x), gain=math.sqrt(0.5)) + y


class DEpilogue(nn.Module):
    """4x4 head: MinibatchStdDev -> conv3x3 -> flatten -> FC (lrelu) -> features h [N,C];
    `out` maps h to the logit."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.channels(4)
        self.mbstd = MinibatchStdDev(cfg.mbstd_group_size, cfg.mbstd_channels)
        self.conv = EqualizedConv2d(ch + cfg.mbstd_channels, ch, 3, activation="lrelu")
        self.fc = EqualizedLinear(ch * 16, ch, activation="lrelu")
        self.out = EqualizedLinear(ch, 1)

    def features(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        x = self.conv(self.mbstd(x, parts))  # [N, C, 4, 4]
        return self.fc(x.flatten(1))  # [N, C]


class Discriminator(Progressive):
    """D(img [N,3,R,R], c [N,3] | None) -> logits [N] at the current stage (R = 4 * 2**stage)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.num_stages = cfg.num_stages
        self.max_stage = cfg.num_stages - 1
        self.conditional = cfg.conditional
        self.fromrgb = nn.ModuleList(FromRGB(cfg.channels(4 * 2**s)) for s in range(cfg.num_stages))
        # blocks[s] takes stage s's resolution down to stage s-1's; blocks[0] is unused (None)
        self.blocks = nn.ModuleList(
            [nn.Identity()]
            + [DBlock(cfg.channels(4 * 2**s), cfg.channels(4 * 2 ** (s - 1))) for s in range(1, cfg.num_stages)]
        )
        self.epilogue = DEpilogue(cfg)
        if cfg.conditional:
            self.embed = ConditionEmbedding(cfg, cfg.channels(4), mode="sum")
        self.init_progressive()

    @property
    def current_resolution(self) -> int:
        return 4 * 2 ** self.progress[0]

    # forward() takes `parts`: losses may score reals and fakes in one batch (see losses.call_d_pair)
    accepts_parts = True

    def forward(
        self,
        img: torch.Tensor,
        c: torch.Tensor | None = None,
        parts: int = 1,
        *,
        stage: int | None = None,
        alpha: float | None = None,
    ) -> torch.Tensor:
        """parts > 1: img is that many equal batches side by side; the minibatch standard
        deviation (the only layer that mixes samples) keeps them apart, so the logits equal
        those of separate calls, at one larger batch's cost. stage / alpha: the
        progressive-growing point to score at (default: the one set_stage set)."""
        stage, alpha = self.resolve_progress(stage, alpha)
        res = 4 * 2**stage
        if img.dim() != 4 or img.shape[1] != 3 or img.shape[2] != res or img.shape[3] != res:
            raise ValueError(f"discriminator at stage {stage} expects [N,3,{res},{res}], got {tuple(img.shape)}")
        x = self.fromrgb[stage](img)  # [N, C_R, R, R]
        if stage > 0:
            x = self.blocks[stage](x)  # [N, C_R/2, R/2, R/2]
            if alpha < 1.0:
                old = self.fromrgb[stage - 1](downsample2x(img))
                x = old.to(x.dtype).lerp(x, alpha)  # alpha=0 -> exactly old (new block still in the graph)
            for s in range(stage - 1, 0, -1):
                x = self.blocks[s](x)
        h = self.epilogue.features(x, parts)  # [N, C4]
        out = self.epilogue.out(h).squeeze(1)  # [N]
        if self.conditional:
            if c is None:
                c = torch.full((img.shape[0], 3), -1, dtype=torch.long, device=img.device)
            c = _broadcast_condition(c, img.shape[0]).to(img.device)
            proj = (self.embed(c).to(h.dtype) * h).sum(dim=1) / math.sqrt(h.shape[1])
            out = out + proj
        return out
