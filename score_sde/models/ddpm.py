"""DDPM U-Net of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", Appendix B).

Built from the shared U-Net skeleton with DDPM's fixed choices: DDPM residual blocks,
sinusoidal (positional) noise embedding, 32-group GroupNorm, no skip rescaling, no FIR,
no progressive growing, zero-initialised output convolutions.  Parameter-compatible with
score_sde_pytorch's ``ddpm`` model (vp/ddpm/cifar10: 35,218,947 parameters).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from . import layers, register_model
from .ncsnpp import UNet, UNetOptions, check_fixed_choices, get_sigmas


def ddpm_options(config) -> UNetOptions:
    """The DDPM options read from ``config.model`` / ``config.data`` (see README.md, section Models)."""
    m, d = config.model, config.data
    check_fixed_choices(m)
    return UNetOptions(
        image_size=d.image_size, channels=d.num_channels, nf=m.nf, ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv, conditional=m.conditional, fir_kernel=None, skip_rescale=False,
        resblock_type="ddpm", progressive="none", progressive_input="none", embedding_type="positional",
        init_scale=0.0, scale_by_sigma=m.scale_by_sigma, centered=d.centered, nonlinearity=m.nonlinearity,
        sigmas=get_sigmas(config), norm_fn=layers.ddpm_norm, always_embed=True,
        learned_variance=bool(m.get("learned_variance", False)))


@register_model("ddpm")
class DDPM(UNet):
    """The DDPM U-Net; ``labels`` are time steps (float or long), embedded by the transformer sinusoid."""

    def __init__(self, config, num_classes: Optional[int] = None) -> None:
        super().__init__(replace(ddpm_options(config), num_classes=num_classes))
