"""The small U-Nets used by the digits configs (8x8x1 images), sized for a 2-core CPU.

`ddpmpp_model` is the NCSN++ architecture with DDPM++ options (positional embedding, no FIR,
BigGAN residual blocks), `ncsnpp_model` with NCSN++ options (Fourier embedding of sigma, FIR
resampling, residual input pyramid), `ddpm_model` the DDPM U-Net of Ho et al.; all with
nf=32, two resolutions (8x8, 4x4), one residual block each and self-attention at 4x4.
"""
import ml_collections


def _common(model: ml_collections.ConfigDict) -> None:
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.resamp_with_conv = True
    model.conditional = True
    model.nonlinearity = "swish"
    model.normalization = "GroupNorm"
    model.dropout = 0.1


def ddpmpp_model(model: ml_collections.ConfigDict) -> None:
    _common(model)
    model.name = "ncsnpp"
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    model.fir = False
    model.fir_kernel = (1, 3, 3, 1)
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


def ncsnpp_model(model: ml_collections.ConfigDict) -> None:
    ddpmpp_model(model)
    model.scale_by_sigma = True
    model.fir = True
    model.progressive_input = "residual"
    model.embedding_type = "fourier"


def ddpm_model(model: ml_collections.ConfigDict) -> None:
    _common(model)
    model.name = "ddpm"
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    del model["embedding_type"]  # the DDPM U-Net always uses the sinusoidal embedding
