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
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from . import parameterization
from .sampling.common import CountingScore, ScoreFn, batch_time, check_positive_int
from .sampling.ode import (SCIPY_METHODS, TORCHDIFFEQ_ADAPTIVE, BACKENDS, check_solver, integrate,
                           integrate_at, pf_drift, resolve_eps)
from .utils import randn

TRACES = ("exact", "hutchinson-rademacher", "hutchinson-gaussian", "hutchinson-orthogonal")
DEFAULT_EPS = 1e-5   # score_sde_pytorch's likelihood_fn integrates from t = 1e-5 (its published bits/dim)
NllFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, int]]


# ----------------------------------------------------------------------------- divergence
DEFAULT_CHUNK_ELEMENTS = 2 ** 22   # cotangent elements per batched backward pass (bounds memory)
MAX_NODE_ROWS = 1024               # two-pass quadrature: rows (nodes x batch) per forward pass beyond one node


def _batched_vjp(f: torch.Tensor, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """cotangents [k, *f.shape] -> [k, *x.shape]: k vector-Jacobian products in ONE vmapped backward pass.

    Falls back to one backward pass per cotangent where an operation has no vmap rule (e.g. some
    convolution / GroupNorm backward kernels on CPU), so every differentiable score_fn works."""
    if cotangents.shape[0] > 1:
        try:
            (grads,) = torch.autograd.grad(f, x, grad_outputs=cotangents, retain_graph=True,
                                           is_grads_batched=True)
            return grads
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
    return torch.stack([torch.autograd.grad(f, x, grad_outputs=v, retain_graph=True)[0] for v in cotangents])


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
                   chunk_size: Optional[int], nodes: Optional[int] = None) -> None:
    if nodes is not None:
        check_positive_int("nodes", nodes)
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
                      chunk_size: Optional[int] = None, nodes: Optional[int] = None) -> NllFn:
    """Build nll_fn(score_fn, x, generator=None) -> (nll [B] in nats per sample, z = x(T), nfe).

    The protocol of score_sde_pytorch's likelihood_fn (its published bits/dim): x, the data in model
    space (after the data scaler), is the state at t = eps = 1e-5, integrated up to T with scipy's RK45
    at rtol = atol = 1e-5. eps=None uses sde.sampling_eps (1e-3 for VP/subVP: about 0.5 nats per point
    too optimistic on a 64-D image-like mixture, see docs/likelihood.md). nll is -log p_eps(x) of the
    model's probability-flow ODE, summed over dimensions (see bits_per_dim).
    trace: "exact" (all d basis vectors through vmapped backward passes, `chunk_size` at a time) or
    Hutchinson with `num_probes` Rademacher, Gaussian or orthogonal probes per sample, drawn once with
    `generator` and fixed over the trajectory. nfe counts score evaluations.
    nodes=K: the two-pass quadrature instead (`quadrature_nll`): the ODE for x alone, then the divergence
    at K midpoints in log sigma, all in batched passes, with fresh probes per node.
    score_fn must be differentiable in x (no .detach() / no_grad inside).
    """
    _check_options(trace, num_probes, backend, method, rtol, atol, chunk_size, nodes)
    eps = resolve_eps(sde, eps)
    if nodes is not None:
        return lambda score_fn, x, generator=None: quadrature_nll(
            sde, score_fn, x, nodes=nodes, eps=eps, trace=trace, num_probes=num_probes, generator=generator,
            backend=backend, method=method, rtol=rtol, atol=atol, chunk_size=chunk_size)

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


