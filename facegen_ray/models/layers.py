"""Building blocks shared by the generator and the discriminator.

Equalized learning rate (Karras et al., ProGAN): weights are stored as N(0, 1) / lr_mul and
scaled at run time by lr_mul / sqrt(fan_in), so every layer learns at the same speed under
Adam whatever its fan-in. All weight scaling happens on temporaries in `forward` (never
in place on parameters), which keeps the modules usable inside DistributedDataParallel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facegen_ray.models.resample import (  # noqa: F401 - re-exported: the layers' public API
    STRIDED_DOWN_MIN_SIZE,
    UPSAMPLE_CONV_MIN_SIZE,
    bilinear_taps,
    box_downsample_kernel,
    downsample2x,
    upsample2x,
    upsample_conv3x3,
    upsample_then_conv,
)

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activations' second moment ~1 after leaky ReLU


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) scaled by sqrt(2)."""
    return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Pixel norm: divide by the root mean square over `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def runtime_gains(module: nn.Module):
    """(parameter, gain) for every parameter of `module`, each once: the factor forward()
    multiplies the stored parameter by (weight_gain / bias_gain of the equalized layers, 1 for
    anything else). The weights the network actually applies are parameter * gain."""
    seen: set[int] = set()
    for m in module.modules():
        for name, attr in (("weight", "weight_gain"), ("bias", "bias_gain")):
            p = m._parameters.get(name)
            if p is not None and hasattr(m, attr) and id(p) not in seen:
                seen.add(id(p))
                yield p, float(getattr(m, attr))
    for p in module.parameters():
        if id(p) not in seen:
            yield p, 1.0


class PixelNorm(nn.Module):
    """Normalizes each feature vector to unit RMS (applied to z before the mapping network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_2nd_moment(x, dim=1)


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalized learning rate and an lr multiplier.

    x [N, in] -> [N, out]; optional leaky-ReLU activation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        if activation not in (None, "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lrelu(x) * sqrt(2) == leaky_relu(x * sqrt(2)): the activation's gain rides on the
        # (small) weight and bias instead of costing a pass over the output
        gain = LRELU_GAIN if self.activation == "lrelu" else 1.0
        w = self.weight * (self.weight_gain * gain)
        b = self.bias * (self.bias_gain * gain) if self.bias is not None else None
        x = F.linear(x, w, b)
        return F.leaky_relu(x, LRELU_SLOPE) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


class EqualizedConv2d(nn.Module):
    """2-D convolution with equalized learning rate; 'same' padding; optional 2x down-sampling
    (box filter after the conv) and leaky-ReLU.  x [N,in,H,W] -> [N,out,H',W'].

    `forward(x, gain)` returns gain * (the layer's output), gain > 0, at no extra cost.

    How it runs (the same function, fewer passes over the activations): the bias is added by the
    convolution itself; the activation's sqrt(2) and `gain` scale the weight and bias, since
    g * lrelu(z) == lrelu(g * z) for g > 0; with `down`, "3x3 conv, then 2x2 box filter" is one
    4x4 convolution with stride 2 whose kernel is the 3x3 kernel convolved with the box (exact,
    zero padding included): no pooling pass, and the convolution does 16/4 instead of 9
    multiply-adds per output pixel and input channel. Below STRIDED_DOWN_MIN_SIZE pixels of input
    width it stays conv + pool: there oneDNN's backward of the strided conv is the slower one
    (models/resample.py).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str | None = None,
        down: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if activation not in (None, "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.down = down

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        if self.activation == "lrelu":
            gain = gain * LRELU_GAIN
        weight = self.weight * (self.weight_gain * gain)
        bias = self.bias * gain if self.bias is not None else None
        if self.down and x.shape[-1] >= STRIDED_DOWN_MIN_SIZE:
            x = F.conv2d(x, box_downsample_kernel(weight), bias, stride=2, padding=self.kernel_size // 2)
        elif self.down:
            x = downsample2x(F.conv2d(x, weight, padding=self.kernel_size // 2))
            if bias is not None:
                x = x + bias.to(x.dtype).view(1, -1, 1, 1)
        else:
            x = F.conv2d(x, weight, bias, padding=self.kernel_size // 2)
        return F.leaky_relu(x, LRELU_SLOPE) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
            f"down={self.down}, activation={self.activation}"
        )


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: the style s = A(w) scales the input channels of the
    weight, and (with `demodulate`) each output channel's weight is renormalised to unit L2
    norm, replacing AdaIN's instance normalisation.

    Two equal ways to compute it (StyleGAN2's fused_modconv switch):
    - fused=False (default): scale the input by the styles, one ordinary conv with the shared
      weight for the whole batch, scale the output by the demodulation coefficients
      d = rsqrt(s^2 @ sum_k(w^2)). One large conv instead of N small ones: much faster on CPU
      and in training.
    - fused=True: build each sample's weight and run one grouped conv (groups = N).

    x [N,in,H,W], w [N,w_dim] -> [N,out,H',W'] (H' = 2H with `up`). No bias, no activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        demodulate: bool = True,
        up: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.up = up
        self.fused = False
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if up:  # not in the state dict: old checkpoints load unchanged
            self.register_buffer("up_taps", bilinear_taps(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y, dcoefs = self.modulated(x, w)
        if dcoefs is None:
            return y
        return y * dcoefs.to(y.dtype).view(y.shape[0], -1, 1, 1)

    def modulated(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(y, dcoefs): the layer's output is y * dcoefs[:, :, None, None]. Unfused with
        demodulation, y is the convolution of the modulated input and dcoefs [N,out] (float32)
        the demodulation coefficients, so a caller can fold them into its own elementwise pass
        (SynthesisLayer does); otherwise y is the output itself and dcoefs None."""
        n = x.shape[0]
        # modulation and demodulation in float32 even under autocast (sum of squares overflows fp16)
        styles = self.affine(w).float()  # [N, in]
        weight = self.weight.float() * self.weight_gain  # [out, in, k, k]
        if not self.fused and self.kernel_size == 1 and not self.demodulate and not self.up and x.is_contiguous():
            # a 1x1 conv with per-sample weights is a batched matrix product: no pass to scale
            # the input, and no grouped convolution (slow on CPU for toRGB's shapes)
            h, w_ = x.shape[2], x.shape[3]
            wgt = weight.view(1, self.out_channels, self.in_channels) * styles.view(n, 1, -1)  # [N, out, in]
            y = torch.bmm(wgt.to(x.dtype), x.reshape(n, self.in_channels, h * w_))
            return y.view(n, self.out_channels, h, w_), None
        if not self.fused:
            # styles scale channels, which commutes with the bilinear upsampling: scale first,
            # on a quarter of the pixels
            x = x * styles.to(x.dtype).view(n, -1, 1, 1)
            if self.up:
                x = upsample_then_conv(x, weight.to(x.dtype), self.up_taps)  # [N, out, 2H, 2W]
            else:
                x = F.conv2d(x, weight.to(x.dtype), padding=self.kernel_size // 2)  # [N, out, H, W]
            if not self.demodulate:
                return x, None
            dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()  # [N, out]
            return x, dcoefs
        if self.up:
            x = upsample2x(x)
        wgt = weight.unsqueeze(0) * styles.view(n, 1, -1, 1, 1)  # [N, out, in, k, k]
        if self.demodulate:
            dcoefs = (wgt.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt()  # [N, out]
            wgt = wgt * dcoefs.view(n, -1, 1, 1, 1)
        h, w_ = x.shape[2], x.shape[3]
        x = x.reshape(1, n * self.in_channels, h, w_)
        wgt = wgt.reshape(n * self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        x = F.conv2d(x, wgt.to(x.dtype), padding=self.kernel_size // 2, groups=n)  # autocast recasts
        return x.reshape(n, self.out_channels, h, w_), None

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
            f"demodulate={self.demodulate}, up={self.up}, fused={self.fused}"
        )


class AdaINConv2d(nn.Module):
    """StyleGAN1-style layer core: plain equalized conv, later followed by instance norm and a
    per-channel style scale/bias (see `AdaIN`). x [N,in,H,W], w ignored -> [N,out,H',W']."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, up: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.up = up
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if up:
            self.register_buffer("up_taps", bilinear_taps(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_then_conv(x, self.weight * self.weight_gain, self.up_taps)
        return F.conv2d(x, self.weight * self.weight_gain, padding=self.kernel_size // 2)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: instance-norm x, then scale by (ys) and shift by (yb),
    both affine functions of w.  x [N,C,H,W], w [N,w_dim] -> [N,C,H,W]."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.channels = channels
        self.affine = EqualizedLinear(w_dim, 2 * channels)
        with torch.no_grad():  # initial style: scale 1, bias 0
            self.affine.bias[:channels].fill_(1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w).float()  # [N, 2C]
        ys, yb = style[:, : self.channels], style[:, self.channels :]
        xf = x.float()
        mean = xf.mean(dim=(2, 3), keepdim=True)
        var = xf.var(dim=(2, 3), keepdim=True, unbiased=False)
        xf = (xf - mean) * (var + 1e-8).rsqrt()
        out = xf * ys.view(-1, self.channels, 1, 1) + yb.view(-1, self.channels, 1, 1)
        return out.to(x.dtype)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned per-channel strength (init 0).

    noise_mode: "random" draws fresh noise [N,1,H,W]; "const" uses a fixed buffer drawn at
    construction (stored in the state dict, so generation is deterministic); "none" adds nothing.
    """

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        noise = self.sample(x, noise_mode)
        if noise is None:
            return x
        return x + noise * self.strength.to(x.dtype).view(1, -1, 1, 1)

    def sample(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor | None:
        """The noise image [N or 1,1,H,W] to add to x (before the per-channel strength), or None."""
        if noise_mode == "none":
            return None
        if noise_mode == "random":
            return torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        if noise_mode == "const":
            return self.noise_const.to(x.dtype)
        raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")


class MinibatchStdDev(nn.Module):
    """Appends the across-group standard deviation of the features as extra channels, so D can
    see a lack of variety in a batch.  x [N,C,H,W] -> [N,C+num_channels,H,W].

    Groups of `group_size` samples (the largest divisor of N not above it, so any batch size
    works; a batch of 1 gives std 0). Channels are split into `num_channels` parts, each
    reduced to one scalar per group, broadcast over H,W.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """parts > 1: x is that many equal batches side by side (e.g. reals then fakes), and
        each gets its own statistics, exactly as if it had been passed alone."""
        if self.num_channels == 0:
            return x
        if parts > 1:
            return torch.cat([self(chunk) for chunk in x.chunk(parts)])
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g != 0:
            g -= 1
        f = self.num_channels
        if c % f != 0:
            raise ValueError(f"MinibatchStdDev: {c} channels not divisible by num_channels={f}")
        y = x.float().reshape(g, n // g, f, c // f, h, w)  # [G, M, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [M, F, c, H, W]
        y = y.mean(dim=(2, 3, 4))  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y.to(x.dtype)], dim=1)
