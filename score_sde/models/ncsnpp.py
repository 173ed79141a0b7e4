"""NCSN++ / DDPM++ U-Net (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Appendix H).

The U-Net is written once (``UNet``) with named parts: a noise embedding, an input conv,
down levels (residual stages with optional attention, a resampler, an optional input
pyramid), a middle block, up levels (residual blocks, attention, an optional output
pyramid, a resampler) and an output head.  ``ddpm.py`` builds the DDPM network of Ho et al.
from the same skeleton.  Parts are registered in score_sde_pytorch's construction order, so
``state_dict()`` lists entries in the original checkpoint order (see ``compat.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import layers, register_model
from .label import class_embedding, embed_class
from .layers import (AttentionBlock, BigGANResnetBlock, Combine, Downsample, NormFn, ResnetBlock, Upsample,
                     conv3x3, dense)

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


@dataclass
class UNetOptions:
    image_size: int
    channels: int
    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir_kernel: Optional[Sequence[float]] = None   # None: no FIR (nearest / average / strided conv)
    skip_rescale: bool = False
    resblock_type: str = "ddpm"                     # ddpm | biggan
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    embedding_type: str = "positional"              # positional | fourier
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = False
    centered: bool = False
    nonlinearity: str = "swish"
    sigmas: np.ndarray = field(default_factory=lambda: np.ones(1))
    norm_fn: NormFn = layers.ncsnpp_norm
    always_embed: bool = False                      # DDPM: the embedding MLP exists even if unconditional
    num_classes: Optional[int] = None               # class-conditional: a label embedding (models/label.py)
    learned_variance: bool = False                  # improved DDPM: 2x output channels (prediction, variance)


def get_sigmas(config) -> np.ndarray:
    """Geometric noise levels sigma_max .. sigma_min (descending, num_scales of them), float64."""
    m = config.model
    return np.exp(np.linspace(np.log(m.sigma_max), np.log(m.sigma_min), m.num_scales))


def _check(name: str, value: str, allowed: Sequence[str]) -> str:
    value = value.lower()
    if value not in allowed:
        raise ValueError(f"model.{name}={value!r} is not one of {tuple(allowed)}")
    return value


class NoiseEmbedding(nn.Module):
    """Noise label -> embedding: sinusoid of the label, or Fourier features of log(sigma); then a 2-layer MLP."""

    def __init__(self, kind: str, nf: int, fourier_scale: float, with_mlp: bool, act: nn.Module) -> None:
        super().__init__()
        self.kind, self.nf, self.act = kind, nf, act
        self.fourier = layers.GaussianFourierProjection(nf, fourier_scale) if kind == "fourier" else None
        in_dim = 2 * nf if kind == "fourier" else nf
        self.dense1 = dense(in_dim, 4 * nf) if with_mlp else None
        self.dense2 = dense(4 * nf, 4 * nf) if with_mlp else None

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.fourier is not None:
            emb = self.fourier(torch.log(labels))          # continuous VE: labels are sigmas
        else:
            emb = layers.timestep_embedding(labels, self.nf)
        return self.dense2(self.act(self.dense1(emb)))


class Stage(nn.Module):
    """One residual block, optionally followed by self-attention."""

    def __init__(self, res: nn.Module, attn: Optional[nn.Module]) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, h: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.res(h, temb)
        return self.attn(h) if self.attn is not None else h


class DownLevel(nn.Module):
    """Residual stages at one resolution, then (except at the lowest) a /2 resampler and the input pyramid."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.downsample: Optional[nn.Module] = None
        self.pyramid_down: Optional[nn.Module] = None
        self.combine: Optional[nn.Module] = None


