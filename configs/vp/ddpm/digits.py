"""Discrete DDPM (Ho et al. 2020): 1000 linear betas 1e-4..0.02, eps-loss, ancestral sampling; DDPM U-Net on digits."""
from configs.default_digits_configs import get_default_configs
from configs.default_digits_unet import ddpm_model


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
    ddpm_model(config.model)
    return config
