"""sub-VP SDE, continuous-time DSM, small DDPM++ (NCSN++ code, DDPM++ options) on 8x8 digits."""
from configs.default_digits_configs import get_default_configs
from configs.default_digits_unet import ddpmpp_model


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "subvpsde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    config.data.centered = True
    ddpmpp_model(config.model)
    return config
