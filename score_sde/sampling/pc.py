"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3 and appendix G), predictors and
correctors chosen by their score_sde_pytorch names.

Time grid: steps + 1 times evenly spaced from T down to eps. At each grid time t_k (k < steps) the
CORRECTOR runs first (n_steps_each Langevin steps at t_k), THEN the PREDICTOR moves from t_k to t_{k+1}
-- score_sde_pytorch's order. noise_removal returns the last predictor step's mean, i.e. without its noise.

Predictors (x at t -> x at t' < t):
  euler_maruyama      x' = x - [f - g^2 score] |dt| + g sqrt(|dt|) z            (reverse SDE eq. 6, Euler-Maruyama)
  reverse_diffusion   x' = (2 - a) x + v score + sqrt(v) z                      (eq. 46)
  ancestral_sampling  x' = (x + v score)/a + sqrt(v s'^2/s^2) z                 (eq. 47, generic DDPM/SMLD step)
  none                x' = x
where x_t = a x_t' + sqrt(v) z is the exact forward transition between the two grid times (a = m/m',
v = m^2 (sigma^2 - sigma'^2)); at steps = N this is the DDPM/SMLD discretization that eq. 46-47 use. With
probability_flow the predictor integrates the probability-flow ODE (eq. 13): drift f - g^2/2 score, no noise.
Correctors (x at t -> x at t):
  langevin  eps_k = 2 alpha (snr ||z|| / ||score||)^2, x <- x + eps_k score + sqrt(2 eps_k) z   (Alg. 4-5)
  ald       eps_k = 2 alpha (snr s(t))^2, same update  (annealed Langevin, score_sde_pytorch's `ald`)
  none
alpha is the squared mean ratio of one discrete level, (m_i/m_{i-1})^2 = 1 - beta_i for VP/sub-VP, 1 for VE.
Norms are batch means, as in score_sde_pytorch, so the Langevin step size couples the samples of a batch.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch

from ..utils import batch_broadcast, randn_like
from . import algebra, common
from .registry import register_sampler

Pair = Tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- predictors
def _coeffs(sde, t: float, t_next: float) -> Tuple[float, float, float, float]:
    """(a, v, s, s') of the forward transition x_t = a x_t' + sqrt(v) z between grid times t' < t."""
    tt = torch.tensor([t, t_next], dtype=torch.float64)
    m, s = sde.mean_coeff(tt), sde.marginal_std(tt)
    a, v = algebra.transition(float(m[0]), float(s[0]), float(m[1]), float(s[1]))
    return a, v, float(s[0]), float(s[1])


def euler_maruyama(sde, score_fn, x, t: float, t_next: float, generator, probability_flow: bool) -> Pair:
    dt = t_next - t  # negative: reverse time
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, common.batch_time(t, x))
    x_mean = x + drift * dt  # Euler-Maruyama on the reverse SDE (eq. 6) or PF ODE (eq. 13)
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(diffusion, x) * (-dt) ** 0.5 * randn_like(x, generator), x_mean


def reverse_diffusion(sde, score_fn, x, t: float, t_next: float, generator, probability_flow: bool) -> Pair:
    a, v, _, _ = _coeffs(sde, t, t_next)
    score = score_fn(x, common.batch_time(t, x))
    x_mean = (2 - a) * x + (0.5 if probability_flow else 1.0) * v * score  # eq. 46: x - f + G^2 score
    if probability_flow:
        return x_mean, x_mean
    return x_mean + v ** 0.5 * randn_like(x, generator), x_mean


def ancestral_sampling(sde, score_fn, x, t: float, t_next: float, generator, probability_flow: bool) -> Pair:
    a, v, s, s_next = _coeffs(sde, t, t_next)
    score = score_fn(x, common.batch_time(t, x))
    x_mean = algebra.ancestral_mean(x, score, a, v)  # eq. 47
    return x_mean + (v * s_next ** 2 / s ** 2) ** 0.5 * randn_like(x, generator), x_mean


def no_predictor(sde, score_fn, x, t, t_next, generator, probability_flow) -> Pair:
    return x, x


PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion,
              "ancestral_sampling": ancestral_sampling, "none": no_predictor}


