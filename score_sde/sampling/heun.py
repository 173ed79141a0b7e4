"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 1, with Algorithm 2's churn).

Every SDE here is a scaled VE: x_hat = x / m(t) is data plus noise of std sigma(t) = s/m, and follows
    dx_hat/dsigma = (x_hat - D(x_hat; sigma)) / sigma          (EDM eq. 3 with s = 1, sigma(t) = t)
with D the denoiser (parameterization.denoiser). The solver steps through the schedule (EDM eq. 5 by default)
from sigma_max = min(sigma(T), 80) down to the endpoint (max(0.002, sigma(0)), or sigma(eps)), then takes a
last Euler step to sigma = 0, so the result is the denoised sample and NFE = 2 * steps - 1.
Starting below sigma(T) reuses the prior draw's noise, x_hat = sigma_max * x_T / prior_std (EDM line 2).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

from . import sigma_space
from .common import EDM_SIGMA_MAX, check_positive_int
from .registry import register_sampler


def _check_churn(churn: float, s_tmin: float, s_tmax: float, s_noise: float, rho: float) -> None:
    if not rho > 0:
        raise ValueError(f"rho must be positive (EDM uses 7), got {rho}")
    if churn < 0 or s_noise < 0:
        raise ValueError(f"churn and s_noise must be non-negative, got churn={churn}, s_noise={s_noise}")
    if not 0 <= s_tmin <= s_tmax:
        raise ValueError(f"need 0 <= s_tmin <= s_tmax, got s_tmin={s_tmin}, s_tmax={s_tmax}")


def solve_heun(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], churn: float = 0.0,
               s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> torch.Tensor:
    n = len(sigmas) - 1
    gamma_max = min(churn / n, math.sqrt(2) - 1)
    for i in run.steps(n):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = min(sigma * (1 + gamma), sigmas[0])       # Alg. 2, line 5 (capped at the start level)
        if sigma_hat > sigma:                                  # Alg. 2, line 6
            x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * run.noise(x)
        x0 = run.denoise(x, sigma_hat)
        d = (x - x0) / sigma_hat                               # Alg. 1, line 4
        x_next = x + (nxt - sigma_hat) * d                     # Euler step, line 5
        if nxt > 0:                                            # 2nd-order correction, lines 7-8
            x0 = run.denoise(x_next, nxt)
            x_next = x + (nxt - sigma_hat) * 0.5 * (d + (x_next - x0) / nxt)
        x = x_next
        run.report(i, nxt, x, x0)
    return x


@register_sampler("heun", "sample_heun")
def heun_sampler(sde, shape: Sequence[int], *, steps: int = 18, rho: float = 7.0, churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 schedule: str = "edm", sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                 threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                 progress: bool = False) -> Callable:
    """Deterministic Heun sampler of EDM (churn=0), or its stochastic variant (churn > 0, Algorithm 2).

    steps: number of levels between min(sigma(T), sigma_max) and the endpoint; NFE = 2 * steps - 1.
    rho: eq. 5's exponent (EDM: 7); rho=math.inf spaces the levels geometrically (uniform in log sigma).
    schedule: "edm" (eq. 5, default), "logSNR", "time_uniform", "time_quadratic" or a saved .json schedule.
    sigma_max: highest level (EDM: 80); None starts at sigma(T) (VP: 152). x_T stays a prior draw either way.
    eps: None ends at max(0.002, sigma(0)) (EDM's sigma_min for VP/sub-VP, VE's own floor); a time ends at
    sigma(eps). churn, s_tmin, s_tmax, s_noise: EDM's S_churn, S_tmin, S_tmax, S_noise. The raised level
    sigma_hat = sigma (1 + gamma) is capped at the start level, so the score is never asked beyond T.
    threshold: dynamic-thresholding quantile (None: off).
    """
    check_positive_int("steps", steps)
    _check_churn(churn, s_tmin, s_tmax, s_noise, rho)
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("heun", solve_heun, sde, shape, sigmas, threshold=threshold, device=device,
                             dtype=dtype, progress=progress, churn=churn, s_tmin=s_tmin, s_tmax=s_tmax,
                             s_noise=s_noise)
