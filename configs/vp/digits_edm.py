"""THE README'S MAIN COMMAND: digits with EDM's network preconditioning (Karras et al. 2022, table 1), trained on
the grey levels themselves and scored with the truncated-normal dequantizer (Zheng et al. 2023).

The network is configs/vp/digits_ddpmpp_continuous.py's (VP, continuous, small DDPM++) as EDM's F inside
D = c_skip x + c_out F(c_in x; ln(sigma)/4), trained with EDM's loss weight lambda(sigma) and log-normal sigma
(P_mean -1.2, P_std 1.2), same steps and batch (same time budget); see docs/models.md.

Bits/dim (issue 12, bench/RESULTS.md "Truncated-normal dequantization"): the data are not dequantized in
training, so at a small noise level the model is a bump around each grey level, and the ODE is started there
with the forward noise cut to each level's bin (docs/likelihood.md). Its sigma, 0.05 in [-1, 1] (a bin is
2/17 wide), was chosen on 100 TRAINING digits with bench/dequantization.py; dropout 0 likewise.
"""
from configs.vp.digits_ddpmpp_continuous import get_config as default_config


def get_config():
    config = default_config()
    config.model.preconditioning = "edm"
    config.model.sigma_data = 0.5           # digits in [-1, 1] (data.centered)
    config.model.dropout = 0.0
    config.training.weighting = "edm"       # lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
    config.training.time_sampling = "lognormal"
    config.training.lognormal_mean = -1.2
    config.training.lognormal_std = 1.2
    config.data.uniform_dequantization = False      # train on the 17 grey levels' bin centres
    config.eval.dequantization = "truncated_normal"
    config.eval.dequantization_sigma = 0.05
    return config
