"""Building blocks shared by the DDPM and NCSN++ U-Nets.

Numerics follow score_sde_pytorch so that its checkpoints load and give the same
outputs: DDPM initialisation (variance scaling, fan_avg, uniform), GroupNorm eps 1e-6,
channel-wise attention of Ho et al. 2020, optional 1/sqrt(2) skip rescaling (Song et al.
2021, Appendix H).  Children are registered in the original's construction order, so the
state-dict order equals the original's (this is what checkpoint import relies on).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fir

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
}


def get_activation(name: str) -> nn.Module:
    """Activation module by config name (``model.nonlinearity``)."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown model.nonlinearity {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


# ----------------------------------------------------------------------------- init
@torch.no_grad()
def default_init_(weight: torch.Tensor, scale: float = 1.0, in_axis: int = 1, out_axis: int = 0) -> torch.Tensor:
    """DDPM init: variance scaling with fan_avg and a uniform law; scale 0 means 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape) / weight.shape[in_axis] / weight.shape[out_axis]
    fan_avg = (weight.shape[in_axis] + weight.shape[out_axis]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    return weight.uniform_(-bound, bound)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 1)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int, init_scale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    default_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def num_groups(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (so GroupNorm always works)."""
    g = max(1, min(max_groups, channels))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels, max_groups), channels, eps=1e-6)


def ddpm_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (DDPM); fewer when 32 does not divide the channels."""
    return group_norm(channels, 32)


def ncsnpp_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(channels // 4, 32) groups (NCSN++ / DDPM++)."""
    return group_norm(channels, max(1, min(channels // 4, 32)))


NormFn = Callable[[int], nn.Module]


class ChannelDense(nn.Module):
    """Per-pixel linear map over channels ("network-in-network"); weight stored [in, out]."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_ch, out_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        default_init_(self.weight, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bchw,cd->bdhw", x, self.weight)
        return y + self.bias.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- noise embeddings
def timestep_embedding(labels: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Transformer sinusoid of Vaswani et al. 2017 as used by DDPM: [sin(t w_k), cos(t w_k)]."""
    if labels.ndim != 1:
        raise ValueError(f"noise labels must be a 1-D [batch] tensor, got shape {tuple(labels.shape)}")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=labels.device)
                      * -(math.log(max_positions) / (half - 1)))
    args = labels.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi W x), cos(2 pi W x)], W ~ N(0, scale^2) fixed (Tancik et al. 2020)."""

    def __init__(self, size: int, scale: float = 16.0) -> None:
        super().__init__()
        # a Parameter (not a buffer) so parameter counts and state dicts match score_sde_pytorch
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = x[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


# ----------------------------------------------------------------------------- blocks
def residual_sum(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """Residual sum, divided by sqrt(2) with skip_rescale (keeps the variance, Appendix H)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, norm_fn: NormFn = ddpm_norm, skip_rescale: bool = False,
                 init_scale: float = 0.0) -> None:
        super().__init__()
        self.norm = norm_fn(channels)
        self.query = ChannelDense(channels, channels)
        self.key = ChannelDense(channels, channels)
        self.value = ChannelDense(channels, channels)
        self.proj_out = ChannelDense(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (c ** -0.5)
        w = F.softmax(w.reshape(b, hgt, wid, hgt * wid), dim=-1).reshape(b, hgt, wid, hgt, wid)
        h = self.proj_out(torch.einsum("bhwij,bcij->bchw", w, v))
        return residual_sum(x, h, self.skip_rescale)


class ResnetBlock(nn.Module):
    """DDPM residual block: GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv, + skip."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 dropout: float = 0.1, skip_rescale: bool = False, init_scale: float = 0.0,
                 norm_fn: NormFn = ddpm_norm) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm1 = norm_fn(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch)
        self.temb_proj = dense(temb_dim, out_ch) if temb_dim is not None else None
        self.norm2 = norm_fn(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.skip = self._skip_layer(in_ch, out_ch)
        self.act, self.skip_rescale = act, skip_rescale

    def _skip_layer(self, in_ch: int, out_ch: int) -> Optional[nn.Module]:
        return ChannelDense(in_ch, out_ch) if in_ch != out_ch else None  # NIN, as in DDPM

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the DDPM block keeps the resolution; BigGAN's resamples here

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(self._resample(self.act(self.norm1(x))))
        x = self._resample(x)
        if temb is not None:
            h = h + self.temb_proj(self.act(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        if self.skip is not None:
            x = self.skip(x)
        return residual_sum(x, h, self.skip_rescale)


class BigGANResnetBlock(ResnetBlock):
    """BigGAN-style residual block (Brock et al. 2019) that can also resample by 2 (NCSN++)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir_kernel: Optional[Sequence[float]] = None,
                 skip_rescale: bool = True, init_scale: float = 0.0, norm_fn: NormFn = ddpm_norm) -> None:
        self.up, self.down = up, down  # plain flags, set first: the base __init__ asks _skip_layer
        super().__init__(act, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, norm_fn)
        self.fir_kernel = tuple(fir_kernel) if fir_kernel is not None else None  # None: nearest / average

    def _skip_layer(self, in_ch: int, out_ch: int) -> Optional[nn.Module]:
        return conv1x1(in_ch, out_ch) if (in_ch != out_ch or self.up or self.down) else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return fir.upsample_2d(x, self.fir_kernel) if self.fir_kernel else fir.naive_upsample_2d(x)
        if self.down:
            return fir.downsample_2d(x, self.fir_kernel) if self.fir_kernel else fir.naive_downsample_2d(x)
        return x


