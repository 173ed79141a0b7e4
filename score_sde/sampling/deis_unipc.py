"""DEIS where the modes separate, UniPC elsewhere: one multistep solver for the regimes of the PF-ODE (issue 13).

The probability-flow ODE in sigma space, dx/dsigma = eps(x; sigma) = (x - D(x; sigma)) / sigma (EDM eq. 3),
is nearly linear far above and far below the data's scale, and strongly nonlinear in between:
  - sigma > deis_max (20): the prior regime, x ~ sigma z and D ~ the data mean;
  - deis_min < sigma <= deis_max: the modes of the data separate and D moves fast, while eps stays smooth in
    sigma. DEIS's rho-AB with rho = sigma integrates the Lagrange polynomial through the previous eps exactly
    over the step (Zhang & Chen 2023, eq. 15; `deis`) and follows it, where the exponential integrators in
    log-SNR leave anisotropic mixtures 3-5 standard errors too diffuse at 20 calls;
  - sigma <= deis_min (0.1): below the fine-scale stds of image-like data the ODE is stiff,
    x' ~ (sigma'/sigma) x + (1 - sigma'/sigma) D, and polynomials in sigma overshoot by nats.
In the two linear regimes the data-prediction exponential integrator UniPC (Zhao et al. 2023, Alg. 1-2;
`unipc`) solves the linear part exactly. So, with one shared history of network calls,
    deis_min < sigma_i <= deis_max   x' = x + sum_j w_j eps_{i-j}, w_j = int_{sigma_i}^{sigma'} L_j(s) ds (DEIS eq. 15)
    otherwise                        UniP-2 + UniC (B(h) = e^{-h} - 1) on the data predictions  (`unipc.step`)
with eps_j = (x_j - D_j) / sigma_j at the point x_j where the network was called (for UniPC steps: the UniP
point). One network call per level, the last one at sigma_min returned as the denoised estimate: NFE = steps.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from . import sigma_space, unipc
from .common import EDM_SIGMA_MAX
from .ipndm import check_order, deis_step
from .registry import register_sampler

# The band of DEIS steps, sigma in data units (data of scale ~1, as images on [-1, 1]): above the fine-scale
# stds of image-like spectra (variances below 1e-2), up to a few times the distances between modes. Measured on
# the benchmark mixtures and digits: bench/RESULTS.md "One sampler for both regimes".
DEIS_MIN = 0.1
DEIS_MAX = 20.0


def solve_deis_unipc(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], deis_min: float = DEIS_MIN,
                     deis_max: float = DEIS_MAX, deis_order: int = 3, order: int = 2,
                     variant: str = "bh2") -> torch.Tensor:
    n = len(sigmas) - 1
    x0s: List[torch.Tensor] = [run.denoise(x, sigmas[0])]       # data predictions, oldest first
    eps: List[torch.Tensor] = [(x - x0s[0]) / sigmas[0]]        # slopes at the points of those calls
    for i in run.steps(n):
        if sigmas[i + 1] == 0:                                  # final step: the last data prediction
            x = x0s[-1]
            run.report(i, 0.0, x, x)
            break
        if deis_min < sigmas[i] <= deis_max:
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
def deis_unipc_sampler(sde, shape: Sequence[int], *, steps: int = 20, deis_min: float = DEIS_MIN,
                       deis_max: float = DEIS_MAX, deis_order: int = 3, order: int = 2, variant: str = "bh2",
                       schedule: str = "logSNR", rho: float = 7.0, sigma_max: Optional[float] = EDM_SIGMA_MAX,
                       eps: Optional[float] = None,
                       threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                       progress: bool = False) -> Callable:
    """DEIS rho-AB (order `deis_order`) on the levels in (deis_min, deis_max], UniPC (`order`, `variant`) on the
    others; NFE = steps.

    deis_min, deis_max: the band of noise levels (data units, as sigma) that take DEIS steps (deis_min =
    deis_max: plain `unipc`; 0 and inf: DEIS down to sigma_min, then the denoised estimate).
    schedule, rho, sigma_max, eps, threshold as for `euler`.
    """
    if not 0 <= deis_min <= deis_max:
        raise ValueError(f"need 0 <= deis_min <= deis_max (defaults {DEIS_MIN}, {DEIS_MAX}), got deis_min="
                         f"{deis_min!r}, deis_max={deis_max!r}")
    check_order("deis_order", deis_order)
    unipc.check_options(order, variant)
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("deis_unipc", solve_deis_unipc, sde, shape, sigmas, threshold=threshold,
                             device=device, dtype=dtype, progress=progress, deis_min=deis_min, deis_max=deis_max,
                             deis_order=deis_order, order=order, variant=variant)
