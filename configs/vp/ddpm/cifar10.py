"""Discrete DDPM on CIFAR-10 (Ho et al. 2020): 1000 linear betas 1e-4..0.02, eps-loss, ancestral sampling."""
from configs.default_cifar10_configs import get_default_configs
from configs.default_cifar10_unets import ddpm


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = False
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "ddpm"
    sampling.variance = "beta"

    config.data.centered = True
    ddpm(config.model)
    # score_sde_pytorch's published model_config also lists embedding_type="fourier", a default the
    # DDPM U-Net never reads (it always embeds with sinusoids): left out here, as unread keys mislead
    del config.model["embedding_type"]
    return config
