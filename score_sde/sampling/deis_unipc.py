"""DEIS above a noise level, UniPC below it: one multistep solver for both regimes of the PF-ODE (issue 13).

The probability-flow ODE in sigma space, dx/dsigma = eps(x; sigma) = (x - D(x; sigma)) / sigma (EDM eq. 3),
has two regimes. At high sigma the modes of the data separate and D moves fast, while eps is smooth in
sigma: DEIS's rho-AB with rho = sigma integrates the Lagrange polynomial through the previous eps exactly
over the step (Zhang & Chen 2023, eq. 15; `deis`), and is exact at 20 calls on anisotropic mixtures where
the exponential integrators in log-SNR are 3-5 standard errors too diffuse. Below a sigma of the order of
the data's fine-scale standard deviations the ODE is stiff, x ~ (sigma'/sigma) x + (1 - sigma'/sigma) D:
the data-prediction exponential integrator UniPC (Zhao et al. 2023, Alg. 1-2; `unipc`) solves that linear
part exactly, where polynomials in sigma overshoot by nats on image-like spectra. So, with one shared
history of network calls,
    sigma_i >  switch   x' = x + sum_j w_j eps_{i-j},   w_j = int_{sigma_i}^{sigma'} L_j(s) ds    (DEIS eq. 15)
    sigma_i <= switch   UniP-2 + UniC (B(h) = e^{-h} - 1) on the data predictions D_{i-j}  (`unipc.step`)
with eps_j = (x_j - D_j) / sigma_j at the point x_j where the network was called (for UniPC steps: the UniP
point). One network call per level, the last one at sigma_min returned as the denoised estimate: NFE = steps.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from . import sigma_space, unipc
from .common import EDM_SIGMA_MAX
from .ipndm import ADAMS_BASHFORTH, lagrange_weights
from .registry import register_sampler

# Where the solver switches (sigma in data units): above the fine-scale stds of image-like data (image
# spectra on [-1, 1] put most variances below 1e-2), below the scale at which modes separate. Measured on the
# benchmark mixtures, bench/RESULTS.md "One sampler for both regimes".
SWITCH_SIGMA = 0.1


def deis_step(x: torch.Tensor, eps: List[torch.Tensor], sigmas: List[float]) -> torch.Tensor:
    """x' = x + int eps dsigma from sigmas[-2] to sigmas[-1], eps the Lagrange polynomial through the newest
    len(eps) slopes made at sigmas[-1-len(eps):-1] (DEIS eq. 15 with rho = sigma)."""
    nodes = sigmas[-1 - len(eps):-1][::-1]                      # newest first, as `eps`
    weights = lagrange_weights(nodes, sigmas[-2], sigmas[-1])
    return x + sum(w * e for w, e in zip(weights, eps[::-1]))


def solve_deis_unipc(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], switch: float = SWITCH_SIGMA,
                     deis_order: int = 3, order: int = 2, variant: str = "bh2") -> torch.Tensor:
    n = len(sigmas) - 1
    x0s: List[torch.Tensor] = [run.denoise(x, sigmas[0])]       # data predictions, oldest first
    eps: List[torch.Tensor] = [(x - x0s[0]) / sigmas[0]]        # slopes at the points of those calls
    for i in run.steps(n):
        if sigmas[i + 1] == 0:                                  # final step: the last data prediction
            x = x0s[-1]
            run.report(i, 0.0, x, x)
            break
        if sigmas[i] > switch:
            k = min(deis_order, len(eps))
            x = point = deis_step(x, eps[-k:], sigmas[i + 1 - k:i + 2])
            x0 = run.denoise(point, sigmas[i + 1])
        else:
            p = unipc.step_order(order, len(x0s), i, n, lower_order_final=True)
            x, point, x0 = unipc.step(run, x, x0s, sigmas[i + 1 - max(p, 1):i + 2], p, variant)
        keep = max(deis_order, order)
        x0s, eps = (x0s + [x0])[-keep:], (eps + [(point - x0) / sigmas[i + 1]])[-keep:]
        run.report(i, sigmas[i + 1], x, x0)
    return x


@register_sampler("deis_unipc")
def deis_unipc_sampler(sde, shape: Sequence[int], *, steps: int = 20, switch: float = SWITCH_SIGMA,
                       deis_order: int = 3, order: int = 2, variant: str = "bh2", schedule: str = "logSNR",
                       rho: float = 7.0, sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                       threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                       progress: bool = False) -> Callable:
    """DEIS rho-AB (order `deis_order`) on the levels above `switch`, UniPC (`order`, `variant`) below; NFE = steps.

    switch: the noise level (data units, as sigma) where the solver changes: levels above it take DEIS steps,
    the others UniPC steps (math.inf: plain `unipc`; 0: DEIS down to sigma_min, then the denoised estimate).
    schedule, rho, sigma_max, eps, threshold as for `euler`.
    """
    if not switch >= 0:
        raise ValueError(f"switch must be a noise level >= 0 (default {SWITCH_SIGMA}), got {switch!r}")
    if deis_order not in ADAMS_BASHFORTH:
        raise ValueError(f"deis_order must be one of {sorted(ADAMS_BASHFORTH)}, got {deis_order!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in unipc.VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {unipc.VARIANTS}")
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("deis_unipc", solve_deis_unipc, sde, shape, sigmas, threshold=threshold,
                             device=device, dtype=dtype, progress=progress, switch=switch, deis_order=deis_order,
                             order=order, variant=variant)
