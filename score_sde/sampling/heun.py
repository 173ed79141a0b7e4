"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 1, with Algorithm 2's churn).

Every SDE here is a scaled VE: x_hat = x / m(t) is data plus noise of std sigma(t) = s/m, and follows
    dx_hat/dsigma = (x_hat - D(x_hat; sigma)) / sigma          (EDM eq. 3 with s = 1, sigma(t) = t)
with D the denoiser E[x0 | x_hat] = x_hat + sigma^2 * m * score_x(m x_hat, t(sigma)) (Tweedie). The
solver steps through EDM's sigma schedule (eq. 5) from sigma(T) down to sigma(eps), then takes a last
Euler step to sigma = 0, so the result is the denoised sample and NFE = 2 * steps - 1.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch

from ..utils import randn_like
from .common import (Callback, CountingScore, ScoreFn, batch_time, check_positive_int, edm_sigmas,
                     initial_state, progress as progress_bar)
from .ode import resolve_eps, tweedie_denoise
from .registry import register_sampler


def sigma_range(sde, eps: float) -> Tuple[float, float]:
    """(sigma(eps), sigma(T)): the noise levels a sigma-space sampler runs between."""
    lo, hi = sde.sigma(torch.tensor([eps, sde.T], dtype=torch.float64)).tolist()
    return lo, hi


def time_of(sde, sigma: float) -> float:
    """t(sigma), with sigma = 0 mapped to t = 0 (clean data)."""
    return 0.0 if sigma == 0 else float(sde.t_from_sigma(torch.tensor([sigma], dtype=torch.float64))[0])


def edm_denoiser(sde, score_fn: ScoreFn) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """D(x_hat; sigma) = E[x0 | x_t = m x_hat] with t = t(sigma), in the scaled space x_hat = x/m."""
    def denoise(x_hat: torch.Tensor, sigma: float) -> torch.Tensor:
        t = time_of(sde, sigma)
        m = float(sde.mean_coeff(torch.tensor([t], dtype=torch.float64))[0])
        return tweedie_denoise(sde, score_fn, m * x_hat, batch_time(t, x_hat))
    return denoise


def _check_churn(churn: float, s_tmin: float, s_tmax: float, s_noise: float, rho: float) -> None:
    if not rho > 0:
        raise ValueError(f"rho must be positive (EDM uses 7), got {rho}")
    if churn < 0 or s_noise < 0:
        raise ValueError(f"churn and s_noise must be non-negative, got churn={churn}, s_noise={s_noise}")
    if not 0 <= s_tmin <= s_tmax:
        raise ValueError(f"need 0 <= s_tmin <= s_tmax, got s_tmin={s_tmin}, s_tmax={s_tmax}")


@register_sampler("heun")
def heun_sampler(sde, shape: Sequence[int], *, steps: int = 18, rho: float = 7.0, churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 eps: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                 progress: bool = False) -> Callable:
    """Deterministic Heun sampler of EDM (churn=0), or its stochastic variant (churn > 0, Algorithm 2).

    steps: number of sigma levels of eq. 5 between sigma(T) and sigma(eps); NFE = 2 * steps - 1.
    churn, s_tmin, s_tmax, s_noise: EDM's S_churn, S_tmin, S_tmax, S_noise. The raised level
    sigma_hat = sigma (1 + gamma) is capped at sigma(T), so the score is never asked beyond T.
    """
    check_positive_int("steps", steps)
    _check_churn(churn, s_tmin, s_tmax, s_noise, rho)
    eps = resolve_eps(sde, eps)
    lo, hi = sigma_range(sde, eps)
    sigmas = torch.cat([edm_sigmas(lo, hi, steps, rho), torch.zeros(1, dtype=torch.float64)]).tolist()
    gamma_max = min(churn / steps, math.sqrt(2) - 1)

    def sampler(score_fn: ScoreFn, generator: Optional[torch.Generator] = None,
                x_T: Optional[torch.Tensor] = None, callback: Callback = None) -> Tuple[torch.Tensor, int]:
        counted = CountingScore(score_fn)
        denoise = edm_denoiser(sde, counted)
        x = initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        x = x / float(sde.mean_coeff(torch.tensor([sde.T], dtype=torch.float64))[0])  # x_hat at sigma(T)
        with torch.no_grad():
            for i in progress_bar(range(steps), progress, "heun"):
                sigma, nxt = sigmas[i], sigmas[i + 1]
                gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
                sigma_hat = min(sigma * (1 + gamma), hi)            # Alg. 2, line 5 (capped at sigma(T))
                if sigma_hat > sigma:                               # Alg. 2, line 6
                    x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * randn_like(x, generator)
                x0 = denoise(x, sigma_hat)
                d = (x - x0) / sigma_hat                            # Alg. 1, line 4
                x_next = x + (nxt - sigma_hat) * d                  # Euler step, line 5
                if nxt > 0:                                         # 2nd-order correction, lines 7-8
                    x0 = denoise(x_next, nxt)
                    x_next = x + (nxt - sigma_hat) * 0.5 * (d + (x_next - x0) / nxt)
                x = x_next
                if callback is not None:
                    t = time_of(sde, nxt)
                    m = float(sde.mean_coeff(torch.tensor([t], dtype=torch.float64))[0])
                    callback(i=i, t=t, x=m * x, x0=x0)
        return x, counted.nfe

    return sampler
