"""The base of the digits configs: VP SDE, continuous-time DSM, a small DDPM++ (NCSN++ code, DDPM++ options), as
score_sde_pytorch trains it. The README's main command adds EDM's preconditioning to it (configs/vp/digits_edm.py).

Trains, samples and scores bits/dim in about 6 minutes on an idle 2-core CPU (1.974 bits/dim, bench/RESULTS.md).
"""
from configs.default_digits_configs import get_default_configs
from configs.default_digits_unet import ddpmpp_model


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "unipc"  # the recommended fast sampler (issue 13, docs/samplers.md): 20 network calls
    sampling.steps = 20
    sampling.predictor = "euler_maruyama"  # for --config.sampling.method=pc
    sampling.corrector = "none"

    config.data.centered = True
    ddpmpp_model(config.model)
    return config
