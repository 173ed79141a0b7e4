"""sub-VP SDE, continuous-time DSM, DDPM++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021, Table 3).

Identical to configs/vp/cifar10_ddpmpp_continuous.py except for the SDE.
"""
from configs.vp.cifar10_ddpmpp_continuous import get_config as vp_config


def get_config():
    config = vp_config()
    config.training.sde = "subvpsde"
    return config
