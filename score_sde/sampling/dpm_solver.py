"""DPM-Solver++ multistep, data-prediction form (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

With x_t = m_t x0 + s_t z, lambda_t = log(m_t / s_t) = -log sigma_t and x0_theta the data prediction
E[x0 | x_t] = (x_t + s_t^2 score) / m_t, one step from time u to t (h = lambda_t - lambda_u) is
    x_t = (s_t / s_u) x_u - m_t (e^{-h} - 1) D                  (first order: D = x0_theta(x_u, u))
where the multistep updates of order 2 and 3 replace D by extrapolations of earlier data predictions
in lambda. The solver uses only m and s, so it serves VE, VP and subVP alike. Each step costs one
score evaluation: NFE = steps (+1 with denoise_to_zero).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .common import Callback, CountingScore, ScoreFn, batch_time, check_positive_int, initial_state
from .common import progress as progress_bar
from .ode import resolve_eps, tweedie_denoise
from .registry import register_sampler

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")
ORDERS = (1, 2, 3)


def time_grid(sde, skip_type: str, eps: float, steps: int) -> torch.Tensor:
    """steps + 1 times from T down to eps (float64): uniform in lambda = -log sigma, in t, or in sqrt(t)."""
    T = sde.T
    if skip_type == "logSNR":
        lam = -torch.log(sde.sigma(torch.tensor([T, eps], dtype=torch.float64)))
        lams = torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64)
        t = sde.t_from_sigma(torch.exp(-lams))
        t[0], t[-1] = T, eps  # exact ends despite round-off in the inverse
        return t
    if skip_type == "time_uniform":
        return torch.linspace(T, eps, steps + 1, dtype=torch.float64)
    if skip_type == "time_quadratic":
        return torch.linspace(math.sqrt(T), math.sqrt(eps), steps + 1, dtype=torch.float64) ** 2
    raise ValueError(f"unknown skip_type {skip_type!r}; choose one of {SKIP_TYPES}")


def multistep_update(x: torch.Tensor, x0s: List[torch.Tensor], lams: List[float], m_t: float,
                     s_ratio: float, order: int) -> torch.Tensor:
    """DPM-Solver++ update of the given order from the last time in `lams` to lams[-1]'s successor.

    x0s: data predictions at the previous times (newest last); lams: their lambdas followed by the
    target's lambda; s_ratio = s_t / s_u for the newest previous time u.
    """
    h = lams[-1] - lams[-2]
    phi_1 = math.expm1(-h)                                   # e^{-h} - 1
    d0 = x0s[-1]
    if order == 1:                                           # DPM-Solver++(1) = DDIM
        return s_ratio * x - m_t * phi_1 * d0
    r0 = (lams[-2] - lams[-3]) / h
    d1_0 = (d0 - x0s[-2]) / r0
    if order == 2:                                           # DPM-Solver++(2M), Algorithm 2
        return s_ratio * x - m_t * phi_1 * d0 - 0.5 * m_t * phi_1 * d1_0
    r1 = (lams[-3] - lams[-4]) / h                           # 3M: second divided differences
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)             # = h x0'(lambda_u) + O(h^3)
    d2 = (d1_0 - d1_1) / (r0 + r1)                           # = h^2 x0''(lambda_u) / 2 + O(h^3)
    # exact integral of e^{lambda} x0(lambda) for quadratic x0 (eq. 9 of the paper with a 2nd-order Taylor
    # expansion): coefficients (h + phi_1)/h of d1 and 2 (h^2/2 - h - phi_1)/h^2 of d2
    phi_2 = phi_1 / h + 1
    phi_3 = 1 - 2 / h - 2 * phi_1 / h ** 2
    return s_ratio * x - m_t * phi_1 * d0 + m_t * phi_2 * d1 + m_t * phi_3 * d2


def _check(order: int, skip_type: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"unknown skip_type {skip_type!r}; choose one of {SKIP_TYPES}")


@register_sampler("dpm_solver")
def dpm_solver_sampler(sde, shape: Sequence[int], *, steps: int = 20, order: int = 3,
                       skip_type: str = "logSNR", lower_order_final: bool = True,
                       denoise_to_zero: bool = False, eps: Optional[float] = None, device=None,
                       dtype: torch.dtype = torch.float32, progress: bool = False) -> Callable:
    """DPM-Solver++ multistep sampler from T to eps.

    order: 1 (= DDIM), 2 (2M) or 3 (3M); the first steps use lower orders while the history fills
    (warm-up). lower_order_final: with fewer than 15 steps, the last steps drop to order
    (steps - i + 1), which is stabler; with more steps it has no effect (keeps the full order).
    skip_type: "logSNR" (uniform in lambda = -log sigma, default), "time_uniform", "time_quadratic".
    denoise_to_zero: return the final data prediction E[x0 | x_eps] instead of x_eps (one more NFE).
    """
    check_positive_int("steps", steps)
    _check(order, skip_type)
    eps = resolve_eps(sde, eps)
    times = time_grid(sde, skip_type, eps, steps)
    lams = (-torch.log(sde.sigma(times))).tolist()
    ms, ss = sde.mean_coeff(times).tolist(), sde.marginal_std(times).tolist()
    times = times.tolist()
    final_low = lower_order_final and steps < 15  # as the reference implementation: only few-step runs

    def sampler(score_fn: ScoreFn, generator: Optional[torch.Generator] = None,
                x_T: Optional[torch.Tensor] = None, callback: Callback = None) -> Tuple[torch.Tensor, int]:
        counted = CountingScore(score_fn)
        x = initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        with torch.no_grad():
            x0s = [tweedie_denoise(sde, counted, x, batch_time(times[0], x))]
            for i in progress_bar(range(1, steps + 1), progress, "dpm_solver"):
                k = min(order, i, steps - i + 1) if final_low else min(order, i)
                x = multistep_update(x, x0s, lams[i - k:i + 1], ms[i], ss[i] / ss[i - 1], k)
                if i < steps or denoise_to_zero:
                    x0s = (x0s + [tweedie_denoise(sde, counted, x, batch_time(times[i], x))])[-order:]
                if callback is not None:
                    callback(i=i - 1, t=times[i], x=x, x0=x0s[-1])
        return (x0s[-1] if denoise_to_zero else x), counted.nfe

    return sampler
