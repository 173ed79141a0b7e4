"""Euler and Euler-ancestral in sigma space (Karras et al. 2022; k-diffusion's sample_euler and
sample_euler_ancestral).

The probability-flow ODE of the scaled VE process is dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 3).
    euler            x' = x + (sigma' - sigma) d,  d = (x - D) / sigma                      (EDM Alg. 1, line 5)
    euler_ancestral  the DDPM/DDIM step with noise eta: it goes down to sigma_down by Euler and adds fresh
                     noise sigma_up, with sigma_up^2 = eta^2 sigma'^2 (sigma^2 - sigma'^2) / sigma^2 (DDIM eq. 16
                     in sigma space) and sigma_down^2 = sigma'^2 - sigma_up^2, so the marginal stays N(., sigma'^2).
The step to sigma' = 0 returns D: NFE = steps.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from . import sigma_space
from .common import EDM_SIGMA_MAX
from .registry import register_sampler


def ancestral_split(sigma: float, nxt: float, eta: float) -> Tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to nxt with stochasticity eta (DDIM eq. 16)."""
    up = min(nxt, eta * math.sqrt(max(nxt ** 2 * (sigma ** 2 - nxt ** 2), 0.0)) / sigma)
    return math.sqrt(nxt ** 2 - up ** 2), up


def solve_euler(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], eta: float = 0.0,
                s_noise: float = 1.0) -> torch.Tensor:
    for i in run.steps(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        x0 = run.denoise(x, sigma)
        down, up = ancestral_split(sigma, nxt, eta)
        x = x + (down - sigma) * (x - x0) / sigma          # Euler step of EDM eq. 3 (to sigma_down)
        if up > 0:
            x = x + s_noise * up * run.noise(x)            # back to the marginal's noise level sigma'
        run.report(i, nxt, x, x0)
    return x


def _check_eta(eta: float, s_noise: float) -> None:
    if not 0 <= eta <= 1 or not s_noise >= 0:
        raise ValueError(f"need 0 <= eta <= 1 and s_noise >= 0, got eta={eta}, s_noise={s_noise}")


@register_sampler("euler", "sample_euler")
def euler_sampler(sde, shape: Sequence[int], *, steps: int = 20, schedule: str = "edm", rho: float = 7.0,
                  sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                  threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                  progress: bool = False) -> Callable:
    """First-order Euler on the probability-flow ODE in sigma; NFE = steps.

    steps: noise levels from min(sigma(T), sigma_max) to the endpoint, each with one network call; the last
    call returns the denoised estimate. schedule: "edm" (rho), "logSNR", "time_uniform", "time_quadratic" or a
    saved .json schedule. eps: None stops at max(0.002, sigma(0)); a time stops at sigma(eps).
    threshold: dynamic-thresholding quantile (None: off).
    """
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("euler", solve_euler, sde, shape, sigmas, threshold=threshold, device=device,
                             dtype=dtype, progress=progress)


@register_sampler("euler_ancestral", "sample_euler_ancestral")
def euler_ancestral_sampler(sde, shape: Sequence[int], *, steps: int = 20, eta: float = 1.0, s_noise: float = 1.0,
                            schedule: str = "edm", rho: float = 7.0, sigma_max: Optional[float] = EDM_SIGMA_MAX,
                            eps: Optional[float] = None, threshold: Optional[float] = None, device=None,
                            dtype: torch.dtype = torch.float32, progress: bool = False) -> Callable:
    """Euler-ancestral: each step adds fresh noise (eta = 1: DDPM's posterior variance; 0: plain euler).

    s_noise scales the added noise (EDM's S_noise). Other options as for `euler`; NFE = steps.
    """
    _check_eta(eta, s_noise)
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("euler_ancestral", solve_euler, sde, shape, sigmas, threshold=threshold,
                             device=device, dtype=dtype, progress=progress, eta=eta, s_noise=s_noise)
