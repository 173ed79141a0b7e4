"""iPNDM (Zhang & Chen 2023, "DEIS", sec. 5 / appendix: improved pseudo numerical methods): Adams-Bashforth
on the probability-flow ODE in sigma, dx/dsigma = d = (x - D(x; sigma)) / sigma (EDM eq. 3), with the
history of slopes d_0 (newest), d_-1, ... and lower orders while it fills:
    order 1  x' = x + dsigma d_0
    order 2  x' = x + dsigma (3 d_0 - d_-1) / 2
    order 3  x' = x + dsigma (23 d_0 - 16 d_-1 + 5 d_-2) / 12
    order 4  x' = x + dsigma (55 d_0 - 59 d_-1 + 37 d_-2 - 9 d_-3) / 24
These are the fixed-step coefficients (iPNDM uses them on any grid). `deis` integrates the Lagrange polynomial
through the previous slopes exactly over each step instead (DEIS's rho-AB with rho = sigma, Zhang & Chen 2023,
eq. 15), which stays consistent when neighbouring steps differ by large factors, as on EDM/logSNR grids.
One network call per step, including the last step to sigma = 0: NFE = steps.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from . import sigma_space
from .common import EDM_SIGMA_MAX
from .registry import register_sampler

ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def lagrange_weights(nodes: Sequence[float], a: float, b: float) -> List[float]:
    """int_a^b L_j(sigma) dsigma for the Lagrange basis L_j through `nodes` (DEIS eq. 15)."""
    weights = []
    for j, node in enumerate(nodes):
        basis = np.poly1d([1.0])
        for k, other in enumerate(nodes):
            if k != j:
                basis = basis * np.poly1d([1.0, -other]) / (node - other)
        integral = basis.integ()
        weights.append(float(integral(b) - integral(a)))
    return weights


def deis_step(x: torch.Tensor, eps: List[torch.Tensor], sigmas: List[float]) -> torch.Tensor:
    """x' = x + int eps dsigma from sigmas[-2] to sigmas[-1], eps the Lagrange polynomial through the newest
    len(eps) slopes (oldest first) made at sigmas[-1-len(eps):-1] (DEIS eq. 15 with rho = sigma)."""
    nodes = sigmas[-1 - len(eps):-1][::-1]                      # newest first, as eps[::-1]
    weights = lagrange_weights(nodes, sigmas[-2], sigmas[-1])
    return x + sum(w * e for w, e in zip(weights, eps[::-1]))


def check_order(name: str, order: int) -> None:
    """An Adams-Bashforth order the table holds (1..4), else a one-line error naming the option."""
    if order not in ADAMS_BASHFORTH:
        raise ValueError(f"{name} must be one of {sorted(ADAMS_BASHFORTH)}, got {order!r}")


def solve_ipndm(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], order: int = 4,
                variable_step: bool = False) -> torch.Tensor:
    slopes: List[torch.Tensor] = []
    for i in run.steps(len(sigmas) - 1):
        x0 = run.denoise(x, sigmas[i])
        slopes = ([(x - x0) / sigmas[i]] + slopes)[:order]        # newest first
        if variable_step:
            x = deis_step(x, slopes[::-1], sigmas[i + 1 - len(slopes):i + 2])
        else:
            step = sigmas[i + 1] - sigmas[i]
            x = x + sum(step * c * d for c, d in zip(ADAMS_BASHFORTH[len(slopes)], slopes))
        run.report(i, sigmas[i + 1], x, x0)
    return x


@register_sampler("ipndm", "sample_ipndm")
def ipndm_sampler(sde, shape: Sequence[int], *, steps: int = 10, order: int = 4, schedule: str = "time_quadratic",
                  rho: float = 7.0, sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                  threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                  progress: bool = False) -> Callable:
    """iPNDM: Adams-Bashforth of the given order (1..4) on EDM's ODE in sigma; NFE = steps.

    schedule, rho, sigma_max, eps, threshold as for `euler`.
    """
    check_order("order", order)
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("ipndm", solve_ipndm, sde, shape, sigmas, threshold=threshold, device=device,
                             dtype=dtype, progress=progress, order=order)


@register_sampler("deis")
def deis_sampler(sde, shape: Sequence[int], *, steps: int = 10, order: int = 3, schedule: str = "logSNR",
                 rho: float = 7.0, sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                 threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                 progress: bool = False) -> Callable:
    """DEIS rho-AB: variable-step Adams-Bashforth of the given order (1..4) on EDM's ODE in sigma; NFE = steps.

    schedule, rho, sigma_max, eps, threshold as for `euler`.
    """
    check_order("order", order)
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("deis", solve_ipndm, sde, shape, sigmas, threshold=threshold, device=device,
                             dtype=dtype, progress=progress, order=order, variable_step=True)
