"""FIR up/down-sampling in plain PyTorch (StyleGAN2 ``upfirdn2d`` semantics).

``upfirdn2d`` = upsample by zero insertion, pad (negative pads crop), convolve with a
2-D FIR filter (a true convolution, i.e. cross-correlation with the flipped kernel),
then keep every ``down``-th sample.  Runs on any device, no compiled extension.
Karras et al. 2020 (StyleGAN2), used by NCSN++ (Song et al. 2021, Appendix H).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def setup_kernel(k: Sequence[float] | np.ndarray) -> torch.Tensor:
    """A 1-D (separable) or 2-D filter, turned 2-D and normalised to sum 1 (float64)."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    return torch.from_numpy(k / k.sum())


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample (zero insertion), pad both spatial dims by ``pad``, FIR-filter, downsample."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:  # negative padding crops
        c0, c1 = max(-p0, 0), max(-p1, 0)
        x = x[:, :, c0:x.shape[2] - c1, c0:x.shape[3] - c1]
    kh, kw = kernel.shape
    weight = kernel.to(x.dtype).to(x.device).flip(0, 1).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2, gain: float = 1.0) -> torch.Tensor:
    """FIR upsampling: [N,C,H,W] -> [N,C,H*factor,W*factor]; constant images stay constant."""
    kernel = setup_kernel(k) * (gain * factor ** 2)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2, gain: float = 1.0) -> torch.Tensor:
    """FIR downsampling: [N,C,H,W] -> [N,C,H//factor,W//factor]."""
    kernel = setup_kernel(k) * gain
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float], factor: int = 2,
                     gain: float = 1.0) -> torch.Tensor:
    """Fused (zero-insertion upsample -> conv with ``w`` -> FIR filter), StyleGAN2 semantics."""
    kernel = setup_kernel(k) * (gain * factor ** 2)
    conv_w = w.shape[-1]
    p = (kernel.shape[0] - factor) - (conv_w - 1)
    # a transposed conv with the spatially flipped, in/out-swapped weight = zero insertion + correlation with w
    x = F.conv_transpose2d(x, w.transpose(0, 1).flip(2, 3), stride=factor)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float], factor: int = 2,
                       gain: float = 1.0) -> torch.Tensor:
    """Fused (FIR filter -> strided conv with ``w``), StyleGAN2 semantics."""
    kernel = setup_kernel(k) * gain
    p = (kernel.shape[0] - factor) + (w.shape[-1] - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor)


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling (each pixel repeated factor x factor)."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average over factor x factor blocks (a mean over block axes; same rounding as score_sde_pytorch)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


class FIRConv2d(nn.Module):
    """A KxK convolution fused with FIR up- or down-sampling by 2 (StyleGAN2 ``Conv2d``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, up: bool = False, down: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        if up and down:
            raise ValueError("FIRConv2d: choose at most one of up=True / down=True")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"FIRConv2d: kernel size must be odd and >= 1, got {kernel}")
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down, self.fir_kernel = up, down, tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = upsample_conv_2d(x, self.weight, self.fir_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, self.fir_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2)
        return x + self.bias.view(1, -1, 1, 1)
