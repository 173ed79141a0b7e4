"""sub-VP SDE, continuous-time DSM, the DDPM U-Net on CIFAR-10 (Song et al. 2021, Table 2 "DDPM cont. (sub-VP)").

Identical to configs/vp/ddpm/cifar10_continuous.py except for the SDE.
"""
from configs.vp.ddpm.cifar10_continuous import get_config as vp_config


def get_config():
    config = vp_config()
    config.training.sde = "subvpsde"
    return config
