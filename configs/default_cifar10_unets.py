"""Model blocks of the CIFAR-10 / CelebA-HQ paper configs (Song et al. 2021, Table/Appendix H).

Field values equal score_sde_pytorch's, so the published checkpoints load (score_sde.models.compat)
and parameter counts match (/work/shared/compat/*.json "model_config").
"""
import ml_collections


def _paper_unet(model: ml_collections.ConfigDict) -> None:
    """What the DDPM U-Net and DDPM++ share on CIFAR-10: 128 channels, 4 resolutions, attention at 16."""
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True


def ddpmpp(model: ml_collections.ConfigDict) -> None:
    """DDPM++ cont.: NCSN++ code with positional embedding, no FIR, no progressive growing, 4 blocks."""
    _paper_unet(model)
    model.name = "ncsnpp"
    model.num_res_blocks = 4
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.embedding_type = "positional"
    model.fourier_scale = 16
    model.conv_size = 3


def ncsnpp(model: ml_collections.ConfigDict) -> None:
    """NCSN++ cont.: Fourier embedding of sigma, FIR resampling, residual input pyramid, output / sigma."""
    ddpmpp(model)
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.fir = True
    model.progressive_input = "residual"
    model.embedding_type = "fourier"


def ddpm(model: ml_collections.ConfigDict) -> None:
    """The DDPM U-Net of Ho et al. 2020 (35.7M parameters on CIFAR-10)."""
    _paper_unet(model)
    model.name = "ddpm"
    model.num_res_blocks = 2
