"""UniPC (Zhao et al. 2023), data-prediction multistep predictor UniP-p with corrector UniC, in sigma space.

With lambda = -log sigma, h = lambda' - lambda, the previous data predictions D_0 (newest), D_-1, ... at
r_k h behind (r_k = (lambda_-k - lambda)/h < 0) and D_k1 = (D_-k - D_0)/r_k, one step is (Zhao et al.,
Algorithms 1-2 in data-prediction form, alpha = 1 in sigma space):
    x'_0  = (sigma'/sigma) x + (1 - e^{-h}) D_0
    UniP  x'  = x'_0 - B(h) sum_k a_k D_k1                       a: R_{p-1} a = g_{p-1}   (p = 2: a = 1/2)
    UniC  x'c = x'_0 - B(h) (sum_k a_k D_k1 + a_p (D(x'; sigma') - D_0))  a: R_p a = g_p (p = 1: a = 1/2)
where R_p has rows (r_1^j, ..., r_{p-1}^j, 1) for j = 0..p-1 and g_j = phi_{j+1}(-h) j! / B(h), phi_1(z) =
e^z - 1, phi_{k+1}(z) = phi_k(z)/z - 1/k!  (the exponential-integrator phi functions). B(h) = -h ("bh1") or
e^{-h} - 1 ("bh2"). The corrector raises the order by one and reuses the network call the next step needs,
so NFE = steps; the last call, at the final level, returns the data prediction.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from . import sigma_space
from .common import EDM_SIGMA_MAX
from .registry import register_sampler

VARIANTS = ("bh1", "bh2")


def coefficients(rks: List[float], h: float, variant: str):
    """(B(h), R, g) of UniPC for the ratios r_1..r_{p-1} of the history (p = len(rks) + 1)."""
    hh = -h
    phi_1 = math.expm1(hh)
    B = hh if variant == "bh1" else phi_1
    rs = rks + [1.0]
    R = torch.tensor([[r ** j for r in rs] for j in range(len(rs))], dtype=torch.float64)
    g, phi_k, fact = [], phi_1 / hh - 1, 1
    for j in range(1, len(rs) + 1):
        g.append(phi_k * fact / B)
        fact *= j + 1
        phi_k = phi_k / hh - 1 / fact
    return B, R, torch.tensor(g, dtype=torch.float64)


def step(run: sigma_space.Run, x: torch.Tensor, x0s: List[torch.Tensor], sigmas: List[float], p: int,
         variant: str = "bh2") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One UniPC step of order p from sigmas[-2] to sigmas[-1] > 0 with the data predictions x0s (newest last,
    the newest max(p, 1) made at the levels before sigmas[-1]; p = 0, which the lower-order-final rule gives
    on a grid not ending at 0: the DDIM predictor with a one-term corrector).

    Returns (x after UniC, the UniP point, the data prediction there): the network is called once, at the
    UniP point, and that prediction serves the corrector and the next step (Zhao et al., Alg. 1-2).
    """
    lams = [-math.log(s) for s in sigmas]
    lam, h = lams[-2], lams[-1] - lams[-2]
    rks = [(lams[-2 - k] - lam) / h for k in range(1, p)]
    d1s = [(x0s[-1 - k] - x0s[-1]) / r for k, r in zip(range(1, p), rks)]
    B, R, g = coefficients(rks, h, variant)
    x_lin = sigmas[-1] / sigmas[-2] * x - math.expm1(-h) * x0s[-1]                # first-order (DDIM) part
    a_p = [0.5] if p == 2 else (torch.linalg.solve(R[:-1, :-1], g[:-1]).tolist() if p > 2 else [])
    x_pred = x_lin - B * sum(a * d for a, d in zip(a_p, d1s)) if d1s else x_lin      # UniP-p
    x0_new = run.denoise(x_pred, sigmas[-1])
    a_c = [0.5] if p == 1 else torch.linalg.solve(R, g).tolist()
    corr = sum(a * d for a, d in zip(a_c[:-1], d1s)) if d1s else 0.0
    return x_lin - B * (corr + a_c[-1] * (x0_new - x0s[-1])), x_pred, x0_new            # UniC-p


def step_order(order: int, history: int, i: int, n: int, lower_order_final: bool) -> int:
    """The order of step i of n: limited by the history and, below 10 steps, lowered over the last steps."""
    return min(order, history, n - 1 - i) if lower_order_final and n < 10 else min(order, history)


def solve_unipc(run: sigma_space.Run, x: torch.Tensor, sigmas: List[float], order: int = 2,
                variant: str = "bh2", lower_order_final: bool = True) -> torch.Tensor:
    n = len(sigmas) - 1
    x0s: List[torch.Tensor] = [run.denoise(x, sigmas[0])]
    for i in run.steps(n):
        if sigmas[i + 1] == 0:                                  # final step: the last data prediction
            x = x0s[-1]
            run.report(i, 0.0, x, x0s[-1])
            break
        p = step_order(order, len(x0s), i, n, lower_order_final)
        x, _, x0_new = step(run, x, x0s, sigmas[i + 1 - max(p, 1):i + 2], p, variant)
        x0s = (x0s + [x0_new])[-order:]
        run.report(i, sigmas[i + 1], x, x0_new)
    return x


def check_options(order: int, variant: str) -> None:
    """UniPC's predictor order (1..3) and B(h) variant, else a one-line error naming the valid values."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


@register_sampler("unipc", "sample_unipc")
def unipc_sampler(sde, shape: Sequence[int], *, steps: int = 10, order: int = 2, variant: str = "bh2",
                  lower_order_final: bool = True, schedule: str = "logSNR", rho: float = 7.0,
                  sigma_max: Optional[float] = EDM_SIGMA_MAX, eps: Optional[float] = None,
                  threshold: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                  progress: bool = False) -> Callable:
    """UniPC multistep predictor-corrector (data prediction); NFE = steps.

    order: predictor order p in 1..3 (the corrector makes it p + 1; 2 was the most accurate at 10-20 steps
    on image-like spectra, where 3 overshoots); variant: B(h) = "bh1" (-h) or "bh2" (e^{-h} - 1, the paper's
    choice for unconditional sampling). lower_order_final: with fewer than 10 steps the last steps drop in
    order (as the reference implementation). The last of the `steps` calls, at the final level, is returned as the
    denoised estimate (no corrector there). schedule, rho, sigma_max, eps, threshold as for `euler`.
    """
    check_options(order, variant)
    sigmas = sigma_space.sigma_grid(sde, steps, schedule, rho, sigma_max, eps)
    return sigma_space.build("unipc", solve_unipc, sde, shape, sigmas, threshold=threshold, device=device,
                             dtype=dtype, progress=progress, order=order, variant=variant,
                             lower_order_final=lower_order_final)
