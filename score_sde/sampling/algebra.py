"""Step algebra shared by the discrete-level samplers (ddpm, ddim, ald) and the PC predictors.

Everything is written for a generic Gaussian forward process x = m x_0 + s z, so one formula serves
VP (DDPM), VE (SMLD) and sub-VP. Between two noise levels "from" (m_f, s_f) and "to" (m_t, s_t) with
sigma = s/m increasing from "to" to "from":
    forward transition  x_from = a x_to + sqrt(v) z,   a = m_f/m_t,   v = m_f^2 (sigma_f^2 - sigma_t^2)
    posterior q(x_to | x_from, x_0) variance  beta_tilde = v s_t^2 / s_f^2     (Ho et al. 2020, eq. 7)
    Tweedie  x0_hat = (x + s^2 score) / m,    eps_hat = -s score
The level grid is the SDE's: level i in 0..N-1 at time t_i with (m_i, s_i) = sde.discrete_marginal(i).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .common import resolve_eps  # noqa: F401  (re-exported: eps handling lives in common)

SKIP_TYPES = ("uniform", "quadratic")


# ----------------------------------------------------------------------------- option checks
def check_choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_bool(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def resolve_steps(sde, steps: Optional[int]) -> int:
    """steps=None means all N levels; otherwise 1 <= steps <= N."""
    if steps is None:
        return sde.N
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= sde.N:
        raise ValueError(f"steps must be an integer in [1, N={sde.N}] (the SDE's number of discrete levels), "
                         f"got {steps!r}; build the SDE with a larger N for more steps")
    return steps


# ----------------------------------------------------------------------------- level grids
def level_sequence(N: int, steps: int, skip_type: str = "uniform") -> torch.Tensor:
    """Descending levels from N-1 to 0 (a subsequence of size <= steps; DDIM section 4.2 / appendix D.2).

    "uniform": evenly spaced levels; "quadratic": levels (N-1) u^2 for u evenly spaced, denser near the data.
    Quadratic rounding can merge neighbouring levels when steps is close to N; duplicates are dropped.
    """
    check_choice("skip_type", skip_type, SKIP_TYPES)
    u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    if steps == 1:
        u = torch.ones(1, dtype=torch.float64)
    ramp = u if skip_type == "uniform" else u ** 2
    levels = torch.round(ramp * (N - 1)).long()
    return torch.unique_consecutive(levels)


def level_times(sde, eps: float) -> torch.Tensor:
    """Times (float64 [N]) at which score_fn is evaluated for each level: t_i = sde.discrete_times()[i].

    Level 0 sits at t = 0, where s(0) = 0 for VP/sub-VP and a continuous-time network's score is undefined;
    it is evaluated at min(eps, 0.4 t_1) instead, which still rounds to level 0 (sde.discrete_index).
    """
    t = sde.discrete_times().clone()
    if sde.N > 1:
        t[0] = min(eps, 0.4 * float(t[1]))
    return t


def level_coeffs(sde, levels: torch.Tensor) -> Tuple[List[float], List[float]]:
    """(m_i, s_i) of the given levels as python floats (float64 precision), followed by the data (1, 0)."""
    m, s = sde.discrete_marginal(levels)
    return [float(v) for v in m] + [1.0], [float(v) for v in s] + [0.0]


# ----------------------------------------------------------------------------- one-step algebra
def transition(m_from: float, s_from: float, m_to: float, s_to: float) -> Tuple[float, float]:
    """Forward transition x_from = a x_to + sqrt(v) z between two levels: returns (a, v)."""
    a = m_from / m_to
    sig_from, sig_to = s_from / m_from, s_to / m_to
    return a, max(m_from ** 2 * (sig_from ** 2 - sig_to ** 2), 0.0)


def posterior_variance(m_from: float, s_from: float, m_to: float, s_to: float) -> float:
    """beta_tilde = v s_to^2 / s_from^2, the variance of q(x_to | x_from, x_0) (Ho et al. eq. 7)."""
    _, v = transition(m_from, s_from, m_to, s_to)
    return v * s_to ** 2 / s_from ** 2


def tweedie(x: torch.Tensor, score: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """x0_hat = E[x_0 | x] = (x + s^2 score) / m (Tweedie's formula)."""
    return (x + s ** 2 * score) / m


def ancestral_mean(x: torch.Tensor, score: torch.Tensor, a: float, v: float) -> torch.Tensor:
    """Posterior mean with x_0 = x0_hat, simplified: (x + v score)/a (Ho et al. eq. 11; SMLD: x + v score)."""
    return (x + v * score) / a
