"""Resampling for the generator and the discriminator: 2x bilinear up-sampling, 2x box
down-sampling, and the exact fused forms the layers use where they are faster (a 3x3 conv of
an up-sampled input as a transposed conv on the low-resolution input; "conv then 2x2 box
filter" as one strided conv). Each fused form equals the plain formula (tests/test_models.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# EqualizedConv2d(down=True): one strided conv from this input width up; below it conv + pool,
# whose backward oneDNN runs faster at small sizes (measurements: docs/performance.md)
STRIDED_DOWN_MIN_SIZE = 16
# upsample_then_conv: the transposed form from this input size up; below it the four border
# corrections cost more than the multiply-adds the form saves (docs/performance.md)
UPSAMPLE_CONV_MIN_SIZE = 8
_BILINEAR_TAPS = (0.25, 0.75, 0.75, 0.25)  # upsample2x = zero insertion, then these taps per axis


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,C,2H,2W], bilinear. Used for features and for the RGB fade-in skip."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,C,H/2,W/2], 2x2 box filter (average pooling)."""
    return F.avg_pool2d(x, 2)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(upsample2x(x), weight, padding=1) for a 3x3 weight, the same values at a quarter
    of the multiply-adds. x [N,in,h,w] (h, w >= 2), weight [out,in,3,3] -> [N,out,2h,2w].

    The bilinear upsampling is a zero-insertion followed by the separable filter
    [1,3,3,1]/4 (edges clamped), and a per-channel filter commutes with the convolution's
    channel mixing: so the 3x3 kernel runs first, as a stride-2 transposed convolution on the
    low-resolution input (edge-padded by one pixel: the clamp), and the filter after it, on
    each output channel alone. That differs from the original in one place: the 3x3 conv pads
    the upsampled image with zeros, while the transposed form sees the clamped values one pixel
    beyond its border; the four border lines subtract exactly what those values added.
    `taps`: the filter as a tensor on x's device (layers keep it as a buffer: building it here
    would copy from the host on every call, which CUDA graph capture refuses).
    """
    h, w_ = x.shape[2], x.shape[3]
    cout = weight.shape[0]
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    t = F.conv_transpose2d(xp, weight.flip(2, 3).transpose(0, 1), stride=2, padding=1)  # [N,out,2h+3,2w+3]
    f = bilinear_taps(t.device) if taps is None else taps
    f = f.to(t.dtype)
    y = F.conv2d(t, (f[:, None] * f[None, :]).expand(cout, 1, 4, 4), groups=cout)  # [N,out,2h,2w]
    # the clamped pixels beyond the border: the upsampled first/last rows (one pixel longer at
    # each end, the corners) and first/last columns of x
    rows = F.interpolate(xp[:, :, 1 : h + 1 : h - 1], scale_factor=(1.0, 2.0), mode="bilinear", align_corners=False)[
        ..., 1:-1
    ]  # [N,in,2,2w+2]
    cols = F.interpolate(
        x[:, :, :, 0 : w_ : w_ - 1], scale_factor=(2.0, 1.0), mode="bilinear", align_corners=False
    )  # [N,in,2h,2]
    y[:, :, :1, :] -= F.conv2d(rows[:, :, :1], weight[:, :, :1, :])
    y[:, :, -1:, :] -= F.conv2d(rows[:, :, 1:], weight[:, :, 2:, :])
    y[:, :, :, :1] -= F.conv2d(cols[..., :1], weight[:, :, :, :1], padding=(1, 0))
    y[:, :, :, -1:] -= F.conv2d(cols[..., 1:], weight[:, :, :, 2:], padding=(1, 0))
    return y


def bilinear_taps(device: torch.device | str | None = None) -> torch.Tensor:
    """The 1-D filter of upsample2x after zero insertion, [4] float32."""
    return torch.tensor(_BILINEAR_TAPS, device=device)


def upsample_then_conv(x: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(upsample2x(x), weight, 'same' padding), by upsample_conv3x3 where that is faster."""
    if weight.shape[-1] == 3 and min(x.shape[2], x.shape[3]) >= UPSAMPLE_CONV_MIN_SIZE:
        return upsample_conv3x3(x, weight, taps)
    return F.conv2d(upsample2x(x), weight, padding=weight.shape[-1] // 2)


def box_downsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """[out,in,k,k] -> [out,in,k+1,k+1]: the kernel of "conv(weight, padding k//2), then 2x2
    average pooling" as a single convolution with stride 2 and padding k//2 (k odd)."""
    w = F.pad(weight, (1, 1, 1, 1))
    return (w[:, :, :-1, :-1] + w[:, :, 1:, :-1] + w[:, :, :-1, 1:] + w[:, :, 1:, 1:]) * 0.25
