"""Pieces every sampler shares: NFE counting, the initial state, time and sigma grids, progress."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Optional[Callable[..., None]]


class CountingScore:
    """Wraps score_fn, counting network function evaluations (one per call, whatever the batch)."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def initial_state(sde, shape: Sequence[int], x_T: Optional[torch.Tensor], generator: Optional[torch.Generator],
                  device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T given by the caller (checked against `shape`) or drawn from the SDE's prior."""
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but the sampler was built for {tuple(shape)}")
        return x_T
    return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)


def batch_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A time (python float or 0-d tensor) broadcast to the [batch] vector samplers pass to score_fn."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def uniform_times(T: float, eps: float, steps: int) -> torch.Tensor:
    """steps + 1 times from T down to eps, evenly spaced (float64)."""
    return torch.linspace(T, eps, steps + 1, dtype=torch.float64)


def edm_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, float64.

    rho = inf is the limit of eq. 5: geometric spacing (uniform in log sigma, i.e. in logSNR).
    """
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / max(steps - 1, 1)
    if math.isinf(rho):
        return torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return inv ** rho


# EDM's largest noise level (Karras et al. 2022, sec. 5). Starting from pure noise N(0, sigma_max^2 I) instead
# of the true marginal p_data * N(0, sigma_max^2 I) costs a KL of at most E|x0|^2 / (2 sigma_max^2) nats (by
# convexity), negligible for data of unit scale. VP's sigma(T) = 152 (beta_max = 20) lies far above it, and
# levels spent there are wasted.
EDM_SIGMA_MAX = 80.0


def start_sigma(sde, sigma_max: Optional[float]) -> float:
    """Noise level a sigma-space sampler starts at: min(sigma(T), sigma_max); sigma_max=None keeps sigma(T)."""
    top = float(sde.sigma(torch.tensor([sde.T], dtype=torch.float64))[0])
    if sigma_max is None:
        return top
    if not sigma_max > 0:
        raise ValueError(f"sigma_max must be positive (EDM uses 80) or None for sigma(T), got {sigma_max}")
    return min(top, float(sigma_max))


def prior_noise(sde, x_T: torch.Tensor) -> torch.Tensor:
    """Unit noise z = x_T / s(T) behind a prior draw (x_T = m(T) x0 + s(T) z with m(T) x0 negligible), to be
    rescaled to the level a sampler starts at."""
    return x_T / float(sde.marginal_std(torch.tensor([sde.T], dtype=torch.float64))[0])


def progress(iterable: Iterable, enabled: bool, desc: str) -> Iterable:
    """tqdm progress bar when enabled, the bare iterable otherwise."""
    return tqdm(iterable, desc=desc, leave=False) if enabled else iterable


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
