"""sub-VP SDE, continuous-time DSM, small DDPM++ (NCSN++ code, DDPM++ options) on 8x8 digits.

Identical to the embedded default configs/vp/digits_ddpmpp_continuous.py except for the SDE.
"""
from configs.vp.digits_ddpmpp_continuous import get_config as vp_config


def get_config():
    config = vp_config()
    config.training.sde = "subvpsde"
    return config
