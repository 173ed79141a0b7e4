"""VE SDE, continuous-time DSM, MLP score network on the 2-D ring of 8 Gaussians (exact density).

sigma_max = 10 exceeds the ring's diameter (8), as Song & Ermon 2020 recommend; the MLP embeds
sigma * label_scale (sigma in [0.01, 10] -> [0.5, 500]) with the sinusoidal embedding.
"""
from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = True
    config.sampling.method = "unipc"  # the recommended fast sampler (issue 13)
    config.sampling.steps = 20
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.model.sigma_max = 10.0
    config.model.sigma_min = 0.01
    config.model.label_scale = 50.0
    config.model.prediction = "score"
    del config.model["beta_min"], config.model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
