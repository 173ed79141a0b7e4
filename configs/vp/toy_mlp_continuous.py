"""VP SDE, continuous-time DSM, MLP score network on the 2-D ring of 8 Gaussians (exact density)."""
from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vpsde"
    config.training.continuous = True
    config.sampling.method = "unipc"  # the recommended fast sampler (issue 13)
    config.sampling.steps = 20
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.model.label_scale = 1.0  # labels are t (N - 1) in [0, 999]
    del config.model["sigma_min"], config.model["sigma_max"]  # VE-only parameters, unread by the MLP on a VP run
    return config
