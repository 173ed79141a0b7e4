"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the SDE's discrete levels.

Algorithm 1 runs Langevin steps y <- y + alpha/2 grad log p + sqrt(alpha) z at each noise level sigma_i
(descending) with alpha_i = epsilon sigma_i^2 / sigma_L^2. Every SDE is a scaled VE: y = x/m has noise
sigma = s/m, and a Langevin step on y with step alpha_y is a Langevin step on x with alpha_x = m^2 alpha_y
(the score scales by 1/m, the noise by m). On x at level i this gives
    alpha_i = step_size * s_i^2 / sigma_min^2,   sigma_min = s_0/m_0 (the smallest level's sigma),
identical to Algorithm 1 for VE. noise_removal adds one Tweedie denoising step at level 0,
x0_hat = (x + s_0^2 score)/m_0 (NCSNv2's final denoising, generalized by the scale m_0).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..utils import randn_like
from . import algebra, common
from .registry import register_sampler


@register_sampler("ald")
def ald_sampler(sde, shape: Sequence[int], *, step_size: float = 2e-4, n_steps_each: int = 1,
                steps: Optional[int] = None, noise_removal: bool = True, eps: Optional[float] = None,
                device=None, dtype: torch.dtype = torch.float32, progress: bool = False):
    """Annealed Langevin over `steps` levels (None: all N), `n_steps_each` Langevin steps per level."""
    step_size = algebra.check_positive("step_size", step_size)
    common.check_positive_int("n_steps_each", n_steps_each)
    algebra.check_bool("noise_removal", noise_removal)
    levels = algebra.level_sequence(sde.N, algebra.resolve_steps(sde, steps), "uniform")
    times = algebra.level_times(sde, algebra.resolve_eps(sde, eps))[levels]
    ms, ss = algebra.level_coeffs(sde, levels)
    sigma_min = ss[-2] / ms[-2]  # the lowest level walked: level 0 (unless steps == 1)

    def sampler(score_fn, generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None,
                callback=None):
        score_fn = common.CountingScore(score_fn)
        x = common.initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        for k in common.progress(range(len(levels)), progress, "ald"):
            t = common.batch_time(float(times[k]), x)
            alpha = step_size * ss[k] ** 2 / sigma_min ** 2  # Alg. 1 line 3, mapped from y = x/m to x
            for _ in range(n_steps_each):
                x = x + 0.5 * alpha * score_fn(x, t) + alpha ** 0.5 * randn_like(x, generator)  # Alg. 1 line 6
            if callback is not None:
                callback(i=k, t=float(times[k]), x=x, x0=None)
        if noise_removal:
            x = algebra.tweedie(x, score_fn(x, t), ms[-2], ss[-2])
        return x, score_fn.nfe

    return sampler
