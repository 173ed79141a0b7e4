"""The deep variant of vp/cifar10_ddpmpp_continuous.py (Song et al. 2021, Table 3 "deep"): 8 residual blocks per
resolution, 950k iterations."""
from configs.vp.cifar10_ddpmpp_continuous import get_config as _base_config


def get_config():
    config = _base_config()
    config.training.n_iters = 950001
    config.model.num_res_blocks = 8
    return config
