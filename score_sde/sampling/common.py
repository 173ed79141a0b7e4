"""Pieces every sampler shares: NFE counting, the initial state, time and sigma grids, progress."""
from __future__ import annotations

import math
import warnings
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


# ----------------------------------------------------------------------------- eps and the endpoint
def resolve_eps(sde, eps: Optional[float]) -> float:
    """eps=None means sde.sampling_eps; otherwise it must lie in (0, T)."""
    if eps is None:
        return float(sde.sampling_eps)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must be a number in (0, T={sde.T}), got {eps!r}; None uses sde.sampling_eps")
    return float(eps)


# EDM's smallest noise level (Karras et al. 2022, sec. 5 and table 1): VP and sub-VP reach sigma = 0 only at
# t = 0, where a network's score is undefined; stopping at 0.002 and returning the denoised estimate there
# leaves a bias of order sigma_min^2 on the data variances, below 1e-5.
EDM_SIGMA_MIN = 0.002


def end_sigma(sde, eps: Optional[float]) -> float:
    """Lowest noise level a sigma-space sampler evaluates the network at, before its final denoising step.

    eps=None: the SDE's own floor sigma(0) (VE: its sigma_min) or EDM's 0.002, whichever is larger.
    eps given (a time in (0, T)): sigma(eps), as in earlier versions and score_sde_pytorch.
    """
    if eps is None:
        return max(EDM_SIGMA_MIN, float(sde.sigma(torch.zeros(1, dtype=torch.float64))[0]))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must be a time in (0, T={sde.T}), got {eps!r}; None stops at sigma = "
                         f"max({EDM_SIGMA_MIN}, sigma(0))")
    return float(sde.sigma(torch.tensor([float(eps)], dtype=torch.float64))[0])


def end_time(sde, eps: Optional[float]) -> float:
    """Time a time-space sampler (ode) integrates down to: eps, or t(end_sigma) for eps=None."""
    if eps is not None:
        end_sigma(sde, eps)  # validates
        return float(eps)
    sigma = end_sigma(sde, None)
    return max(float(sde.t_from_sigma(torch.tensor([sigma], dtype=torch.float64))[0]), 1e-12 * sde.T)


def check_continuous(score_fn, sampler: str) -> None:
    """Warn when a continuous-time sampler gets a discrete-level network's score (score_fn.continuous is
    False): that network rounds every sigma to its nearest level, which is silently wrong below level 0."""
    if not getattr(score_fn, "continuous", True):
        warnings.warn(f"sampler {sampler!r} evaluates the score between the SDE's discrete levels, but this "
                      f"score_fn belongs to a discrete-level network that rounds t to its nearest level; "
                      f"use ddpm, ddim or ald (which walk the levels) for such networks", stacklevel=3)