class Upsample(nn.Module):
    """x2 upsampling: nearest (+ 3x3 conv), or FIR (optionally fused with a 3x3 conv)."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, with_conv: bool = False,
                 fir_kernel: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.conv: Optional[nn.Module] = None
        if with_conv and fir_kernel is None:
            self.conv = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.conv = fir_conv3x3(in_ch, out_ch, up=True, fir_kernel=fir_kernel)
        if not with_conv and out_ch != in_ch:
            raise ValueError("Upsample without a convolution cannot change the channel count")
        self.fir_kernel = tuple(fir_kernel) if fir_kernel is not None else None

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``temb`` is accepted (and ignored) so every resampler has one call signature."""
        if self.fir_kernel is None:
            h = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(h) if self.conv is not None else h
        return self.conv(x) if self.conv is not None else fir.upsample_2d(x, self.fir_kernel)


class Downsample(nn.Module):
    """/2 downsampling: 'SAME'-padded strided 3x3 conv or 2x2 average; or FIR (optionally fused with a conv)."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, with_conv: bool = False,
                 fir_kernel: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.conv: Optional[nn.Module] = None
        if with_conv and fir_kernel is None:
            self.conv = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.conv = fir_conv3x3(in_ch, out_ch, down=True, fir_kernel=fir_kernel)
        if not with_conv and out_ch != in_ch:
            raise ValueError("Downsample without a convolution cannot change the channel count")
        self.fir_kernel = tuple(fir_kernel) if fir_kernel is not None else None

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``temb`` is accepted (and ignored) so every resampler has one call signature."""
        if self.fir_kernel is None:
            x = F.pad(x, (0, 1, 0, 1))  # TF 'SAME' padding for a stride-2 window
            return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2, stride=2)
        return self.conv(x) if self.conv is not None else fir.downsample_2d(x, self.fir_kernel)


def fir_conv3x3(in_ch: int, out_ch: int, up: bool = False, down: bool = False,
                fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> fir.FIRConv2d:
    """A FIR-resampling 3x3 conv with DDPM init (weight default_init, bias zero)."""
    conv = fir.FIRConv2d(in_ch, out_ch, 3, up=up, down=down, fir_kernel=fir_kernel)
    default_init_(conv.weight)
    return conv


class Combine(nn.Module):
    """Merge an input-pyramid image into the features: 1x1 conv, then sum or concatenate."""

    def __init__(self, in_ch: int, out_ch: int, method: str = "cat") -> None:
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"model.progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.conv = conv1x1(in_ch, out_ch)
        self.method = method

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        p = self.conv(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h
