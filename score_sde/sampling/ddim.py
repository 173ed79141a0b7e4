"""DDIM (Song, Meng & Ermon 2021) over a subsequence of the SDE's discrete levels, generic in (m, s).

One step from level (m_t, s_t) to (m_s, s_s), with x0 = (x + s_t^2 score)/m_t and eps = -s_t score:
    x_s = m_s x0 + sqrt(s_s^2 - sigma^2) eps + sigma z,   sigma^2 = eta^2 beta_tilde      (DDIM eqs. 12 and 16)
eta = 0 is deterministic (a discretization of the probability-flow ODE); eta = 1 is ancestral (DDPM with
beta_tilde). For VE, eta = 0 reads x_s = x0 + (s_s/s_t)(x_t - x0). The last step goes to the data
(m, s) = (1, 0), i.e. returns x0 predicted at level 0. `ddim_invert` runs the eta = 0 map backwards.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..utils import randn_like
from . import algebra, common
from .registry import register_sampler


def _check_eta(eta: float) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: ancestral), got {eta!r}")
    return float(eta)


def _plan(sde, steps: int, skip_type: str, eps: Optional[float]):
    """Levels (descending), their score-evaluation times and (m, s) lists ending with the data (1, 0)."""
    levels = algebra.level_sequence(sde.N, algebra.resolve_steps(sde, steps), skip_type)
    times = algebra.level_times(sde, algebra.resolve_eps(sde, eps))[levels]
    ms, ss = algebra.level_coeffs(sde, levels)
    return levels, times, ms, ss


@register_sampler("ddim")
def ddim_sampler(sde, shape: Sequence[int], *, steps: int = 50, eta: float = 0.0, skip_type: str = "uniform",
                 eps: Optional[float] = None, device=None, dtype: torch.dtype = torch.float32,
                 progress: bool = False):
    """DDIM sampler with `steps` score evaluations (levels chosen by skip_type) and stochasticity eta."""
    eta = _check_eta(eta)
    levels, times, ms, ss = _plan(sde, steps, skip_type, eps)

    def sampler(score_fn, generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None,
                callback=None):
        score_fn = common.CountingScore(score_fn)
        x = common.initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        for k in common.progress(range(len(levels)), progress, "ddim"):
            t = float(times[k])
            score = score_fn(x, common.batch_time(t, x))
            x0, noise = algebra.tweedie(x, score, ms[k], ss[k]), -ss[k] * score
            sigma2 = eta ** 2 * algebra.posterior_variance(ms[k], ss[k], ms[k + 1], ss[k + 1])  # eq. 16
            x = ms[k + 1] * x0 + max(ss[k + 1] ** 2 - sigma2, 0.0) ** 0.5 * noise  # eq. 12
            if sigma2 > 0:
                x = x + sigma2 ** 0.5 * randn_like(x, generator)
            if callback is not None:
                callback(i=k, t=t, x=x, x0=x0)
        return x, score_fn.nfe

    return sampler


def ddim_invert(sde, x0: torch.Tensor, score_fn, steps: int = 50, skip_type: str = "uniform",
                eps: Optional[float] = None, progress: bool = False) -> Tuple[torch.Tensor, int]:
    """Encode data into the latent at level N-1 with the eta = 0 DDIM map run upwards; returns (z, nfe).

    Each step uses the score at the lower level (the current point), as eq. 12 read from s to t:
    x_t = m_t x0_hat(x_s) + s_t eps_hat(x_s). The first step leaves the data (s = 0, where eps is undefined)
    using the score of level 0 at m_0 x0. Decoding with ddim(steps, skip_type, eta=0) inverts it up to
    the discretization error, which falls with steps. Uses `steps` score evaluations, like the sampler.
    """
    levels, times, ms, ss = _plan(sde, steps, skip_type, eps)
    if not torch.is_tensor(x0) or x0.dim() < 2:
        raise ValueError(f"x0 must be a tensor of shape (batch, *data_shape), got "
                         f"{tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__}")
    score_fn = common.CountingScore(score_fn)
    order = list(range(len(levels)))[::-1]  # index k of the sampler's lists, lowest level first
    x = x0
    for j in common.progress(range(len(order)), progress, "ddim_invert"):
        k = order[j]
        if j == 0:  # from the data to the lowest level: score of level 0 at the scaled data
            point = ms[k] * x
            x = point - ss[k] ** 2 * score_fn(point, common.batch_time(float(times[k]), x))  # m x0 + s eps_hat
            continue
        k_prev = order[j - 1]
        score = score_fn(x, common.batch_time(float(times[k_prev]), x))
        x0_hat, noise = algebra.tweedie(x, score, ms[k_prev], ss[k_prev]), -ss[k_prev] * score
        x = ms[k] * x0_hat + ss[k] * noise  # eq. 12 with eta = 0, from level k_prev up to level k
    return x, score_fn.nfe
