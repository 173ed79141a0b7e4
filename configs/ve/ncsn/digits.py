"""Discrete NCSN (Song & Ermon 2019): 10 geometric noise levels, sigma^2-weighted DSM, annealed Langevin.

The network is the small NCSN++ U-Net with positional embedding of the level index (the
NCSN RefineNet, model 'ncsn', is what ve/ncsn/cifar10 trains); sampling is Algorithm 1 of the
paper (sampling.method='ald').
"""
from configs.default_digits_configs import get_default_configs
from configs.default_digits_unet import ncsnpp_model


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = False
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "ald"
    sampling.n_steps_each = 100
    sampling.step_size = 2e-5
    sampling.noise_removal = True

    config.data.centered = False
    ncsnpp_model(config.model)
    model = config.model
    model.embedding_type = "positional"  # discrete level index labels
    model.sigma_max = 6.0
    model.sigma_min = 0.01
    model.num_scales = 10
    model.ema_rate = 0.999
    del config.model["beta_min"], config.model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
