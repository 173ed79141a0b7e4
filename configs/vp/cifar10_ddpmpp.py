"""VP SDE, discrete-time DSM (DDPM's 1000 steps), DDPM++ on CIFAR-10 (Song et al. 2021, Table 3 "DDPM++");
ancestral sampling."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_cifar10_unets import ddpmpp


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = False
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "ancestral_sampling"
    sampling.corrector = "none"

    config.data.centered = True
    ddpmpp(config.model)
    return config
