"""VE SDE, continuous-time DSM, small NCSN++ (Fourier sigma embedding, FIR, scale_by_sigma) on 8x8 digits.

sigma_max follows Song & Ermon 2020 (technique 1): about the largest distance between two
training images in [0, 1]^64 (about 6 for digits; 50 for CIFAR-10).
"""
from configs.default_digits_configs import get_default_configs
from configs.default_digits_unet import ncsnpp_model


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "unipc"  # the recommended fast sampler (issue 13): 20 network calls
    sampling.steps = 20
    sampling.predictor = "reverse_diffusion"  # for --config.sampling.method=pc (with --config.sampling.steps=250)
    sampling.corrector = "langevin"

    config.data.centered = False
    ncsnpp_model(config.model)
    config.model.sigma_max = 6.0
    del config.model["beta_min"], config.model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
