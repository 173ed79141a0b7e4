"""sub-VP SDE, continuous-time DSM, DDPM++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021, Table 3)."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_cifar10_unets import ddpmpp


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "subvpsde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    config.data.centered = True
    ddpmpp(config.model)
    return config
