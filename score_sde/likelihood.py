"""Exact log-likelihood through the probability-flow ODE, and its conversion to bits per dimension.

Instantaneous change of variables (Chen et al. 2018, theorem 1; Song et al. 2021, eq. 39): along the
probability-flow ODE dx/dt = f~(x, t) = f - 1/2 g^2 score (eq. 13),
    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.
The state [x, int div] is integrated jointly from the data at t = eps up to T; log p_T is replaced by
the prior's log-density (sde.prior_logp: N(0, I) for VP/subVP, N(0, sigma_max^2 I) for VE). The
divergence is exact (the d basis vectors pushed through one vmapped backward pass, chunked) or
Hutchinson's unbiased estimate E_v[v^T (df~/dx) v] with probes v fixed along the trajectory (Grathwohl
et al. 2019, FFJORD). The default protocol is score_sde_pytorch's: eps = 1e-5, RK45, rtol = atol = 1e-5.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from .sampling.common import CountingScore, ScoreFn, batch_time, check_positive_int
from .sampling.ode import (SCIPY_METHODS, TORCHDIFFEQ_ADAPTIVE, BACKENDS, check_solver, integrate,
                           pf_drift, resolve_eps)
from .utils import randn

TRACES = ("exact", "hutchinson-rademacher", "hutchinson-gaussian", "hutchinson-orthogonal")
DEFAULT_EPS = 1e-5   # score_sde_pytorch's likelihood_fn integrates from t = 1e-5 (its published bits/dim)
NllFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, int]]


# ----------------------------------------------------------------------------- divergence
DEFAULT_CHUNK_ELEMENTS = 2 ** 22   # cotangent elements per batched backward pass (bounds memory)


def _batched_vjp(f: torch.Tensor, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """cotangents [k, *f.shape] -> [k, *x.shape]: k vector-Jacobian products in ONE vmapped backward pass."""
    (grads,) = torch.autograd.grad(f, x, grad_outputs=cotangents, retain_graph=True, is_grads_batched=True)
    return grads


def _chunk(chunk_size: Optional[int], f: torch.Tensor, total: int) -> int:
    """How many basis vectors / probes go through one backward pass."""
    if chunk_size is not None:
        return min(chunk_size, total)
    return max(1, min(total, DEFAULT_CHUNK_ELEMENTS // max(1, f.numel())))


def exact_divergence(f: torch.Tensor, x: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
    """sum_i d f_i / d x_i per sample, exactly: the basis vectors e_i go through vmapped backward passes,
    `chunk_size` of them at a time (default: as many as fit DEFAULT_CHUNK_ELEMENTS cotangent entries).

    Exact when samples do not interact (true of any per-sample network in eval mode).
    """
    b, d = f.shape[0], f[0].numel()
    step = _chunk(chunk_size, f, d)
    div = torch.zeros(b, dtype=f.dtype, device=f.device)
    for start in range(0, d, step):
        idx = torch.arange(start, min(start + step, d), device=f.device)
        basis = torch.zeros(len(idx), b, d, dtype=f.dtype, device=f.device)
        basis[torch.arange(len(idx)), :, idx] = 1.0                     # e_i for every sample
        grads = _batched_vjp(f, x, basis.reshape((len(idx),) + tuple(f.shape))).reshape(len(idx), b, d)
        div = div + grads[torch.arange(len(idx)), :, idx].sum(dim=0)   # (e_i^T J)_i = J_ii
    return div


def hutchinson_divergence(f: torch.Tensor, x: torch.Tensor, probes: torch.Tensor,
                          chunk_size: Optional[int] = None) -> torch.Tensor:
    """mean over probes v of v^T (df/dx) v per sample (Hutchinson 1989): unbiased for E v v^T = I.

    probes: [k, *x.shape]; they go through vmapped backward passes, `chunk_size` at a time.
    """
    step = _chunk(chunk_size, f, probes.shape[0])
    est = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for start in range(0, probes.shape[0], step):
        v = probes[start:start + step]
        est = est + (_batched_vjp(f, x, v) * v).reshape(v.shape[0], f.shape[0], -1).sum(dim=(0, 2))
    return est / probes.shape[0]


def draw_probes(trace: str, num_probes: int, x: torch.Tensor,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """num_probes probes shaped like x, drawn with `generator`: Rademacher (+-1), standard Gaussian, or
    orthogonal (sqrt(d) times orthonormal directions from the QR of a Gaussian d x k matrix, per sample:
    each probe has E v v^T = I, and together they never repeat a direction; k = d gives the exact trace)."""
    shape = (num_probes,) + tuple(x.shape)
    if trace == "hutchinson-gaussian":
        return randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    if trace == "hutchinson-orthogonal":
        b, d = x.shape[0], x[0].numel()
        if num_probes > d:
            raise ValueError(f"hutchinson-orthogonal takes at most d={d} probes (d gives the exact trace), "
                             f"got num_probes={num_probes}")
        g = randn((b, d, num_probes), generator=generator, device=x.device, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)   # Haar-distributed columns
        return (math.sqrt(d) * q).permute(2, 0, 1).reshape(shape).to(x.dtype)
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


def _check_options(trace: str, num_probes: int, backend: str, method: str, rtol: float, atol: float,
                   chunk_size: Optional[int]) -> None:
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; choose one of {TRACES}")
    check_positive_int("num_probes", num_probes)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    if backend not in BACKENDS:
        raise ValueError(f"unknown ODE backend {backend!r}; choose one of {BACKENDS}")
    valid = SCIPY_METHODS if backend == "scipy" else TORCHDIFFEQ_ADAPTIVE
    if method not in valid:
        raise ValueError(f"the likelihood needs an adaptive {backend} method; got {method!r}, choose one of {valid}")
    check_solver(backend, method, rtol, atol, None)


def get_likelihood_fn(sde, *, eps: Optional[float] = DEFAULT_EPS, trace: str = "exact", num_probes: int = 1,
                      backend: str = "scipy", method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5,
                      chunk_size: Optional[int] = None) -> NllFn:
    """Build nll_fn(score_fn, x, generator=None) -> (nll [B] in nats per sample, z = x(T), nfe).

    The protocol of score_sde_pytorch's likelihood_fn (its published bits/dim): x, the data in model
    space (after the data scaler), is the state at t = eps = 1e-5, integrated up to T with scipy's RK45
    at rtol = atol = 1e-5. eps=None uses sde.sampling_eps (1e-3 for VP/subVP: about 0.5 nats per point
    too optimistic on a 64-D image-like mixture, see docs/likelihood.md). nll is -log p_eps(x) of the
    model's probability-flow ODE, summed over dimensions (see bits_per_dim).
    trace: "exact" (all d basis vectors through vmapped backward passes, `chunk_size` at a time) or
    Hutchinson with `num_probes` Rademacher, Gaussian or orthogonal probes per sample, drawn once with
    `generator` and fixed over the trajectory. nfe counts score evaluations.
    score_fn must be differentiable in x (no .detach() / no_grad inside).
    """
    _check_options(trace, num_probes, backend, method, rtol, atol, chunk_size)
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
                div = (exact_divergence(f, y, chunk_size) if probes is None
                       else hutchinson_divergence(f, y, probes, chunk_size))
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
