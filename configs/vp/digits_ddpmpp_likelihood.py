"""Likelihood-trained digits: the embedded default (VP, continuous, small DDPM++) trained with the likelihood
weighting lambda = g^2 (Song et al. 2021b), so the loss bounds -log p; see docs/likelihood.md.

Fields the spec still has to wire (they are options of losses.get_step_fn today, not config keys yet):
    training.time_sampling = "importance"   # t with log sigma^2 uniform: lower-variance likelihood training
    eval.likelihood.eps = 1e-5              # score_sde_pytorch's protocol (get_likelihood_fn's default)
Until then this file trains with uniform t. bench/likelihood_training.py runs the importance-sampled version.
"""
from configs.vp.digits_ddpmpp_continuous import get_config as default_config


def get_config():
    config = default_config()
    config.training.likelihood_weighting = True
    return config
