"""Pieces every sampler shares: NFE counting, the initial state, time and sigma grids, progress."""
from __future__ import annotations

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
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, float64."""
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / max(steps - 1, 1)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return inv ** rho


def progress(iterable: Iterable, enabled: bool, desc: str) -> Iterable:
    """tqdm progress bar when enabled, the bare iterable otherwise."""
    return tqdm(iterable, desc=desc, leave=False) if enabled else iterable


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
