"""The small U-Nets used by the digits configs (8x8x1 images), sized for a 2-core CPU.

Each is the CIFAR-10 paper block of the same name (configs/default_cifar10_unets.py) shrunk to
nf=32, two resolutions (8x8, 4x4), one residual block each and self-attention at 4x4:
`ddpmpp_model` (DDPM++ options), `ncsnpp_model` (NCSN++ options), `ddpm_model` (Ho et al.'s U-Net).
"""
import ml_collections

from configs.default_cifar10_unets import ddpm, ddpmpp, ncsnpp


def _small(model: ml_collections.ConfigDict) -> None:
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.dropout = 0.1
    model.ema_rate = 0.999


def ddpmpp_model(model: ml_collections.ConfigDict) -> None:
    ddpmpp(model)
    _small(model)


def ncsnpp_model(model: ml_collections.ConfigDict) -> None:
    ncsnpp(model)
    _small(model)


def ddpm_model(model: ml_collections.ConfigDict) -> None:
    ddpm(model)
    _small(model)
    del model["embedding_type"]  # the DDPM U-Net always uses the sinusoidal embedding
