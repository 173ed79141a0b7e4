"""NCSN RefineNet (Song & Ermon 2019) and its NCSNv2 variant (Song & Ermon 2020), score_sde_pytorch's
``ncsn`` and ``ncsnv2_64`` models.

The network is a dilated residual encoder (four stages: two plain residual blocks, a block that
halves the resolution by mean pooling, then two stages that dilate by 2 and 4 instead of
downsampling) and a RefineNet decoder of four refine blocks.  A refine block adapts each input
with residual conv units (RCU), fuses the inputs at the finer resolution (multi-resolution
fusion, bilinear, align_corners=True), applies chained residual pooling (CRP: two stages of
5x5 stride-1 pooling + 3x3 conv, each added to the running sum) and ends with RCUs (three in the
last block).  ELU throughout; every norm is InstanceNorm++ (instance norm plus a learnt
correction by the normalised channel means, eps 1e-5).

* ``ncsn``: every norm is conditional on the noise level: gamma, alpha, beta are rows of an
  embedding table indexed by the level index (the labels are ``sde.network_label`` for discrete
  VE: the index into sigmas listed large to small).  CRP averages.  The output is the score,
  not divided by sigma (score_sde_pytorch's NCSN configs set ``scale_by_sigma=False``).
* ``ncsnv2_64``: unconditional norms (none inside the refine blocks), max pooling in CRP, and
  the output divided by sigma of the level (NCSNv2's "technique 3").

Facts kept for exact equivalence with score_sde_pytorch: PyTorch's default conv initialisation
(NCSNv1/v2 use no custom init), bias-free 3x3 convs inside RCU and CRP, 'same' padding of the
dilated convs (padding = dilation), mean pooling as the mean of the four stride-2 sub-grids
after a stride-1 conv, unbiased variance across the channel means, embedding rows initialised
to N(1, 0.02) for gamma and alpha and 0 for beta, data in [0, 1] mapped by 2x - 1 unless
``data.centered``.  Parts are registered in the original's construction order (e.g. a residual
block's first norm last, a fusion block's convs before its norms), so ``state_dict()`` lists
the tensors of the original checkpoints in the same order (see ``compat.py``).  The original's
28x28 ``adjust_padding`` only reaches the mean-pool conv of an undilated downsampling block,
and the block that receives it is dilated, so it changes nothing: 28x28 inputs work as they are.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import layers, register_model
from .ncsnpp import get_sigmas
from .label import class_embedding, embed_class

NormFn = Callable[[int], nn.Module]
_EPS = 1e-5


def ncsn_conv(in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """Stride-1 'same' conv with PyTorch's default initialisation (as NCSNv1/v2)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                     bias=bias)


# ----------------------------------------------------------------------------- InstanceNorm++
def _instance_norm_plus(x: torch.Tensor, gamma: torch.Tensor, alpha: torch.Tensor,
                        beta: torch.Tensor) -> torch.Tensor:
    """gamma * (IN(x) + alpha * standardised channel means) + beta; gamma/alpha/beta shaped [B or 1, C]."""
    means = x.mean(dim=(2, 3))
    means = (means - means.mean(dim=-1, keepdim=True)) / torch.sqrt(means.var(dim=-1, keepdim=True) + _EPS)
    h = F.instance_norm(x, eps=_EPS)
    h = h + means[..., None, None] * alpha[..., None, None]
    return gamma[..., None, None] * h + beta[..., None, None]


