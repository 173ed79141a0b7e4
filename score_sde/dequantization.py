"""Dequantizers: how a continuous density p becomes a code length for discrete data.

Data k on L levels sit at bin centres y_k in model space (bin width w = data_scale / L). Any density p
defines P(k) = int_bin(k) p, and for any proposal q(v | k) supported in the bin (Jensen; Theis et al. 2016)
    -log P(k) <= E_q[-log p(v) + log q(v | k)].
uniform: v uniform in the bin, log q = d log(1/w), the classic protocol (score_sde_pytorch's bits/dim);
    tight when the model was trained on uniformly dequantized data.
truncated_normal (Zheng et al. 2023, "Improved techniques for maximum likelihood estimation for diffusion
    ODEs", sec. 5): v = y_k + sigma z with z ~ N(0, I) truncated to the bin, and p(v) = m^d p_t(m v), the
    ODE's density at the time t with sigma(t) = sigma (m = m(t)): the forward process's own noise at t, so a
    model trained on the undequantized centres is scored on the distribution it was trained on. The end
    levels' bins extend to -+inf (the bins partition the whole space, as in DDPM's discretized decoder,
    Ho et al. 2020 eq. 13), so the forward noise's mass beyond the data range is not lost.
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


def uniform_draws(shape: torch.Size, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """U[0, 1) float64 draws where the generator lives (a CPU generator drives CUDA data reproducibly),
    moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float64).to(device)


def truncation(sigma: float, width: float) -> float:
    """tau = (w/2) / sigma: the bin's half-width in units of the proposal's standard deviation."""
    if sigma is None or not sigma > 0:
        raise ValueError(f"the truncated-normal dequantizer needs sigma > 0, got {sigma!r}")
    return 0.5 * width / sigma


def bin_limits(y: torch.Tensor, sigma: float, num_levels: int, data_scale: float, data_shift: float
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Standardized limits (lo, hi) of each centre's bin, (y -+ w/2 - y)/sigma = -+tau, float64; the end
    levels' bins extend to -+inf, as in the discretized decoder (Ho et al. 2020, eq. 13)."""
    tau = truncation(sigma, bin_width(num_levels, data_scale))
    y = y.double()
    lowest, highest = likelihood.end_levels(y, num_levels=num_levels, data_scale=data_scale, data_shift=data_shift)
    lo = torch.full_like(y, -tau).masked_fill(lowest, -math.inf)
    return lo, torch.full_like(y, tau).masked_fill(highest, math.inf)


def truncated_normal(y: torch.Tensor, sigma: float, lo: torch.Tensor, hi: torch.Tensor,
                     generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(v, log q(v | k) [B]): v = y + sigma z, z ~ N(0, 1) truncated to [lo, hi] per element (lo < 0 < hi).

    z's sign is drawn with the masses on each side of 0, then |z| by inverting the normal CDF on the lower
    half, u ~ U(Phi(-limit), 1/2], which stays accurate in float64 for any limit (Phi(-limit) > 0 up to ~37).
    log q = sum_i [log phi(z_i) - log sigma - log Z_i],  Z_i = Phi(hi_i) - Phi(lo_i)."""
    cdf_lo, cdf_hi = torch.special.ndtr(lo), torch.special.ndtr(-hi)     # the masses cut off below / above
    mass = 1.0 - cdf_lo - cdf_hi
    positive = uniform_draws(y.shape, generator, y.device) * mass < 0.5 - cdf_hi
    cut = torch.where(positive, cdf_hi, cdf_lo)
    magnitude = -torch.special.ndtri(cut + (0.5 - cut) * (1.0 - uniform_draws(y.shape, generator, y.device)))
    z = torch.where(positive, magnitude, -magnitude)
    log_z = likelihood.log_normal_interval(lo, hi)                      # the normal mass inside the bin
    log_q = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - math.log(sigma) - log_z
    return (y.double() + sigma * z).to(y.dtype), log_q.flatten(1).sum(dim=1)


def ode_start_time(sde, sigma: float) -> float:
    """The time t with sigma(t) = sigma at which the truncated-normal dequantizer starts the ODE."""
    t = float(sde.t_from_sigma(torch.tensor(sigma, dtype=torch.float64)))
    if not 0.0 < t < sde.T:
        lo, hi = sde.sigma(torch.tensor([1e-12, sde.T], dtype=torch.float64)).tolist()
        raise ValueError(f"dequantization sigma {sigma!r} is outside this SDE's noise levels ({lo:.3g}, {hi:.3g}); "
                         f"choose a sigma inside them")
    return t


def discrete_nll(sde, score_fn, y: torch.Tensor, *, num_levels: int, data_scale: float, data_shift: float,
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
        u = uniform_draws(centres.shape, generator, y.device) - 0.5
        x, offset = (centres.double() + width * u).to(y.dtype), uniform_log_q(dim, num_levels, data_scale)
    else:
        lo, hi = bin_limits(centres, sigma, num_levels, data_scale, data_shift)
        t = ode_start_time(sde, sigma)
        m = float(sde.mean_coeff(torch.tensor(t, dtype=torch.float64)))
        v, log_q = truncated_normal(centres, sigma, lo.to(y.device), hi.to(y.device), generator)
        x, offset = m * v, log_q.to(y.device) - dim * math.log(m)     # p(v) = m^d p_t(m v)
        likelihood_options = {**likelihood_options, "eps": t}
    nll_fn = likelihood.get_likelihood_fn(sde, **likelihood_options)
    nll, _, nfe = nll_fn(score_fn, x, generator=generator)
    return likelihood.importance_weighted_nll((nll.double() + offset).reshape(-1, draws)), nfe
