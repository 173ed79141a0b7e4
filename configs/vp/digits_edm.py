"""Digits with EDM's network preconditioning (Karras et al. 2022, table 1): the embedded default (VP, continuous,
small DDPM++) whose network is EDM's F inside D = c_skip x + c_out F(c_in x; ln(sigma)/4), trained with EDM's
loss weight lambda(sigma) and log-normal sigma (P_mean -1.2, P_std 1.2); see docs/models.md.

Same steps, batch and model as configs/vp/digits_ddpmpp_continuous.py (same time budget); measured against it
in bench/RESULTS.md (issue 12, "EDM preconditioning").
"""
from configs.vp.digits_ddpmpp_continuous import get_config as default_config


def get_config():
    config = default_config()
    config.model.preconditioning = "edm"
    config.model.sigma_data = 0.5           # digits in [-1, 1] (data.centered)
    config.training.weighting = "edm"       # lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
    config.training.time_sampling = "lognormal"
    config.training.lognormal_mean = -1.2
    config.training.lognormal_std = 1.2
    return config
