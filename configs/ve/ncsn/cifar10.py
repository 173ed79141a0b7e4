"""Discrete NCSN (SMLD) on CIFAR-10: geometric noise levels, sigma^2-weighted DSM, annealed Langevin.

Noise schedule and sampler follow NCSNv2 (Song & Ermon 2020, CIFAR-10: sigma_max 50, 232 levels,
5 Langevin steps per level, step size 6.2e-6, final denoising). score_sde_pytorch trains this with
the NCSNv2 RefineNet ("ncsnv2_*" models); THIS PROJECT HAS NO NCSNv2 MODEL, so the network is
NCSN++ with positional (level-index) embedding - a substitute, not the paper's network.
"""
from configs.default_cifar10_configs import get_default_configs
from configs.default_cifar10_unets import ncsnpp


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = False

    sampling = config.sampling
    sampling.method = "ald"
    sampling.n_steps_each = 5
    sampling.step_size = 6.2e-6
    sampling.noise_removal = True

    config.data.centered = False
    ncsnpp(config.model)
    model = config.model
    model.embedding_type = "positional"  # discrete noise-level index labels
    model.sigma_max = 50.0
    model.sigma_min = 0.01
    model.num_scales = 232
    model.ema_rate = 0.999
    config.optim.lr = 1e-4
    del config.model["beta_min"], config.model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
