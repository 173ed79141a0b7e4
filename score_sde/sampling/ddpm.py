"""Ancestral sampling (Ho et al. 2020, Algorithm 2) on the SDE's discrete levels, generic in (m_i, s_i).

For VP this is DDPM; for VE it is the SMLD ancestral analogue x + (s_i^2 - s_{i-1}^2) score + noise; sub-VP
works through the same algebra. The chain walks levels N-1 .. 0 and then takes a last, noise-free step to the
data (m, s) = (1, 0) -- Algorithm 2's "z = 0 if t = 1" -- which equals Tweedie denoising at level 0, so no
separate noise_removal option exists. With `steps` < N it walks a subsequence of levels (the respaced
chain of Nichol & Dhariwal 2021, section 4): the transition between two kept levels is again Gaussian.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..utils import randn_like
from . import algebra, common
from .registry import register_sampler

VARIANCES = ("beta", "beta_tilde")


@register_sampler("ddpm")
def ddpm_sampler(sde, shape: Sequence[int], *, variance: str = "beta", steps: Optional[int] = None,
                 skip_type: str = "uniform", eps: Optional[float] = None, device=None,
                 dtype: torch.dtype = torch.float32, progress: bool = False):
    """Ancestral sampler; variance "beta" (sigma^2 = forward step variance) or "beta_tilde" (posterior's)."""
    algebra.check_choice("variance", variance, VARIANCES)
    n_steps = algebra.resolve_steps(sde, steps)
    levels = algebra.level_sequence(sde.N, n_steps, skip_type)
    times = algebra.level_times(sde, algebra.resolve_eps(sde, eps))[levels]
    ms, ss = algebra.level_coeffs(sde, levels)

    def sampler(score_fn, generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None,
                callback=None):
        score_fn = common.CountingScore(score_fn)
        x = common.initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        for k in common.progress(range(len(levels)), progress, "ddpm"):
            t = float(times[k])
            score = score_fn(x, common.batch_time(t, x))
            a, v = algebra.transition(ms[k], ss[k], ms[k + 1], ss[k + 1])
            x0 = algebra.tweedie(x, score, ms[k], ss[k])
            x = algebra.ancestral_mean(x, score, a, v)  # Ho et al. Alg. 2 line 4, generic in (m, s)
            var = v if variance == "beta" else v * ss[k + 1] ** 2 / ss[k] ** 2
            if ss[k + 1] > 0:  # the last step to the data adds no noise (Alg. 2: z = 0 if t = 1)
                x = x + var ** 0.5 * randn_like(x, generator)
            if callback is not None:
                callback(i=k, t=t, x=x, x0=x0)
        return x, score_fn.nfe

    return sampler