# ----------------------------------------------------------------------------- correctors
def level_alpha(sde, t: float) -> float:
    """(m_i/m_{i-1})^2 at the discrete level i of t: alpha_i = 1 - beta_i for VP/sub-VP, 1 for VE."""
    i = int(sde.discrete_index(torch.tensor([t], dtype=torch.float64)))
    idx = torch.tensor([i, max(i - 1, 0)])
    m, _ = sde.discrete_marginal(idx)
    return float(m[0] ** 2) if i == 0 else float((m[0] / m[1]) ** 2)


def _batch_norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=-1).mean()


def langevin(sde, score_fn, x, t: float, generator, snr: float, n_steps: int) -> Pair:
    alpha, tt, x_mean = level_alpha(sde, t), common.batch_time(t, x), x
    for _ in range(n_steps):
        score, z = score_fn(x, tt), randn_like(x, generator)
        step = 2 * alpha * (snr * _batch_norm(z) / _batch_norm(score)) ** 2  # Alg. 5 step size
        x_mean = x + step * score
        x = x_mean + torch.sqrt(2 * step) * z
    return x, x_mean


def annealed_langevin(sde, score_fn, x, t: float, generator, snr: float, n_steps: int) -> Pair:
    alpha, tt, x_mean = level_alpha(sde, t), common.batch_time(t, x), x
    std = float(sde.marginal_std(torch.tensor([t], dtype=torch.float64)))
    step = 2 * alpha * (snr * std) ** 2  # Song & Ermon Alg. 1 step, alpha_i proportional to s(t)^2
    for _ in range(n_steps):
        x_mean = x + step * score_fn(x, tt)
        x = x_mean + (2 * step) ** 0.5 * randn_like(x, generator)
    return x, x_mean


def no_corrector(sde, score_fn, x, t, generator, snr, n_steps) -> Pair:
    return x, x


CORRECTORS = {"langevin": langevin, "ald": annealed_langevin, "none": no_corrector}


def _lookup(kind: str, name: str, table: dict) -> Callable:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return table[name]


# ----------------------------------------------------------------------------- sampler
@register_sampler("pc")
def pc_sampler(sde, shape: Sequence[int], *, predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_steps_each: int = 1, probability_flow: bool = False,
               noise_removal: bool = True, steps: Optional[int] = None, eps: Optional[float] = None,
               device=None, dtype: torch.dtype = torch.float32, progress: bool = False):
    """Predictor-corrector sampler; steps=None uses sde.N grid steps. NFE = steps * (1 + n_steps_each)."""
    predict, correct = _lookup("predictor", predictor, PREDICTORS), _lookup("corrector", corrector, CORRECTORS)
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector are both 'none'; choose at least one of them")
    if predictor == "ancestral_sampling" and probability_flow:
        raise ValueError("ancestral_sampling has no probability-flow form; use predictor='reverse_diffusion' "
                         "or 'euler_maruyama' with probability_flow=True")
    snr = algebra.check_positive("snr", snr)
    algebra.check_bool("noise_removal", noise_removal)
    algebra.check_bool("probability_flow", probability_flow)
    common.check_positive_int("n_steps_each", n_steps_each)
    n_steps = common.check_positive_int("steps", sde.N if steps is None else steps)
    times = [float(t) for t in common.uniform_times(sde.T, algebra.resolve_eps(sde, eps), n_steps)]

    def sampler(score_fn, generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None,
                callback=None):
        score_fn = common.CountingScore(score_fn)
        x = common.initial_state(sde, shape, x_T, generator, device=device, dtype=dtype)
        x_mean = x
        for k in common.progress(range(n_steps), progress, "pc"):
            x, x_mean = correct(sde, score_fn, x, times[k], generator, snr, n_steps_each)
            x, x_mean = predict(sde, score_fn, x, times[k], times[k + 1], generator, probability_flow)
            if callback is not None:
                callback(i=k, t=times[k + 1], x=x, x0=None)
        return (x_mean if noise_removal else x), score_fn.nfe

    return sampler
