"""VE SDE, discrete-time DSM (SMLD, 1000 noise levels), NCSN++ on CIFAR-10 (Song et al. 2021, Table 3 "NCSN++").

The network conditions on the level index through a sinusoidal embedding (no Fourier features);
PC sampling with reverse diffusion + Langevin, snr 0.16.
"""
from configs.default_cifar10_configs import get_default_configs
from configs.default_cifar10_unets import ncsnpp


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = False

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"

    config.data.centered = False
    ncsnpp(config.model)
    config.model.embedding_type = "positional"
    del config.model["fourier_scale"]  # read only with Fourier features; score_sde_pytorch's config omits it
    del config.model["beta_min"], config.model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
