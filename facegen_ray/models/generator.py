"""StyleGAN generator: mapping network (z -> w) and synthesis network (ws -> image), grown
progressively from 4x4 to the target resolution.

Layer <-> w index (num_ws = 2 * num_stages, StyleGAN2's sharing scheme):

    stage 0 (4x4):   const -> conv (ws[0])                        -> toRGB (ws[1])
    stage s >= 1:    conv up (ws[2s-1]) -> conv (ws[2s])          -> toRGB (ws[2s+1])

so ws[0:2] are the coarsest styles and the toRGB of stage s shares its w with the first conv
of stage s+1.

Two output architectures (`model.architecture`):
- "skip" (StyleGAN2's default, the one its FID figures come from): every block's toRGB
  contributes, img_s = upsample(img_{s-1}) + toRGB_s(x_s). While stage s fades in, the new
  block's toRGB enters scaled by alpha: img = upsample(img_{s-1}) + alpha * toRGB_s(x_s).
- "orig" (ProGAN / StyleGAN1 style): only the last block's toRGB is used; while stage s fades
  in, img = lerp(upsample(toRGB_{s-1}(x_{s-1})), toRGB_s(x_s), alpha).
In both, at alpha = 0 the output is exactly the upsampled output of stage s-1, and the
upsampling is `upsample2x` (bilinear = the [1,3,3,1] FIR filter), the same operator the
training loop applies to reals during a fade (train.steps.prepare_reals).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facegen_ray.config import ModelConfig
from facegen_ray.models.conditioning import ConditionEmbedding
from facegen_ray.models.layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    AdaIN,
    AdaINConv2d,
    EqualizedLinear,
    ModulatedConv2d,
    NoiseInjection,
    lrelu,
    normalize_2nd_moment,
    upsample2x,
)
from facegen_ray.models.progressive import Progressive

NOISE_MODES = ("random", "const", "none")


def _broadcast_condition(c: torch.Tensor, n: int) -> torch.Tensor:
    """c [N,3] or [1,3] (one condition for the whole batch) -> [N,3]."""
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if c.shape[0] == n:
        return c
    if c.shape[0] == 1:
        return c.expand(n, -1)
    raise ValueError(f"condition has {c.shape[0]} rows for a batch of {n}")


class MappingNetwork(nn.Module):
    """z [N,z_dim] (+ c [N,3]) -> ws [N,num_ws,w_dim].

    pixel-norm(z) (concatenated with the pixel-normed attribute embeddings when conditional)
    -> `mapping_layers` equalized FC layers with lr multiplier and leaky ReLU -> w, broadcast to
    every layer. Keeps `w_avg`, an EMA of w over training batches, for the truncation trick.
    """

    def __init__(self, cfg: ModelConfig, num_ws: int):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.w_dim = cfg.w_dim
        self.num_ws = num_ws
        self.w_avg_beta = cfg.w_avg_beta
        self.conditional = cfg.conditional
        in_dim = cfg.z_dim
        if cfg.conditional:
            self.embed = ConditionEmbedding(cfg, cfg.cond_embed_dim, mode="concat")
            in_dim += 3 * cfg.cond_embed_dim
        dims = [in_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.Sequential(
            *[
                EqualizedLinear(dims[i], dims[i + 1], lr_mul=cfg.mapping_lr_mul, activation="lrelu")
                for i in range(cfg.mapping_layers)
            ]
        )
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N,{self.z_dim}], got {tuple(z.shape)}")
        x = normalize_2nd_moment(z.to(self.layers[0].weight.dtype))  # [N, z_dim]
        if self.conditional:
            if c is None:  # all attributes unknown
                c = torch.full((z.shape[0], 3), -1, dtype=torch.long, device=z.device)
            c = _broadcast_condition(c, z.shape[0]).to(z.device)
            y = normalize_2nd_moment(self.embed(c)).to(x.dtype)  # [N, 3*embed]
            x = torch.cat([x, y], dim=1)
        w = self.layers(x)  # [N, w_dim]

        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg.float(), self.w_avg_beta))

        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else min(int(truncation_cutoff), self.num_ws)
            avg = self.w_avg.to(ws.dtype)
            head = avg.lerp(ws[:, :cutoff], truncation_psi)  # w_avg + psi * (w - w_avg)
            ws = torch.cat([head, ws[:, cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    """One style-controlled 3x3 conv: (upsample) conv -> noise -> bias -> leaky ReLU, with
    StyleGAN2 modulation/demodulation or (modulation="adain") StyleGAN1's AdaIN after the
    activation.  x [N,in,H,W], w [N,w_dim] -> [N,out,H',W']."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: bool, modulation: str, noise: bool):
        super().__init__()
        self.modulation = modulation
        if modulation == "modulated":
            self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, demodulate=True, up=up)
        elif modulation == "adain":
            self.conv = AdaINConv2d(in_ch, out_ch, 3, up=up)
            self.adain = AdaIN(out_ch, w_dim)
        else:
            raise ValueError(f"unknown modulation {modulation!r}")
        self.noise = NoiseInjection(out_ch, resolution) if noise else None
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if self.modulation == "modulated":
            return self._modulated_forward(x, w, noise_mode)
        x = self.conv(x)
        if self.noise is not None:
            x = self.noise(x, noise_mode)
        x = lrelu(x + self.bias.to(x.dtype).view(1, -1, 1, 1))
        if self.modulation == "adain":
            x = self.adain(x, w)
        return x

    def _modulated_forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        """lrelu(y * dcoefs + noise * strength + bias) in two fused passes (addcmul twice) and an
        in-place leaky ReLU, instead of six; the activation's sqrt(2) rides on the coefficients
        (g * lrelu(z) == lrelu(g * z), g > 0)."""
        y, dcoefs = self.conv.modulated(x, w)
        shift = (self.bias * LRELU_GAIN).to(y.dtype).view(1, -1, 1, 1)
        noise = self.noise.sample(y, noise_mode) if self.noise is not None else None
        if noise is not None:
            shift = torch.addcmul(shift, noise, (self.noise.strength * LRELU_GAIN).to(y.dtype).view(1, -1, 1, 1))
        if dcoefs is None:  # the grouped (fused) path: y is already demodulated
            x = torch.add(shift, y, alpha=LRELU_GAIN)
        else:
            x = torch.addcmul(shift, y, (dcoefs * LRELU_GAIN).to(y.dtype).view(y.shape[0], -1, 1, 1))
        return F.leaky_relu(x, LRELU_SLOPE, inplace=True)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation, plus bias: [N,C,H,W] -> [N,3,H,W]."""

    def __init__(self, in_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)
        return x + self.bias.to(x.dtype).view(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """The layers of one resolution: stage 0 is a single conv on the learned constant; later
    stages are conv-up + conv.  Each block has its own toRGB."""

    def __init__(self, cfg: ModelConfig, stage: int):
        super().__init__()
        res = 4 * 2**stage
        out_ch = cfg.channels(res)
        self.stage = stage
        self.resolution = res
        if stage == 0:
            self.convs = nn.ModuleList(
                [SynthesisLayer(out_ch, out_ch, cfg.w_dim, res, up=False, modulation=cfg.modulation, noise=cfg.noise)]
            )
        else:
            in_ch = cfg.channels(res // 2)
            self.convs = nn.ModuleList(
                [
                    SynthesisLayer(in_ch, out_ch, cfg.w_dim, res, up=True, modulation=cfg.modulation, noise=cfg.noise),
                    SynthesisLayer(
                        out_ch, out_ch, cfg.w_dim, res, up=False, modulation=cfg.modulation, noise=cfg.noise
                    ),
                ]
            )
        self.torgb = ToRGB(out_ch, cfg.w_dim)

    @property
    def first_w(self) -> int:
        """Index of this block's first w in ws."""
        return 0 if self.stage == 0 else 2 * self.stage - 1

    def forward(self, x: torch.Tensor, ws: torch.Tensor, noise_mode: str) -> torch.Tensor:
        i = self.first_w
        for conv in self.convs:
            x = conv(x, ws[:, i], noise_mode)
            i += 1
        return x

    def rgb(self, x: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        return self.torgb(x, ws[:, 2 * self.stage + 1])


class SynthesisNetwork(Progressive):
    """ws [N,num_ws,w_dim] -> image [N,3,R,R], R = 4 * 2**stage (current stage, fade-in alpha).

    (stage, alpha): forward's arguments, or the pair set_stage last set (models/progressive.py);
    the `stage` (long) and `alpha` (float) buffers hold it in the state dict.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_stages = cfg.num_stages
        self.num_ws = 2 * cfg.num_stages
        self.w_dim = cfg.w_dim
        self.architecture = cfg.architecture
        self.const = nn.Parameter(torch.randn(cfg.channels(4), 4, 4))
        self.blocks = nn.ModuleList(SynthesisBlock(cfg, s) for s in range(cfg.num_stages))
        self.init_progressive()

    @property
    def current_stage(self) -> int:
        return self.progress[0]

    @property
    def current_alpha(self) -> float:
        return self.progress[1]

    def num_used_ws(self, stage: int | None = None) -> int:
        """How many ws (from the start) the network reads at a stage."""
        s = self.current_stage if stage is None else stage
        return 2 * s + 2

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        *,
        stage: int | None = None,
        alpha: float | None = None,
    ) -> torch.Tensor:
        """stage / alpha: the progressive-growing point to render at (default: set_stage's)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.dim() != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N,{self.num_ws},{self.w_dim}], got {tuple(ws.shape)}")
        stage, alpha = self.resolve_progress(stage, alpha)
        n = ws.shape[0]
        x = self.const.unsqueeze(0).repeat(n, 1, 1, 1)  # [N, C4, 4, 4]
        if self.architecture == "skip":
            img = None
            for s in range(stage + 1):
                x = self.blocks[s](x, ws, noise_mode)
                y = self.blocks[s].rgb(x, ws)  # [N, 3, R_s, R_s]
                if s == stage and s > 0 and alpha < 1.0:
                    y = y * alpha  # the new block's toRGB fades in
                img = y if img is None else upsample2x(img).to(y.dtype) + y
            return img
        prev_x = None
        for s in range(stage + 1):
            if s == stage:
                prev_x = x
            x = self.blocks[s](x, ws, noise_mode)
        img = self.blocks[stage].rgb(x, ws)  # [N, 3, R, R]
        if stage > 0 and alpha < 1.0:
            # prev_x is the input to the new block = the output of block stage-1
            prev_img = upsample2x(self.blocks[stage - 1].rgb(prev_x, ws))
            img = prev_img.to(img.dtype).lerp(img, alpha)  # alpha=0 -> exactly prev_img
        return img


class Generator(nn.Module):
    """StyleGAN generator with progressive growing; see the module docstring for the layout.

    G(z, c) -> img [N,3,R,R] (roughly in [-1, 1]; not clamped).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.w_dim = cfg.w_dim
        self.num_ws = 2 * cfg.num_stages
        self.max_stage = cfg.num_stages - 1
        self.conditional = cfg.conditional
        self.mapping = MappingNetwork(cfg, self.num_ws)
        self.synthesis = SynthesisNetwork(cfg)

    # ---- progressive growing
    def set_stage(self, stage: int, alpha: float = 1.0) -> None:
        self.synthesis.set_stage(stage, alpha)

    @property
    def stage(self) -> int:
        return self.synthesis.current_stage

    @property
    def alpha(self) -> float:
        return self.synthesis.current_alpha

    @property
    def current_resolution(self) -> int:
        return 4 * 2**self.synthesis.current_stage

    # ---- sampling
    def mix_styles(
        self,
        ws: torch.Tensor,
        ws2: torch.Tensor,
        prob: float,
        generator: torch.Generator | None = None,
        stage: int | None = None,
    ) -> torch.Tensor:
        """Style mixing: per sample with probability `prob`, layers >= a random crossover index
        (in [1, used ws)) take their w from ws2.  ws, ws2 [N,num_ws,w_dim] -> [N,num_ws,w_dim]."""
        n, device = ws.shape[0], ws.device
        used = self.synthesis.num_used_ws(stage)
        cross = torch.randint(1, max(used, 2), (n,), generator=generator).to(device)  # [N]
        mix = torch.rand(n, generator=generator).to(device) < prob  # [N]
        cross = torch.where(mix, cross, torch.full_like(cross, self.num_ws))
        layer = torch.arange(self.num_ws, device=device).view(1, -1)  # [1, num_ws]
        take2 = (layer >= cross.view(-1, 1)).unsqueeze(-1)  # [N, num_ws, 1]
        return torch.where(take2, ws2, ws)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        style_mixing_prob: float = 0.0,
        update_w_avg: bool = False,
        noise_mode: str = "random",
        return_ws: bool = False,
        ws_offset: torch.Tensor | None = None,
        stage: int | None = None,
        alpha: float | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """z [N,z_dim], c [N,3] | None -> img [N,3,R,R] (and ws [N,num_ws,w_dim] with return_ws).

        stage / alpha: the progressive-growing point to render at (default: the one set_stage set).

        ws_offset [N,num_ws,w_dim] is added to the ws before synthesis; a zero tensor with
        requires_grad gives d img / d ws through wrappers (DDP) that re-wrap returned tensors,
        which is how the path-length regulariser differentiates.
        """
        stage, alpha = self.synthesis.resolve_progress(stage, alpha)
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        if style_mixing_prob > 0:
            z2 = torch.randn_like(z)
            ws2 = self.mapping(z2, c, truncation_psi, truncation_cutoff, update_w_avg=False)
            ws = self.mix_styles(ws, ws2, style_mixing_prob, stage=stage)
        if ws_offset is not None:
            ws = ws + ws_offset.to(ws.dtype)
        img = self.synthesis(ws, noise_mode=noise_mode, stage=stage, alpha=alpha)
        return (img, ws) if return_ws else img
