"""Dequantizers: how a continuous density p becomes a code length for discrete data.

Data k on L levels sit at bin centres y_k in model space (bin width w = data_scale / L). Any density p
defines P(k) = int_bin(k) p, and for any proposal q(v | k) supported in the bin (Jensen; Theis et al. 2016)
    -log P(k) <= E_q[-log p(v) + log q(v | k)].
uniform: v uniform in the bin, log q = d log(1/w), the classic protocol (score_sde_pytorch's bits/dim);
    tight when the model was trained on uniformly dequantized data.
truncated_normal (Zheng et al. 2023, "Improved techniques for maximum likelihood estimation for diffusion
    ODEs", sec. 5): v = y_k + sigma z with z ~ N(0, I) truncated to the bin, and p(v) = m^d p_t(m v), the
    ODE's density at the time t with sigma(t) = sigma (m = m(t)): the forward process's own noise at t, so a
    model trained on the undequantized centres is scored on the distribution it was trained on.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import likelihood

DEQUANTIZERS = ("uniform", "truncated_normal")


def bin_width(num_levels: int, data_scale: float) -> float:
    """Width of one level's bin in model space: [0, 1] split into L bins, scaled by data_scale."""
    return data_scale / num_levels


def uniform_log_q(dim: int, num_levels: int, data_scale: float) -> float:
    """log q(v | k) of the uniform dequantizer: the bin's log inverse volume, d log(L / data_scale)."""
    return dim * math.log(num_levels / data_scale)


def truncation(sigma: float, width: float) -> float:
    """tau = (w/2) / sigma: the bin's half-width in units of the proposal's standard deviation."""
    if sigma is None or not sigma > 0:
        raise ValueError(f"the truncated-normal dequantizer needs sigma > 0, got {sigma!r}")
    return 0.5 * width / sigma


def truncated_normal(y: torch.Tensor, sigma: float, width: float,
                     generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(v, log q(v | k) [B]): v = y + sigma z, z ~ N(0, 1) truncated to [-tau, tau] per dimension.

    z is drawn by inverting the normal CDF on the lower half, u ~ U(Phi(-tau), 1/2), with a random sign,
    which stays accurate in float64 for any tau (Phi(-tau) > 0 up to tau ~ 37).
    log q = sum_i [log phi(z_i) - log sigma - log Z],  Z = Phi(tau) - Phi(-tau) = erf(tau / sqrt 2)."""
    tau = truncation(sigma, width)
    shape, dev = y.shape, y.device
    lo = float(torch.special.ndtr(torch.tensor(-tau, dtype=torch.float64)))
    u = lo + (0.5 - lo) * torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)
    sign = torch.randint(0, 2, shape, generator=generator, device=dev).to(torch.float64) * 2 - 1
    z = sign * torch.special.ndtri(u).abs()
    log_z = math.log(math.erf(tau / math.sqrt(2.0)))
    log_q = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - math.log(sigma) - log_z).flatten(1).sum(dim=1)
    return (y.double() + sigma * z).to(y.dtype), log_q


def ode_start_time(sde, sigma: float) -> float:
    """The time t with sigma(t) = sigma at which the truncated-normal dequantizer starts the ODE."""
    t = float(sde.t_from_sigma(torch.tensor(sigma, dtype=torch.float64)))
    if not 0.0 < t < sde.T:
        lo, hi = sde.sigma(torch.tensor([1e-12, sde.T], dtype=torch.float64)).tolist()
        raise ValueError(f"dequantization sigma {sigma!r} is outside this SDE's noise levels ({lo:.3g}, {hi:.3g}); "
                         f"choose a sigma inside them")
    return t


def discrete_nll(sde, score_fn, y: torch.Tensor, *, num_levels: int, data_scale: float,
                 dequantizer: str = "uniform", sigma: Optional[float] = None, draws: int = 1,
                 generator: Optional[torch.Generator] = None, **likelihood_options) -> Tuple[torch.Tensor, int]:
    """(-log P(k) bound [B] in nats, nfe) for the bin centres y [B, ...] (model space) of discrete data.

    Each datum is dequantized `draws` times and the draws' bounds -log p(v_j) + log q(v_j | k) are combined
    into the importance-weighted bound -log (1/K sum_j p(v_j) / q(v_j | k)) (Burda et al. 2016; K = 1: the
    plain bound). likelihood_options are get_likelihood_fn's; the truncated-normal dequantizer replaces
    their eps by the time of `sigma`. Bits/dim: nats / (d ln 2)."""
    if dequantizer not in DEQUANTIZERS:
        raise ValueError(f"unknown dequantizer {dequantizer!r}; choose one of {DEQUANTIZERS}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    width, dim = bin_width(num_levels, data_scale), y[0].numel()
    centres = y.repeat_interleave(draws, dim=0)
    if dequantizer == "uniform":
        u = torch.rand(centres.shape, generator=generator, device=y.device, dtype=torch.float64) - 0.5
        x, offset = (centres.double() + width * u).to(y.dtype), uniform_log_q(dim, num_levels, data_scale)
    else:
        truncation(sigma, width)
        t = ode_start_time(sde, sigma)
        m = float(sde.mean_coeff(torch.tensor(t, dtype=torch.float64)))
        v, log_q = truncated_normal(centres, sigma, width, generator)
        x, offset = m * v, log_q.to(y.device) - dim * math.log(m)     # p(v) = m^d p_t(m v)
        likelihood_options = {**likelihood_options, "eps": t}
    nll_fn = likelihood.get_likelihood_fn(sde, **likelihood_options)
    nll, _, nfe = nll_fn(score_fn, x, generator=generator)
    return likelihood.importance_weighted_nll((nll.double() + offset).reshape(-1, draws)), nfe