class InstanceNormPlus(nn.Module):
    """Unconditional InstanceNorm++ (NCSNv2); ``labels`` are accepted and ignored."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.gamma = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _instance_norm_plus(x, self.gamma[None], self.alpha[None], self.beta[None])


class ConditionalInstanceNormPlus(nn.Module):
    """InstanceNorm++ whose gamma, alpha, beta are the row ``labels`` of an embedding table [levels, 3C]."""

    def __init__(self, channels: int, num_levels: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_levels, 3 * channels)
        with torch.no_grad():
            self.embed.weight[:, :2 * channels].normal_(1.0, 0.02)   # gamma, alpha
            self.embed.weight[:, 2 * channels:].zero_()              # beta

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gamma, alpha, beta = self.embed(labels).chunk(3, dim=-1)
        return _instance_norm_plus(x, gamma, alpha, beta)


# ----------------------------------------------------------------------------- encoder
class ConvMeanPool(nn.Module):
    """Stride-1 conv, then 2x2 mean pooling (the mean of the four stride-2 sub-grids)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = ncsn_conv(in_ch, out_ch, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return (h[:, :, ::2, ::2] + h[:, :, 1::2, ::2] + h[:, :, ::2, 1::2] + h[:, :, 1::2, 1::2]) / 4.0


class ResidualBlock(nn.Module):
    """norm-act-conv, norm-act-conv, plus a shortcut; ``down`` halves the resolution unless dilated."""

    def __init__(self, in_ch: int, out_ch: int, norm_fn: NormFn, act: nn.Module, down: bool = False,
                 dilation: int = 1) -> None:
        super().__init__()
        mid = in_ch if down else out_ch
        self.conv1 = ncsn_conv(in_ch, mid, dilation=dilation)
        self.norm2 = norm_fn(mid)
        if down and dilation == 1:
            self.conv2: nn.Module = ConvMeanPool(mid, out_ch, 3)
        else:
            self.conv2 = ncsn_conv(mid, out_ch, dilation=dilation)
        self.shortcut: Optional[nn.Module] = None
        if down or in_ch != out_ch:
            if dilation > 1:
                self.shortcut = ncsn_conv(in_ch, out_ch, dilation=dilation)
            else:
                self.shortcut = ConvMeanPool(in_ch, out_ch, 1) if down else ncsn_conv(in_ch, out_ch, 1)
        self.norm1 = norm_fn(in_ch)  # registered last, as in the original (state-dict order)
        self.act = act

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x, labels)))
        h = self.conv2(self.act(self.norm2(h, labels)))
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h


class ResidualStage(nn.Module):
    """Two residual blocks: the first may change width / resolution, the second keeps them."""

    def __init__(self, in_ch: int, out_ch: int, norm_fn: NormFn, act: nn.Module, down: bool,
                 dilation: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ResidualBlock(in_ch, out_ch, norm_fn, act, down=down, dilation=dilation),
                                     ResidualBlock(out_ch, out_ch, norm_fn, act, dilation=dilation)])

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, labels)
        return x


# ----------------------------------------------------------------------------- RefineNet decoder
class NormActConv(nn.Module):
    """(norm) - act - bias-free 3x3 conv: one stage of a residual conv unit."""

    def __init__(self, channels: int, norm_fn: Optional[NormFn], act: nn.Module) -> None:
        super().__init__()
        self.norm = norm_fn(channels) if norm_fn is not None else None
        self.conv = ncsn_conv(channels, channels, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x, labels)
        return self.conv(self.act(x))


class ResidualConvUnit(nn.Module):
    """Two NormActConv stages with a residual connection (RefineNet's RCU)."""

    def __init__(self, channels: int, norm_fn: Optional[NormFn], act: nn.Module, n_stages: int = 2) -> None:
        super().__init__()
        self.stages = nn.ModuleList([NormActConv(channels, norm_fn, act) for _ in range(n_stages)])

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = x
        for stage in self.stages:
            h = stage(h, labels)
        return h + x


class ResidualConvUnits(nn.Module):
    """A chain of residual conv units."""

    def __init__(self, channels: int, n_units: int, norm_fn: Optional[NormFn], act: nn.Module) -> None:
        super().__init__()
        self.units = nn.ModuleList([ResidualConvUnit(channels, norm_fn, act) for _ in range(n_units)])

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x, labels)
        return x


