"""DPM-Solver++ multistep in data-prediction form (Lu et al. 2022, "DPM-Solver++"), ODE and SDE variants.

In sigma space (x_hat = x/m, lambda = -log sigma, h = lambda' - lambda) the exact solution of the
probability-flow ODE (eta = 0) and of the reverse SDE (eta = 1) from sigma to sigma' is
    x' = (sigma'/sigma) e^{-eta h} x + int (1+eta) e^{-(1+eta)(lambda' - l)} D(l) dl
         + sigma' sqrt(1 - e^{-2 eta h}) z          (DPM-Solver++ eq. 9; its SDE form, "SDE-DPM-Solver++")
and the multistep solvers replace D(l) by its extrapolation through the previous data predictions:
order 1 is DDIM, 2 is Algorithm 2 ("2M"), 3 the quadratic extension ("3M"). With H = (1+eta) h:
    D const:        (1 - e^{-H}) D0
    D linear:       + c2 d1,  c2 = 1 - (1 - e^{-H})/H               (int of the v term over v in [0, 1])
    D quadratic:    + c3 d2,  c3 = 1 - 2/H + 2 (1 - e^{-H})/H^2
The last step (sigma' = 0) returns the data prediction. NFE = steps; the solver uses only sigma, so it
serves VE, VP and sub-VP alike.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

from . import sigma_space
from .common import EDM_SIGMA_MAX, check_positive_int
from .registry import register_sampler

ORDERS = (1, 2, 3)


def data_update(x: torch.Tensor, x0s: List[torch.Tensor], lams: List[float], ratio: float, order: int,
                scale: float = 1.0, eta: float = 0.0) -> torch.Tensor:
    """ratio * x + scale * (integral of the extrapolated data prediction), as in the module docstring.

    x0s: data predictions at the previous levels (newest last, at least `order`); lams: their lambdas followed
    by the target's. ratio: sigma'/sigma e^{-eta h} in sigma space (s'/s in x space, with scale = m').
    """
    h = lams[-1] - lams[-2]
    H = (1 + eta) * h
    c1 = -math.expm1(-H)                                      # 1 - e^{-H}
    d0 = x0s[-1]
    if order == 1:                                            # DPM-Solver++(1) = DDIM
        return ratio * x + scale * c1 * d0
    r0 = (lams[-2] - lams[-3]) / h
    d1_0 = (d0 - x0s[-2]) / r0
    if order == 2:                                            # 2M, Algorithm 2: D0 + (1/2r) (D0 - D_-1)
        return ratio * x + scale * c1 * (d0 + 0.5 * d1_0)
    r1 = (lams[-3] - lams[-4]) / h                            # 3M: second divided differences
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)              # = h D'(lambda) + O(h^3)
    d2 = (d1_0 - d1_1) / (r0 + r1)                            # = h^2 D''(lambda) / 2 + O(h^3)
    c2 = 1 - c1 / H
    c3 = 1 - 2 / H + 2 * c1 / H ** 2
    return ratio * x + scale * (c1 * d0 + c2 * d1 + c3 * d2)


def multistep_update(x: torch.Tensor, x0s: List[torch.Tensor], lams: List[float], m_t: float,
                     s_ratio: float, order: int) -> torch.Tensor:
    """The ODE update in x space: x' = (s'/s) x + m' (integral of D), for x = m x_hat."""
    return data_update(x, x0s, lams, s_ratio, order, scale=m_t)