# ----------------------------------------------------------------------------- two-pass quadrature
def time_of_log_sigma(sde, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t, dt/du) at u = log sigma(t), float64, for any SDE with sde.t_from_sigma."""
    u = u.detach().to(torch.float64).requires_grad_(True)
    t = sde.t_from_sigma(torch.exp(u))
    (dt_du,) = torch.autograd.grad(t.sum(), u)
    return t.detach(), dt_du


def log_sigma_range(sde, eps: float) -> Tuple[float, float]:
    """[u(eps), u(T)] with u = log sigma(t)."""
    lo, hi = torch.log(sde.sigma(torch.tensor([eps, sde.T], dtype=torch.float64))).tolist()
    return lo, hi


def log_sigma_midpoints(sde, eps: float, nodes: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u_k, t_k, w_k), float64: the midpoint rule in u = log sigma(t) on [u(eps), u(T)] with K = `nodes`
    equal cells, so that int_eps^T h(t) dt ~ sum_k w_k h(t_k) with w_k = du * dt/du(u_k).

    In u the divergence of the probability-flow drift is a sum of smooth steps, one per data direction of
    variance lambda, centred at sigma^2 = lambda; u spreads them evenly where t would crowd them at t -> eps."""
    lo, hi = log_sigma_range(sde, eps)
    u = lo + (hi - lo) * (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
    t, dt_du = time_of_log_sigma(sde, u)
    return u, t, (hi - lo) / nodes * dt_du


def node_probes(trace: str, nodes: int, num_probes: int, x: torch.Tensor,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """[num_probes, nodes, *x.shape] probes, fresh at every node. Orthogonal probes run through the
    (node, probe) slots in groups of d: within a group no direction repeats, so the part of the Jacobian
    that the group's nodes share is traced exactly and only its change along the group is sampled."""
    if trace != "hutchinson-orthogonal":
        return draw_probes(trace, nodes * num_probes, x, generator).reshape(nodes, num_probes, *x.shape).transpose(0, 1)
    d, slots = x[0].numel(), nodes * num_probes
    groups = [draw_probes(trace, min(d, slots - start), x, generator) for start in range(0, slots, d)]
    return torch.cat(groups).reshape(nodes, num_probes, *x.shape).transpose(0, 1)


def _node_divergences(drift, xs: torch.Tensor, t: torch.Tensor, probes: Optional[torch.Tensor],
                      chunk_size: Optional[int]) -> torch.Tensor:
    """[K, B] divergences of the drift at the K nodes' states xs [K, B, ...], in batched passes of
    whole nodes: as many as fit DEFAULT_CHUNK_ELEMENTS probe/basis entries and MAX_NODE_ROWS rows (the
    network's activations grow with the rows), but always one node, as the joint ODE evaluates B rows."""
    k, b, d = xs.shape[0], xs.shape[1], xs[0, 0].numel()
    per_node = b * d * (d if probes is None else probes.shape[0])
    step = max(1, min(DEFAULT_CHUNK_ELEMENTS // per_node, MAX_NODE_ROWS // b))
    out = []
    for start in range(0, k, step):
        sl = slice(start, min(start + step, k))
        with torch.enable_grad():
            y = xs[sl].reshape(-1, *xs.shape[2:]).detach().requires_grad_(True)
            f = drift(y, t[sl].to(y).repeat_interleave(b))
            if probes is None:
                div = exact_divergence(f, y, chunk_size)
            else:
                div = hutchinson_divergence(f, y, probes[:, sl].reshape(probes.shape[0], *y.shape), chunk_size)
        out.append(div.detach().reshape(-1, b))
    return torch.cat(out)


def quadrature_nll(sde, score_fn: ScoreFn, x: torch.Tensor, *, nodes: int, eps: float = DEFAULT_EPS,
                   trace: str = "exact", num_probes: int = 1, generator: Optional[torch.Generator] = None,
                   backend: str = "scipy", method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5,
                   chunk_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(nll [B] nats, z = x(T), nfe): eq. 39 in two passes.

    1. The probability-flow ODE for x alone (no gradients), solved in u = log sigma (not t: near t = eps
       the small-variance directions move fast in t and an error there is amplified up to T, where the
       prior reads z; in u they move smoothly), its states read off the dense output at the K = `nodes`
       midpoints of u (log_sigma_midpoints).
    2. int_eps^T div f~ dt = sum_k w_k div f~(x(t_k), t_k), every node in batched backward passes: exact
       divergences, or Hutchinson with probes drawn afresh per node (node_probes), so the probe errors of
       the K nodes average out instead of adding up along one fixed probe as in the joint ODE.
    nfe counts score evaluations: the ODE's calls plus one batched call per chunk of nodes.
    """
    counted = CountingScore(score_fn)
    u_k, t_k, w_k = log_sigma_midpoints(sde, eps, nodes)
    plain = pf_drift(sde, counted)

    def ode_fn(u: float, state: Tuple[torch.Tensor]) -> Tuple[torch.Tensor]:
        t, dt_du = time_of_log_sigma(sde, torch.tensor(u, dtype=torch.float64))
        with torch.no_grad():   # dx/du = f~(x, t(u)) dt/du
            return (plain(state[0], batch_time(float(t), state[0])) * float(dt_du),)

    (xs,), (z,) = integrate_at(ode_fn, (x.detach(),), *log_sigma_range(sde, eps), u_k, backend=backend,
                               solver=method, rtol=rtol, atol=atol)
    drift = pf_drift(sde, _checked_score(counted))
    probes = None if trace == "exact" else node_probes(trace, nodes, num_probes, x, generator)
    div = _node_divergences(drift, xs, t_k, probes, chunk_size)
    logp = sde.prior_logp(z) + (w_k.to(div)[:, None] * div).sum(dim=0)     # eq. 39
    return -logp, z, counted.nfe


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


def importance_weighted_nll(nll: torch.Tensor) -> torch.Tensor:
    """[B, K] bounds -log p(v_j) + log q(v_j | k) of K dequantizations v_j of each datum -> [B] nats:
    -log (1/K sum_j p(v_j) / q(v_j | k)).

    log P(k) = log E_q p(v)/q(v|k) >= E log (1/K sum_j p(v_j)/q(v_j|k)) >= E log p(v)/q(v|k): the
    importance-weighted bound (Burda et al. 2016, thm. 1) with the dequantizer q as proposal (uniform: log q
    is the constant d log(L / data_scale); dequantization.discrete_nll adds it); it tightens as K grows and
    is the plain bound at K = 1. The inputs must be accurate: noise of variance v in them lowers the result
    by up to v/2 (Jensen), so use the exact trace or the two-pass quadrature."""
    if nll.dim() != 2 or nll.shape[1] < 1:
        raise ValueError(f"importance_weighted_nll takes [batch, K] nlls, got shape {tuple(nll.shape)}")
    return -(torch.logsumexp(-nll, dim=1) - math.log(nll.shape[1]))


# ----------------------------------------------------------------------------- DDPM variational bound
VLB_DECODERS = ("discretized", "gaussian")
VLB_VARIANCES = ("beta", "beta_tilde", "learned")
VLB_PREDICTIONS = ("score", "eps", "x0", "v", "mu")
ModelFn = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]


def ddpm_chain(sde) -> Dict[str, torch.Tensor]:
    """float64 tables of the discrete VP chain x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z, i = 0..N-1
    (Ho et al.'s x_{i+1}): betas, alphas, abar, abar_prev (abar_{-1} = 1) and the posterior variance
    beta~_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i (eq. 7), with log beta~ clipped at i = 0 to beta~_1."""
    betas = getattr(sde, "discrete_betas", None)
    if betas is None or sde.N < 2:
        raise ValueError(f"the DDPM bound needs a discrete VP chain with N >= 2 levels (sde_lib.VPSDE); "
                         f"got {sde!r}")
    m, s = sde.discrete_marginal(torch.tensor([0, sde.N - 1]))
    if not torch.allclose(m ** 2 + s ** 2, torch.ones(2, dtype=m.dtype)):
        raise ValueError(f"the DDPM bound needs a variance-preserving chain (m^2 + s^2 = 1); {sde!r} is not - "
                         "use sde_lib.VPSDE")
    betas = betas.double()
    abar = sde.alphas_cumprod.double()
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = (1 - abar_prev) / (1 - abar) * betas
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    return {"betas": betas, "alphas": 1 - betas, "abar": abar, "abar_prev": abar_prev,
            "post_var": post_var, "post_log_var": post_log_var}


def reverse_log_variance(chain: Dict[str, torch.Tensor], i: Union[int, torch.Tensor], variance: str,
                         v: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log sigma_i^2 of p(x_{i-1} | x_i) (Ho et al. section 3.2): 'beta' (beta_i, also for the decoder at
    i = 0, as in the paper; Ho's code puts beta~_1 there), 'beta_tilde' (beta~_i, clipped to beta~_1 at
    i = 0 where beta~_0 = 0) or 'learned': v log beta_i + (1 - v) log beta~_i (Nichol & Dhariwal eq. 15).
    i: a level or a [B] tensor of levels (then the result broadcasts against [B, ...] data)."""
    log_tilde, log_beta = chain["post_log_var"][i], torch.log(chain["betas"][i])
    if variance == "beta_tilde":
        return log_tilde
    if variance == "beta":
        return log_beta
    log_tilde, log_beta = (_per_sample(c, v) for c in (log_tilde, log_beta))
    return v * log_beta + (1 - v) * log_tilde


def _per_sample(coeff: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A level's coefficient (0-d) or per-sample coefficients ([B]) broadcast against `like`, in its dtype."""
    coeff = coeff.to(device=like.device, dtype=like.dtype)
    return coeff.reshape(-1, *([1] * (like.dim() - 1))) if coeff.dim() == 1 else coeff


def eps_from_prediction(pred: torch.Tensor, x: torch.Tensor, chain: Dict[str, torch.Tensor], i: int,
                        prediction: str) -> torch.Tensor:
    """eps implied at level i by a network predicting the score, eps, x0, v or the reverse mean mu.

    mu = (x_i - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i) (Ho et al. eq. 11) is inverted for 'mu'."""
    abar, beta, alpha = (float(chain[k][i]) for k in ("abar", "betas", "alphas"))
    m, s = math.sqrt(abar), math.sqrt(1 - abar)
    if prediction == "mu":
        return (x - math.sqrt(alpha) * pred) * s / beta
    m, s = (torch.tensor(c, dtype=x.dtype, device=x.device) for c in (m, s))
    return parameterization.convert(pred, x, m, s, prediction, "eps")


def _gaussian_kl(mean_q: torch.Tensor, log_var_q: Union[float, torch.Tensor], mean_p: torch.Tensor,
                 log_var_p: Union[float, torch.Tensor]) -> torch.Tensor:
    """KL(N(mean_q, e^log_var_q) || N(mean_p, e^log_var_p)) per dimension."""
    log_var_q, log_var_p = (torch.as_tensor(c, dtype=mean_q.dtype, device=mean_q.device)
                            for c in (log_var_q, log_var_p))
    return 0.5 * (log_var_p - log_var_q + torch.exp(log_var_q - log_var_p)
                  + (mean_q - mean_p) ** 2 / torch.exp(log_var_p) - 1)


def log_normal_interval(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for standardized bounds lo < hi (+-inf allowed), without cancellation:
    intervals above 0 are mirrored below it, where both log-CDFs are accurate."""
    flip = lo > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-16))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: Union[float, torch.Tensor], *,
                                  num_levels: int, data_scale: float, data_shift: float) -> torch.Tensor:
    """log P(x) per dimension of N(mean, e^log_var) integrated over x's bin (Ho et al. eq. 13).

    The toolkit's data convention: level k is y = data_scale (k + 1/2)/L + data_shift (datasets put k at
    (k + 1/2)/L in [0, 1]; the scaler maps x to data_scale x + data_shift), so its bin is the dequantization
    cube [data_shift + data_scale k/L, data_shift + data_scale (k+1)/L] that bits_per_dim bounds too;
    the end bins extend to -+inf. (Ho et al. put k at k/127.5 - 1 with bins of width 2/255.)"""
    width = data_scale / num_levels
    std = torch.exp(0.5 * torch.as_tensor(log_var, dtype=x.dtype, device=x.device))
    lowest, highest = end_levels(x, num_levels=num_levels, data_scale=data_scale, data_shift=data_shift)
    lo = torch.where(lowest, torch.full_like(x, -math.inf), (x - 0.5 * width - mean) / std)
    hi = torch.where(highest, torch.full_like(x, math.inf), (x + 0.5 * width - mean) / std)
    return log_normal_interval(lo, hi)


def end_levels(x: torch.Tensor, *, num_levels: int, data_scale: float, data_shift: float
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Masks of the bin centres x at the lowest and highest level: their bins extend to -inf and +inf
    (Ho et al. eq. 13), so the bins partition the line and no probability falls outside the data range."""
    width = data_scale / num_levels
    return x < data_shift + width, x > data_shift + data_scale - width


def _check_vlb_options(decoder: str, variance: str, prediction: str, num_levels: int, data_scale: float) -> None:
    for name, value, valid in (("decoder", decoder, VLB_DECODERS), ("variance", variance, VLB_VARIANCES),
                               ("prediction", prediction, VLB_PREDICTIONS)):
        if value not in valid:
            raise ValueError(f"unknown {name} {value!r}; choose one of {valid}")
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2 (256 for 8-bit images), got {num_levels!r}")
    if not data_scale > 0:
        raise ValueError(f"data_scale must be positive (2.0 for data centered to [-1, 1]), got {data_scale!r}")


def _model_output(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor,
                  variance: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    out = model_fn(x, t)
    if variance == "learned":
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("variance='learned' needs score_fn(x, t) -> (prediction, v), v the interpolation "
                             "between log beta and log beta~ (see split_learned_variance)")
        return out
    if isinstance(out, tuple):
        raise ValueError(f"score_fn returned a tuple (a learned-variance network?); pass variance='learned' "
                         f"instead of {variance!r}")
    return out, None


def ddpm_vlb(sde, score_fn: ModelFn, x: torch.Tensor, *, decoder: str = "discretized", variance: str = "beta",
             num_levels: int = 256, data_scale: float = 2.0, data_shift: float = -1.0, prediction: str = "score",
             generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """DDPM's variational bound on -log p(x_0) in nats per sample (Ho et al. 2020, eq. 5):
        "prior"     L_T     = KL(q(x_T | x_0) || N(0, I))
        "diffusion" sum L_t = sum_{i=1}^{N-1} KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)), eq. 6-7
        "decoder"   L_0     = -log p(x_0 | x_1): discretized Gaussian (eq. 13; x_0 = data_scale (k + 1/2)/L
                              + data_shift, see discretized_gaussian_log_prob) or a Gaussian density
        "total"     their sum; bits/dim = total / (d ln 2) with the discretized decoder, and
                    bits_per_dim(total, ...) with the Gaussian one on dequantized data.
    Each L_t is a one-sample estimate at x_i ~ q(x_i | x_0) (drawn with `generator`); N network calls.
    score_fn(x_i, t_i) (t_i = sde.discrete_times()[i]) returns what `prediction` names for the chain's level i
    - the score, eps, x0, v or the reverse mean mu - and, with variance="learned", a pair (prediction, v).
    """
    _check_vlb_options(decoder, variance, prediction, num_levels, data_scale)
    chain = ddpm_chain(sde)
    times = sde.discrete_times()
    flat = lambda per_dim: per_dim.reshape(x.shape[0], -1).sum(dim=1)  # noqa: E731
    x0 = x.detach()
    abar_last = float(chain["abar"][-1])
    prior = flat(_gaussian_kl(math.sqrt(abar_last) * x0, math.log1p(-abar_last), torch.zeros_like(x0), 0.0))
    diffusion = torch.zeros_like(prior)
    dec = torch.zeros_like(prior)
    with torch.no_grad():
        for i in range(sde.N):
            abar = float(chain["abar"][i])
            x_i = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * randn(x0.shape, generator=generator,
                                                                      device=x0.device, dtype=x0.dtype)
            pred, v = _model_output(score_fn, x_i, torch.full((x0.shape[0],), float(times[i])).to(x0), variance)
            eps_hat = eps_from_prediction(pred.to(x0.dtype), x_i, chain, i, prediction)
            term = vlb_term(chain, torch.full((x0.shape[0],), i), x0, x_i, eps_hat, variance=variance, v=v,
                            decoder=decoder, num_levels=num_levels, data_scale=data_scale, data_shift=data_shift)
            if i == 0:
                dec = term
            else:
                diffusion = diffusion + term
    return {"total": prior + diffusion + dec, "prior": prior, "diffusion": diffusion, "decoder": dec}


def vlb_term(chain: Dict[str, torch.Tensor], levels: torch.Tensor, x0: torch.Tensor, x_i: torch.Tensor,
             eps_hat: torch.Tensor, *, variance: str = "learned", v: Optional[torch.Tensor] = None,
             decoder: str = "discretized", num_levels: int = 256, data_scale: float = 2.0,
             data_shift: float = -1.0) -> torch.Tensor:
    """One term of the bound per sample (nats), at per-sample levels [B] given x_i ~ q(x_i | x_0):
    L_i = KL(q(x_{i-1} | x_i, x_0) || N(mu(x_i, eps_hat), sigma_i^2)) for i >= 1 (eqs. 6-7, 11), and the
    decoder's -log p(x_0 | x_i) at i = 0 (eq. 13)."""
    levels = levels.to(torch.long).cpu()
    coeff = {k: _per_sample(chain[k][levels], x0) for k in ("abar", "abar_prev", "betas", "alphas", "post_var")}
    abar, abar_prev, beta, alpha = coeff["abar"], coeff["abar_prev"], coeff["betas"], coeff["alphas"]
    mean = (x_i - beta / torch.sqrt(1 - abar) * eps_hat) / torch.sqrt(alpha)            # eq. 11
    log_var = _per_sample(reverse_log_variance(chain, levels, variance), x0) if v is None else \
        reverse_log_variance(chain, levels, variance, v)
    post_mean = (torch.sqrt(abar_prev) * beta * x0 + torch.sqrt(alpha) * (1 - abar_prev) * x_i) / (1 - abar)
    post_var = coeff["post_var"]
    post_var = torch.where(post_var > 0, post_var, torch.ones_like(post_var))  # beta~_0 = 0: level 0 is the decoder
    kl = _gaussian_kl(post_mean, torch.log(post_var), mean, log_var)
    first = (levels == 0).to(x0.device)
    if first.any():
        dec = -_decoder_log_prob(x0, mean, log_var, decoder, num_levels, data_scale, data_shift)
        kl = torch.where(first.reshape(-1, *([1] * (x0.dim() - 1))).expand_as(kl), dec, kl)
    return kl.reshape(x0.shape[0], -1).sum(dim=1)


def _decoder_log_prob(x0: torch.Tensor, mean: torch.Tensor, log_var, decoder: str, num_levels: int,
                      data_scale: float, data_shift: float) -> torch.Tensor:
    if decoder == "gaussian":
        log_var = torch.as_tensor(log_var, dtype=x0.dtype, device=x0.device)
        return -0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean) ** 2 / torch.exp(log_var))
    if x0.min() < data_shift or x0.max() > data_shift + data_scale:
        raise ValueError(f"x lies outside [data_shift, data_shift + data_scale] = [{data_shift}, {data_shift + data_scale}]; "
                         "the discretized decoder needs data_scale (k + 1/2)/num_levels + data_shift (set both "
                         "as the data scaler does: 2, -1 for centered data, 1, 0 for [0, 1])")
    return discretized_gaussian_log_prob(x0, mean, log_var, num_levels=num_levels, data_scale=data_scale,
                                         data_shift=data_shift)


def split_learned_variance(out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A learned-variance network's 2C output channels -> (prediction [C channels], v in [0, 1]).

    The last C channels are the raw interpolation r in [-1, 1] (improved DDPM): v = (r + 1) / 2."""
    if out.dim() < 2 or out.shape[1] % 2:
        raise ValueError(f"a learned-variance output needs an even number of channels (prediction, variance), "
                         f"got shape {tuple(out.shape)}")
    pred, raw = out.chunk(2, dim=1)
    return pred, (raw + 1) / 2