class MiddleBlock(nn.Module):
    """Residual block, attention, residual block at the lowest resolution."""

    def __init__(self, res1: nn.Module, attn: nn.Module, res2: nn.Module) -> None:
        super().__init__()
        self.res1, self.attn, self.res2 = res1, attn, res2

    def forward(self, h: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
        return self.res2(self.attn(self.res1(h, temb)), temb)


class UpLevel(nn.Module):
    """Residual blocks fed by skip connections, attention, the output pyramid, then a x2 resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList()
        self.attn: Optional[nn.Module] = None
        self.pyramid_upsample: Optional[nn.Module] = None
        self.pyramid_norm: Optional[nn.Module] = None
        self.pyramid_conv: Optional[nn.Module] = None
        self.upsample: Optional[nn.Module] = None


class UNet(nn.Module):
    """The NCSN++/DDPM++/DDPM U-Net; see ``UNetOptions`` for the knobs."""

    def __init__(self, o: UNetOptions) -> None:
        super().__init__()
        self.register_buffer("sigmas", torch.tensor(o.sigmas, dtype=torch.float32))
        self.opts = o
        self.progressive = _check("progressive", o.progressive, PROGRESSIVE)
        self.progressive_input = _check("progressive_input", o.progressive_input, PROGRESSIVE_INPUT)
        self.resblock_type = _check("resblock_type", o.resblock_type, ("ddpm", "biggan"))
        embedding = _check("embedding_type", o.embedding_type, ("fourier", "positional"))
        combine = _check("progressive_combine", o.progressive_combine, ("sum", "cat"))
        n_levels = len(o.ch_mult)
        if o.image_size % 2 ** (n_levels - 1):
            raise ValueError(f"data.image_size={o.image_size} must be divisible by 2**(len(ch_mult)-1)="
                             f"{2 ** (n_levels - 1)}")
        self.act = act = layers.get_activation(o.nonlinearity)
        nf, temb_dim = o.nf, 4 * o.nf
        resolutions = [o.image_size // 2 ** i for i in range(n_levels)]

        def res_block(in_ch: int, out_ch: Optional[int] = None, up: bool = False, down: bool = False) -> nn.Module:
            if self.resblock_type == "ddpm":
                return ResnetBlock(act, in_ch, out_ch, temb_dim, o.dropout, o.skip_rescale, o.init_scale, o.norm_fn)
            return BigGANResnetBlock(act, in_ch, out_ch, temb_dim, up, down, o.dropout, o.fir_kernel,
                                     o.skip_rescale, o.init_scale, o.norm_fn)

        def attention(ch: int) -> nn.Module:
            return AttentionBlock(ch, o.norm_fn, o.skip_rescale, o.init_scale)

        self.noise_embed = NoiseEmbedding(embedding, nf, o.fourier_scale, o.conditional or o.always_embed, act)
        self.conv_in = conv3x3(o.channels, nf)

        # ---- downsampling path
        skip_ch, in_ch, pyramid_ch = [nf], nf, o.channels
        self.down = nn.ModuleList()
        for i_level in range(n_levels):
            level = DownLevel()
            for _ in range(o.num_res_blocks):
                out_ch = nf * o.ch_mult[i_level]
                res = res_block(in_ch, out_ch)
                in_ch = out_ch
                level.stages.append(Stage(res, attention(in_ch) if resolutions[i_level] in o.attn_resolutions else None))
                skip_ch.append(in_ch)
            if i_level != n_levels - 1:
                if self.resblock_type == "ddpm":
                    level.downsample = Downsample(in_ch, with_conv=o.resamp_with_conv, fir_kernel=o.fir_kernel)
                else:
                    level.downsample = res_block(in_ch, down=True)
                if self.progressive_input == "input_skip":
                    level.pyramid_down = Downsample(pyramid_ch, with_conv=False, fir_kernel=o.fir_kernel)
                    level.combine = Combine(pyramid_ch, in_ch, combine)
                    in_ch = 2 * in_ch if combine == "cat" else in_ch
                elif self.progressive_input == "residual":
                    level.pyramid_down = Downsample(pyramid_ch, in_ch, with_conv=True, fir_kernel=o.fir_kernel)
                    pyramid_ch = in_ch
                skip_ch.append(in_ch)
            self.down.append(level)

        in_ch = skip_ch[-1]
        self.mid = MiddleBlock(res_block(in_ch), attention(in_ch), res_block(in_ch))

        # ---- upsampling path
        self.up = nn.ModuleList()
        pyramid_ch = 0
        for i_level in reversed(range(n_levels)):
            level = UpLevel()
            for _ in range(o.num_res_blocks + 1):
                out_ch = nf * o.ch_mult[i_level]
                level.res_blocks.append(res_block(in_ch + skip_ch.pop(), out_ch))
                in_ch = out_ch
            if resolutions[i_level] in o.attn_resolutions:
                level.attn = attention(in_ch)
            top = i_level == n_levels - 1
            if self.progressive == "output_skip":
                if not top:
                    level.pyramid_upsample = Upsample(pyramid_ch, with_conv=False, fir_kernel=o.fir_kernel)
                level.pyramid_norm = o.norm_fn(in_ch)
                level.pyramid_conv = conv3x3(in_ch, o.channels, init_scale=o.init_scale)
                pyramid_ch = o.channels
            elif self.progressive == "residual":
                if top:
                    level.pyramid_norm = o.norm_fn(in_ch)
                    level.pyramid_conv = conv3x3(in_ch, in_ch)
                else:
                    level.pyramid_upsample = Upsample(pyramid_ch, in_ch, with_conv=True, fir_kernel=o.fir_kernel)
                pyramid_ch = in_ch
            if i_level != 0:
                if self.resblock_type == "ddpm":
                    level.upsample = Upsample(in_ch, with_conv=o.resamp_with_conv, fir_kernel=o.fir_kernel)
                else:
                    level.upsample = res_block(in_ch, up=True)
            self.up.append(level)
        assert not skip_ch

        self.norm_out = self.conv_out = None
        if self.progressive != "output_skip":
            self.norm_out = o.norm_fn(in_ch)
            out_channels = 2 * o.channels if o.learned_variance else o.channels  # see likelihood.split_learned_variance
            self.conv_out = conv3x3(in_ch, out_channels, init_scale=o.init_scale)
        elif o.learned_variance:
            raise ValueError("learned_variance needs a plain output head; set progressive to 'none' or 'input_skip'")
        if o.num_classes:  # registered last: the unconditional state-dict order is unchanged
            if not o.conditional:
                raise ValueError("a class-conditional U-Net needs the noise embedding: set model.conditional=True")
            self.class_embed = class_embedding(o.num_classes, temb_dim)
            self.null_class = o.num_classes

    # ------------------------------------------------------------------ forward
    @property
    def log_noise_labels(self) -> bool:
        """True when the noise embedding takes log(label) (Fourier features): labels must be positive."""
        return self.noise_embed.fourier is not None

    def _sigma_of(self, labels: torch.Tensor) -> torch.Tensor:
        """Noise level of each label: the label itself (Fourier/continuous VE) or sigmas[label]."""
        if self.noise_embed.fourier is not None:
            return labels
        return self.sigmas[labels.long()]

    def forward(self, x: torch.Tensor, labels: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        o = self.opts
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape [batch]=[{x.shape[0]}], got {tuple(labels.shape)}")
        temb = self.noise_embed(labels) if o.conditional else None
        cemb = embed_class(getattr(self, "class_embed", None), y, x.shape[0])
        if cemb is not None:
            temb = temb + cemb  # class embedding added to the noise embedding
        if not o.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        pyramid = x if self.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for level in self.down:
            for stage in level.stages:
                hs.append(stage(hs[-1], temb))
            if level.downsample is None:
                continue
            h = level.downsample(hs[-1], temb)
            if self.progressive_input == "input_skip":
                pyramid = level.pyramid_down(pyramid)
                h = level.combine(pyramid, h)
            elif self.progressive_input == "residual":
                pyramid = layers.residual_sum(level.pyramid_down(pyramid), h, o.skip_rescale)
                h = pyramid
            hs.append(h)

        h = self.mid(hs[-1], temb)
        pyramid = None
        for level in self.up:
            for block in level.res_blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if level.attn is not None:
                h = level.attn(h)
            h, pyramid = self._output_pyramid(level, h, pyramid)
            if level.upsample is not None:
                h = level.upsample(h, temb)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.conv_out(self.act(self.norm_out(h)))
        if o.scale_by_sigma:
            h = h / self._sigma_of(labels).reshape(-1, *([1] * (h.ndim - 1)))
        return h

    def _output_pyramid(self, level: UpLevel, h: torch.Tensor, pyramid: Optional[torch.Tensor]):
        """Progressive growing of the output (Karras et al. 2018 / StyleGAN2 'skip' and 'residual')."""
        if self.progressive == "output_skip":
            out = level.pyramid_conv(self.act(level.pyramid_norm(h)))
            pyramid = out if pyramid is None else level.pyramid_upsample(pyramid) + out
        elif self.progressive == "residual":
            if level.pyramid_upsample is None:  # the lowest resolution starts the pyramid
                pyramid = level.pyramid_conv(self.act(level.pyramid_norm(h)))
            else:
                pyramid = layers.residual_sum(level.pyramid_upsample(pyramid), h, self.opts.skip_rescale)
                h = pyramid
        return h, pyramid


def check_fixed_choices(model_config) -> None:
    """Fields of the published configs that name the only choice implemented here."""
    fixed = {"attention_type": "ddpm", "normalization": "groupnorm", "conv_size": 3}
    for name, only in fixed.items():
        value = model_config.get(name, only)
        if (value.lower() if isinstance(value, str) else value) != only:
            raise ValueError(f"model.{name}={value!r} is not supported; the only choice is {only!r}")


def options_from_config(config) -> UNetOptions:
    """The NCSN++ options read from ``config.model`` / ``config.data`` (see README.md, section Models)."""
    m, d = config.model, config.data
    check_fixed_choices(m)
    embedding = m.embedding_type.lower()
    training = config.get("training", None) or {}
    if embedding == "fourier" and not training.get("continuous", True):
        raise ValueError("model.embedding_type='fourier' needs continuous noise labels: set training.continuous=True "
                         "or use embedding_type='positional'")
    return UNetOptions(
        image_size=d.image_size, channels=d.num_channels, nf=m.nf, ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv, conditional=m.conditional,
        fir_kernel=tuple(m.fir_kernel) if m.fir else None, skip_rescale=m.skip_rescale,
        resblock_type=m.resblock_type, progressive=m.progressive, progressive_input=m.progressive_input,
        progressive_combine=m.progressive_combine, embedding_type=embedding,
        fourier_scale=m.get("fourier_scale", 16.0),  # used only by Fourier features; ve/cifar10_ncsnpp sets none
        init_scale=m.init_scale, scale_by_sigma=m.scale_by_sigma, centered=d.centered,
        nonlinearity=m.nonlinearity, sigmas=get_sigmas(config), norm_fn=layers.ncsnpp_norm,
        learned_variance=bool(m.get("learned_variance", False)))


@register_model("ncsnpp")
class NCSNpp(UNet):
    """NCSN++ (VE configs) and DDPM++ (VP/subVP configs) of Song et al. 2021."""

    def __init__(self, config, num_classes: Optional[int] = None) -> None:
        super().__init__(replace(options_from_config(config), num_classes=num_classes))


@register_model("ddpmpp")
class DDPMpp(NCSNpp):
    """Alias of ``ncsnpp``: the DDPM++ configs are NCSN++ with DDPM-like options."""