def solve_multistep(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], order: int = 3,
                    lower_order_final: bool = True, eta: float = 0.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(order M), SDE variant for eta > 0; warm-up with lower orders while the history fills."""
    n = len(sigmas) - 1
    last = n - 1 if sigmas[-1] == 0 else n           # solver steps before the final denoising
    lams = [-math.log(s) if s > 0 else math.inf for s in sigmas]
    x0s: List[torch.Tensor] = []
    for i in run.steps(n):
        x0s = (x0s + [run.denoise(x, sigmas[i])])[-order:]
        if sigmas[i + 1] == 0:
            x = x0s[-1]                                     # final step: the data prediction
        else:
            k = min(order, len(x0s), last - i) if lower_order_final and n < 15 else min(order, len(x0s))
            h = lams[i + 1] - lams[i]
            x = data_update(x, x0s[-k:], lams[i + 1 - k:i + 2], sigmas[i + 1] / sigmas[i] * math.exp(-eta * h),
                            k, eta=eta)
            if eta > 0:                                     # the SDE's fresh noise, variance sigma'^2 (1 - e^{-2 eta h})
                x = x + s_noise * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)) * run.noise(x)
        run.report(i, sigmas[i + 1], x, x0s[-1])
    return x


def _grid(sde, steps: int, schedule: str, rho: float, sigma_max, eps, denoise_to_zero: bool) -> List[float]:
    """`steps` network calls: steps levels + 0, or steps + 1 levels ending at sigma_min without denoising."""
    check_positive_int("steps", steps)
    if denoise_to_zero:
        return sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.sigma_grid(sde, steps + 1, schedule, rho, sigma_max, eps)[:-1]


def _check(order: int, eta: float, s_noise: float) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not eta >= 0 or not s_noise >= 0:
        raise ValueError(f"eta and s_noise must be non-negative, got eta={eta}, s_noise={s_noise}")


@register_sampler("dpm_solver")
def dpm_solver_sampler(sde, shape: Sequence[int], *, steps: int = 20, order: int = 3,
                       skip_type: str = "logSNR", rho: float = 7.0, lower_order_final: bool = True,
                       denoise_to_zero: bool = True, sigma_max: Optional[float] = EDM_SIGMA_MAX,
                       eps: Optional[float] = None, threshold: Optional[float] = None, device=None,
                       dtype: torch.dtype = torch.float32, progress: bool = False) -> Callable:
    """DPM-Solver++ multistep sampler (ODE); NFE = steps.

    order: 1 (= DDIM), 2 (2M) or 3 (3M); lower orders while the history fills. lower_order_final: with
    fewer than 15 steps the last steps drop in order, which is stabler.
    skip_type: the schedule (DPM-Solver's name for it): "logSNR" (default), "edm" (with rho),
    "time_uniform", "time_quadratic", or a saved .json schedule.
    denoise_to_zero: the last of the `steps` network calls returns the data prediction at the final level
    (default); False spends it on one more solver step and returns x at that level (the noise left in it).
    sigma_max: highest level (EDM's 80); None starts at sigma(T) (VP: 152). eps: None ends at
    max(0.002, sigma(0)); a time ends at sigma(eps). threshold: dynamic-thresholding quantile (None: off).
    """
    _check(order, 0.0, 1.0)
    sigmas = _grid(sde, steps, skip_type, rho, sigma_max, eps, denoise_to_zero)
    return sigma_space.build("dpm_solver", solve_multistep, sde, shape, sigmas, threshold=threshold,
                             device=device, dtype=dtype, progress=progress, order=order,
                             lower_order_final=lower_order_final)


@register_sampler("dpmpp_2m", "sample_dpmpp_2m")
def dpmpp_2m_sampler(sde, shape: Sequence[int], *, steps: int = 20, schedule: str = "logSNR", rho: float = 7.0,
                     sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                     threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                     progress: bool = False) -> Callable:
    """DPM-Solver++(2M) (Algorithm 2), k-diffusion's sample_dpmpp_2m: dpm_solver with order=2; NFE = steps."""
    sigmas = _grid(sde, steps, schedule, rho, sigma_max, eps, True)
    return sigma_space.build("dpmpp_2m", solve_multistep, sde, shape, sigmas, threshold=threshold,
                             device=device, dtype=dtype, progress=progress, order=2)


def _sde_sampler(name: str, order: int):
    @register_sampler(name, "sample_" + name)
    def factory(sde, shape: Sequence[int], *, steps: int = 20, eta: float = 1.0, s_noise: float = 1.0,
                schedule: str = "logSNR", rho: float = 7.0, sigma_max: Optional[float] = EDM_SIGMA_MAX,
                eps: Optional[float] = None, threshold: Optional[float] = None, device=None,
                dtype: torch.dtype = torch.float32, progress: bool = False) -> Callable:
        _check(order, eta, s_noise)
        sigmas = _grid(sde, steps, schedule, rho, sigma_max, eps, True)
        return sigma_space.build(name, solve_multistep, sde, shape, sigmas, threshold=threshold, device=device,
                                 dtype=dtype, progress=progress, order=order, eta=eta, s_noise=s_noise)

    factory.__name__ = f"{name}_sampler"
    factory.__doc__ = (f"SDE-DPM-Solver++({order}M): the reverse SDE solved exactly in its linear part, the data "
                       f"prediction extrapolated at order {order}; NFE = steps.\n\n    eta: 1 the reverse SDE, 0 the "
                       f"ODE (= dpm_solver order {order}); s_noise scales the fresh noise. schedule, rho, sigma_max, "
                       f"eps, threshold as for dpm_solver's skip_type etc.")
    return factory


dpmpp_2m_sde_sampler = _sde_sampler("dpmpp_2m_sde", 2)
dpmpp_3m_sde_sampler = _sde_sampler("dpmpp_3m_sde", 3)
