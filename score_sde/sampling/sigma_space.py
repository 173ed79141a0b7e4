"""What every sigma-space sampler shares: the noise-level grid, the start from prior noise, the final
denoising step, NFE counting and the network adapter, so each solver is a short loop over sigmas.

Every SDE is a scaled VE (Karras et al. 2022, sec. 2): x_hat = x/m is data plus noise of std sigma = s/m.
A solver `solve(run, x_hat, sigmas, **options)` walks the descending levels sigmas[0] > ... > sigmas[-2] =
sigma_min > sigmas[-1] = 0, calling the network only through run.denoise(x_hat, sigma) = E[x0 | x_hat]
(parameterization.denoiser). Its step to sigma = 0 returns the denoised estimate, so NFE counts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from ..parameterization import Denoiser, denoiser
from ..utils import randn_like
from . import common, schedules


@dataclass
class Run:
    """One sampler call: the denoiser, the random source, the user's callback and the progress bar."""
    denoise: Denoiser
    generator: Optional[torch.Generator]
    report: Callable[..., None]
    progress: bool
    name: str

    def steps(self, n: int) -> Iterable[int]:
        return common.progress(range(n), self.progress, self.name)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        return randn_like(x, self.generator)


Solve = Callable[..., torch.Tensor]


def sigma_grid(sde, steps: int, schedule: str, rho: float, sigma_max: Optional[float],
               eps: Optional[float]) -> List[float]:
    """`steps` levels from min(sigma(T), sigma_max) to the endpoint (common.end_sigma), then 0."""
    common.check_positive_int("steps", steps)
    lo, hi = common.end_sigma(sde, eps), common.start_sigma(sde, sigma_max)
    if not lo < hi:
        raise ValueError(f"sigma_max={sigma_max} must exceed the final noise level {lo:.4g}; raise it or "
                         f"lower eps")
    if steps == 1:
        return [hi, 0.0]
    return schedules.sigma_schedule(sde, schedule, steps, lo, hi, rho).tolist() + [0.0]


def _reporter(sde, callback: common.Callback) -> Callable[..., None]:
    """callback(i, t, x, x0) in model space (x = m x_hat) from a solver's (i, sigma, x_hat, x0)."""
    def report(i: int, sigma: float, x_hat: torch.Tensor, x0: torch.Tensor) -> None:
        if callback is None:
            return
        t = 0.0 if sigma == 0 else float(sde.t_from_sigma(torch.tensor([sigma], dtype=torch.float64))[0])
        m = float(sde.mean_coeff(torch.tensor([t], dtype=torch.float64))[0])
        callback(i=i, t=t, x=m * x_hat, x0=x0)
    return report


def build(name: str, solve: Solve, sde, shape: Sequence[int], sigmas: List[float], *,
          threshold: Optional[float], device, dtype: torch.dtype, progress: bool, **options) -> Callable:
    """The sampler(score_fn, generator, x_T, callback) -> (x, nfe) running `solve` over `sigmas`."""
    denoiser(sde, lambda x, t: x, threshold)  # validates threshold at build time

    def sampler(score_fn: common.ScoreFn, generator: Optional[torch.Generator] = None,
                x_T: Optional[torch.Tensor] = None, callback: common.Callback = None) -> Tuple[torch.Tensor, int]:
        common.check_continuous(score_fn, name)
        counted = common.CountingScore(score_fn)
        run = Run(denoiser(sde, counted, threshold), generator, _reporter(sde, callback), progress, name)
        x = common.initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        x = sigmas[0] * common.prior_noise(sde, x)  # EDM Alg. 1 line 2: x_hat ~ N(0, sigma_0^2 I)
        with torch.no_grad():
            x = solve(run, x, sigmas, **options)
        if sigmas[-1] > 0:  # stopped at a noise level: back to model space x = m x_hat
            t = sde.t_from_sigma(torch.tensor([sigmas[-1]], dtype=torch.float64))
            x = float(sde.mean_coeff(t)[0]) * x
        return x, counted.nfe

    return sampler
