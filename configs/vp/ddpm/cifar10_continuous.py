"""VP SDE, continuous-time DSM, the DDPM U-Net on CIFAR-10 (Song et al. 2021, Table 2 "DDPM cont. (VP)").

The network sees t * 999 as its time step; probability-flow ODE for likelihoods (3.21 bits/dim).
"""
from configs.default_cifar10_configs import get_default_configs
from configs.default_cifar10_unets import ddpm


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    config.data.centered = True
    ddpm(config.model)
    del config.model["embedding_type"]  # listed by score_sde_pytorch, never read by the DDPM U-Net
    return config
