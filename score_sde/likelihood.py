"""Exact log-likelihood through the probability-flow ODE, and its conversion to bits per dimension.

Instantaneous change of variables (Chen et al. 2018, theorem 1; Song et al. 2021, eq. 39): along the
probability-flow ODE dx/dt = f~(x, t) = f - 1/2 g^2 score (eq. 13),
    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.
The state [x, int div] is integrated jointly from the data at t = eps up to T; log p_T is replaced by
the prior's log-density (sde.prior_logp: N(0, I) for VP/subVP, N(0, sigma_max^2 I) for VE). The
divergence is exact (one autograd pass per dimension) or Hutchinson's unbiased estimate
E_v[v^T (df~/dx) v] with probes v fixed along the trajectory (Grathwohl et al. 2019, FFJORD).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from .sampling.common import CountingScore, ScoreFn, batch_time, check_positive_int
from .sampling.ode import (SCIPY_METHODS, TORCHDIFFEQ_ADAPTIVE, BACKENDS, check_solver, integrate,
                           pf_drift, resolve_eps)
from .utils import randn

TRACES = ("exact", "hutchinson-rademacher", "hutchinson-gaussian")
NllFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, int]]


# ----------------------------------------------------------------------------- divergence
def exact_divergence(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d f_i / d x_i per sample: one backward pass per dimension, batched over samples.

    Exact when samples do not interact (true of any per-sample network in eval mode).
    """
    flat = f.reshape(f.shape[0], -1)
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        div = div + grad.reshape(f.shape[0], -1)[:, i]
    return div


def hutchinson_divergence(f: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """mean over probes v of v^T (df/dx) v per sample (Hutchinson 1989): unbiased for E v v^T = I."""
    est = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for v in probes:
        (vjp,) = torch.autograd.grad((f * v).sum(), x, retain_graph=True)
        est = est + (vjp * v).reshape(f.shape[0], -1).sum(dim=1)
    return est / probes.shape[0]


def draw_probes(trace: str, num_probes: int, x: torch.Tensor,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """num_probes probes shaped like x: Rademacher (+-1) or standard Gaussian, drawn with `generator`."""
    shape = (num_probes,) + tuple(x.shape)
    if trace == "hutchinson-gaussian":
        return randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    where = generator.device if generator is not None else x.device
    bits = torch.randint(0, 2, shape, generator=generator, device=where)
    return (2 * bits - 1).to(device=x.device, dtype=x.dtype)


# ----------------------------------------------------------------------------- likelihood
def _checked_score(score_fn: CountingScore) -> ScoreFn:
    """score_fn that insists on a differentiable output: a detached score makes the divergence wrong."""
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = score_fn(x, t)
        if not out.requires_grad:
            raise ValueError("score_fn returned a tensor detached from its input x; the likelihood "
                             "differentiates the score, so avoid .detach(), torch.no_grad() or numpy inside it")
        return out
    return fn


def _check_options(trace: str, num_probes: int, backend: str, method: str, rtol: float, atol: float) -> None:
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; choose one of {TRACES}")
    check_positive_int("num_probes", num_probes)
    if backend not in BACKENDS:
        raise ValueError(f"unknown ODE backend {backend!r}; choose one of {BACKENDS}")
    valid = SCIPY_METHODS if backend == "scipy" else TORCHDIFFEQ_ADAPTIVE
    if method not in valid:
        raise ValueError(f"the likelihood needs an adaptive {backend} method; got {method!r}, choose one of {valid}")
    check_solver(backend, method, rtol, atol, None)


def get_likelihood_fn(sde, *, trace: str = "exact", num_probes: int = 1, backend: str = "scipy",
                      method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5,
                      eps: Optional[float] = None) -> NllFn:
    """Build nll_fn(score_fn, x, generator=None) -> (nll [B] in nats per sample, z = x(T), nfe).

    x is the data in model space (after the data scaler), taken as the state at time eps; nll is
    -log p_eps(x) of the model's probability-flow ODE, summed over dimensions (see bits_per_dim).
    trace: "exact" (d backward passes per evaluation, for small d) or Hutchinson with `num_probes`
    Rademacher or Gaussian probes per sample, drawn once with `generator` and fixed over the trajectory.
    nfe counts score evaluations (each also costs d or num_probes backward passes).
    score_fn must be differentiable in x (no .detach() / no_grad inside).
    """
    _check_options(trace, num_probes, backend, method, rtol, atol)
    eps = resolve_eps(sde, eps)

    def nll_fn(score_fn: ScoreFn, x: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
        counted = CountingScore(score_fn)
        drift = pf_drift(sde, _checked_score(counted))
        probes = None if trace == "exact" else draw_probes(trace, num_probes, x, generator)

        def ode_fn(t: float, state: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                y = state[0].detach().requires_grad_(True)
                f = drift(y, batch_time(t, y))
                div = exact_divergence(f, y) if probes is None else hutchinson_divergence(f, y, probes)
            return f.detach(), div.detach()

        start = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        z, delta = integrate(ode_fn, start, eps, sde.T, backend=backend, solver=method, rtol=rtol, atol=atol)
        logp = sde.prior_logp(z) + delta                      # eq. 39
        return -logp, z, counted.nfe

    return nll_fn


# ----------------------------------------------------------------------------- bits per dimension
def bits_per_dim(nll_nats: Union[torch.Tensor, float], x_shape_or_dim: Union[int, Sequence[int]], *,
                 num_levels: int = 256, data_scale: float = 2.0) -> Union[torch.Tensor, float]:
    """Bits per dimension of discrete data from the nll (nats per sample) of the model's input y.

    Data k in {0..L-1}^d are dequantized to x = (k + u)/L in [0, 1]^d and the model sees
    y = data_scale * x + shift. Then -log p_x(x) = nll_y - d log(data_scale), and since the L^-d cube
    around k has probability >= exp(E_u log p_x) / L^d, the discrete bound is
        bpd = (nll_y - d log(data_scale) + d log L) / (d ln 2).
    x_shape_or_dim: the number of dimensions d, or the shape of ONE datum (e.g. (3, 32, 32)).
    CIFAR-10 centered to [-1, 1] (data_scale 2, L = 256): bpd = nll/(d ln 2) + 7 (score_sde's offset 7);
    uncentered [0, 1] data (data_scale 1): + 8.
    """
    d = x_shape_or_dim if isinstance(x_shape_or_dim, int) else math.prod(int(s) for s in x_shape_or_dim)
    if isinstance(d, bool) or d < 1:
        raise ValueError(f"x_shape_or_dim must be a positive dimension or the shape of one datum, got {x_shape_or_dim!r}")
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2 (256 for 8-bit images), got {num_levels!r}")
    if not data_scale > 0:
        raise ValueError(f"data_scale must be positive (2.0 for data centered to [-1, 1], 1.0 for [0, 1]), "
                         f"got {data_scale!r}")
    return (nll_nats - d * math.log(data_scale) + d * math.log(num_levels)) / (d * math.log(2))
