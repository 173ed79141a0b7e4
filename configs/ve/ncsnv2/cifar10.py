"""Discrete NCSNv2 (Song & Ermon 2020) on CIFAR-10: score_sde_pytorch's ve/ncsnv2/cifar10.

The network is NCSNv2's RefineNet (``model.name='ncsnv2_64'``: unconditional InstanceNorm++, ELU, output
divided by sigma_i; 29,694,083 parameters). 232 geometric levels 50 -> 0.01, EMA 0.999, Adam lr 1e-4
without warm-up or clipping; annealed Langevin sampling with 5 steps per level (see ve/ncsn/cifar10.py
for the step size conversion).
"""
from configs.ve.ncsn.cifar10 import get_config as ncsn_config


def get_config():
    config = ncsn_config()
    model = config.model
    model.name = "ncsnv2_64"
    model.scale_by_sigma = True
    config.optim.lr = 1e-4
    return config