class MultiResolutionFusion(nn.Module):
    """Each input: (norm) - 3x3 conv to ``features`` - bilinear resize to the output size; then summed."""

    def __init__(self, in_chs: Sequence[int], features: int, norm_fn: Optional[NormFn]) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ncsn_conv(ch, features) for ch in in_chs])   # convs before norms, as the
        self.norms = nn.ModuleList([norm_fn(ch) for ch in in_chs]) if norm_fn else None  # original registers them

    def forward(self, xs: Sequence[torch.Tensor], labels: torch.Tensor, size) -> torch.Tensor:
        out = None
        for i, (x, conv) in enumerate(zip(xs, self.convs)):
            if self.norms is not None:
                x = self.norms[i](x, labels)
            h = F.interpolate(conv(x), size=size, mode="bilinear", align_corners=True)
            out = h if out is None else out + h
        return out


class ChainedResidualPooling(nn.Module):
    """act, then stages of (norm) - 5x5 stride-1 pooling - bias-free 3x3 conv, each added to the running sum."""

    def __init__(self, features: int, norm_fn: Optional[NormFn], act: nn.Module, max_pool: bool,
                 n_stages: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ncsn_conv(features, features, bias=False) for _ in range(n_stages)])
        self.norms = nn.ModuleList([norm_fn(features) for _ in range(n_stages)]) if norm_fn else None
        self.pool = (nn.MaxPool2d if max_pool else nn.AvgPool2d)(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for i, conv in enumerate(self.convs):
            if self.norms is not None:
                path = self.norms[i](path, labels)
            path = conv(self.pool(path))
            x = path + x
        return x


class RefineBlock(nn.Module):
    """Adapt each input (2 RCUs), fuse them at the finest size, chained residual pooling, output RCUs."""

    def __init__(self, in_chs: Sequence[int], features: int, norm_fn: Optional[NormFn], act: nn.Module,
                 max_pool: bool, last: bool = False) -> None:
        super().__init__()
        # registered in the original's order: adapt, output, fusion, pooling
        self.adapt = nn.ModuleList([ResidualConvUnits(ch, 2, norm_fn, act) for ch in in_chs])
        self.output = ResidualConvUnits(features, 3 if last else 1, norm_fn, act)
        self.fusion = MultiResolutionFusion(in_chs, features, norm_fn) if len(in_chs) > 1 else None
        self.pooling = ChainedResidualPooling(features, norm_fn, act, max_pool)

    def forward(self, xs: Sequence[torch.Tensor], labels: torch.Tensor, size) -> torch.Tensor:
        hs = [adapt(x, labels) for adapt, x in zip(self.adapt, xs)]
        h = self.fusion(hs, labels, size) if self.fusion is not None else hs[0]
        return self.output(self.pooling(h, labels), labels)


# ----------------------------------------------------------------------------- the network
def _fixed(model_config, name: str, only: str) -> None:
    value = model_config.get(name, only)
    if value != only:
        raise ValueError(f"model.{name}={value!r} is not supported by model.name={model_config.name!r}; "
                         f"the only choice is {only!r}")


class RefineNet(nn.Module):
    """The NCSN/NCSNv2 RefineNet for images up to 64x64 (score_sde_pytorch's 32x32/28x28 layout)."""

    def __init__(self, config, conditional: bool, num_classes: Optional[int] = None) -> None:
        super().__init__()
        m, d = config.model, config.data
        _fixed(m, "normalization", "InstanceNorm++")
        _fixed(m, "interpolation", "bilinear")
        training = config.get("training", None) or {}
        if training.get("continuous", False):
            raise ValueError(f"model.name={m.name!r} is conditioned on the discrete noise-level index: "
                             "set training.continuous=False")
        if d.image_size % 2:
            raise ValueError(f"data.image_size={d.image_size} must be even (one 2x mean-pooling stage)")
        self.conditional = conditional
        self.centered = bool(d.centered)
        # NCSN outputs the score itself unless asked; NCSNv2 always divides by sigma of the level
        self.scale_by_sigma = bool(m.get("scale_by_sigma", not conditional))
        if not conditional and not self.scale_by_sigma:
            raise ValueError(f"model.name={m.name!r} always divides its output by sigma: set model.scale_by_sigma=True")
        self.num_levels = int(m.num_scales)
        # sigmas[label], for scale_by_sigma; recomputed from the config, so not part of the state dict
        self.register_buffer("sigmas", torch.tensor(get_sigmas(config), dtype=torch.float32), persistent=False)
        self.act = act = layers.get_activation(m.nonlinearity)
        nf, channels = int(m.nf), int(d.num_channels)

        def norm_fn(ch: int) -> nn.Module:
            return ConditionalInstanceNormPlus(ch, self.num_levels) if conditional else InstanceNormPlus(ch)

        refine_norm = norm_fn if conditional else None   # NCSNv2's refine blocks have no norms
        max_pool = not conditional                       # NCSNv2 max-pools in CRP, NCSN averages

        # registered in the original's order: conv_in, norm_out, conv_out, encoder, decoder
        self.conv_in = ncsn_conv(channels, nf)
        self.norm_out = norm_fn(nf)
        self.conv_out = ncsn_conv(nf, channels)
        self.res1 = ResidualStage(nf, nf, norm_fn, act, down=False, dilation=1)
        self.res2 = ResidualStage(nf, 2 * nf, norm_fn, act, down=True, dilation=1)
        self.res3 = ResidualStage(2 * nf, 2 * nf, norm_fn, act, down=True, dilation=2)
        self.res4 = ResidualStage(2 * nf, 2 * nf, norm_fn, act, down=True, dilation=4)
        self.refine1 = RefineBlock([2 * nf], 2 * nf, refine_norm, act, max_pool)
        self.refine2 = RefineBlock([2 * nf, 2 * nf], 2 * nf, refine_norm, act, max_pool)
        self.refine3 = RefineBlock([2 * nf, 2 * nf], nf, refine_norm, act, max_pool)
        self.refine4 = RefineBlock([nf, nf], nf, refine_norm, act, max_pool, last=True)
        # RefineNet has no noise-embedding vector: the class embedding is a per-channel bias of the first features
        self.class_embed = class_embedding(num_classes, nf)
        if self.class_embed is not None:
            self.null_class = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape [batch]=[{x.shape[0]}], got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise ValueError("this network takes the integer noise-level index as its label (discrete VE), "
                             f"got {labels.dtype} labels")
        if not self.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        h = self.conv_in(x)
        cemb = embed_class(self.class_embed, y, x.shape[0])
        if cemb is not None:
            h = h + cemb[:, :, None, None].to(h.dtype)
        l1 = self.res1(h, labels)
        l2 = self.res2(l1, labels)
        l3 = self.res3(l2, labels)
        l4 = self.res4(l3, labels)
        h = self.refine1([l4], labels, l4.shape[2:])
        h = self.refine2([l3, h], labels, l3.shape[2:])
        h = self.refine3([l2, h], labels, l2.shape[2:])
        h = self.refine4([l1, h], labels, l1.shape[2:])
        h = self.conv_out(self.act(self.norm_out(h, labels)))
        if self.scale_by_sigma:
            h = h / self.sigmas[labels].to(h.dtype).reshape(-1, *([1] * (h.ndim - 1)))
        return h


@register_model("ncsn")
class NCSN(RefineNet):
    """NCSN (Song & Ermon 2019): conditional InstanceNorm++ on the level index; outputs the score."""

    def __init__(self, config, num_classes: Optional[int] = None) -> None:
        super().__init__(config, conditional=True, num_classes=num_classes)


@register_model("ncsnv2_64")
class NCSNv2(RefineNet):
    """NCSNv2 for images up to 64x64 (Song & Ermon 2020): unconditional norms, output divided by sigma."""

    def __init__(self, config, num_classes: Optional[int] = None) -> None:
        super().__init__(config, conditional=False, num_classes=num_classes)
