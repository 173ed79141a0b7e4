"""sub-VP SDE, continuous-time DSM, DDPM++ cont. (deep, sub-VP) on CIFAR-10: 8 residual blocks per resolution,
950k iterations. The checkpoint behind the paper's 2.99 bits/dim (Song et al. 2021, Table 2)."""
from configs.subvp.cifar10_ddpmpp_continuous import get_config as _base_config


def get_config():
    config = _base_config()
    config.training.n_iters = 950001
    config.model.num_res_blocks = 8
    return config
