"""Dequantizers against exact answers: the truncated normal's samples and density against scipy, and the
discrete bound through the ODE against the exact bin probabilities of a discrete distribution whose noised
marginals (and so its exact score) are a Gaussian mixture with point-mass components."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from score_sde import dequantization as dq
from score_sde import likelihood, sde_lib
from score_sde.toy import GaussianMixture

LEVELS, SCALE = 5, 2.0                      # centres -0.8, -0.4, 0, 0.4, 0.8; bin width 0.4
WIDTH = dq.bin_width(LEVELS, SCALE)


def test_truncated_normal_stays_in_the_bin_and_matches_scipy():
    """An end level (-0.8: its bin is open below) and an inner one (0.4), at tau = 2."""
    y = torch.tensor([[-0.8, 0.4]], dtype=torch.float64).repeat(20000, 1)
    sigma = 0.1
    lo, hi = dq.bin_limits(y, sigma, LEVELS, SCALE, -1.0)
    assert torch.equal(lo[0], torch.tensor([-math.inf, -2.0], dtype=torch.float64)) and (hi == 2.0).all()
    v, log_q = dq.truncated_normal(y, sigma, lo, hi, torch.Generator().manual_seed(0))
    z = ((v - y) / sigma).numpy()
    assert z[:, 0].max() <= 2.0 + 1e-12 and z[:, 0].min() < -2.5 and np.abs(z[:, 1]).max() <= 2.0 + 1e-12
    limits = [(-np.inf, 2.0), (-2.0, 2.0)]
    expect = sum(stats.truncnorm.logpdf(z[:, i], *limits[i]) for i in range(2)) - 2 * math.log(sigma)
    np.testing.assert_allclose(log_q.numpy(), expect, rtol=0, atol=1e-10)
    for i in range(2):                                 # the draws follow each truncated normal
        assert stats.kstest(z[:, i], stats.truncnorm(*limits[i]).cdf).pvalue > 1e-3


def test_truncated_normal_is_accurate_far_into_the_tail():
    y = torch.zeros(4000, 1, dtype=torch.float64)
    lo, hi = dq.bin_limits(y, 1e-3, 21, 2.0, -1.0)      # 0 is the middle level: tau = 47.6 on both sides
    v, log_q = dq.truncated_normal(y, 1e-3, lo, hi, torch.Generator().manual_seed(1))
    z = v / 1e-3
    assert torch.isfinite(log_q).all() and abs(float(z.std()) - 1.0) < 0.05
    torch.testing.assert_close(log_q, torch.tensor(stats.norm.logpdf(z.numpy()).sum(1) - math.log(1e-3)))


def _discrete_model(sde):
    """P(k) on six points of the 5x5 grid of centres; the noised data are a mixture of N(m y_k, s^2 I)."""
    grid = torch.tensor([[-0.8, -0.8], [-0.4, 0.0], [0.0, 0.0], [0.4, 0.8], [0.8, 0.4], [0.0, 0.4]], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.2, 0.15, 0.15, 0.1, 0.1], dtype=torch.float64)
    mix = GaussianMixture(weights, grid, torch.zeros(6, 2, 2, dtype=torch.float64))
    return grid, weights, mix, mix.score_fn(sde)


@pytest.mark.parametrize("sde_cls, sigma", [(sde_lib.VPSDE, 0.1), (sde_lib.VPSDE, 0.2 / 3),
                                            (sde_lib.subVPSDE, 0.1), (sde_lib.VESDE, 0.1)])
def test_truncated_normal_bound_of_the_exact_model_is_the_bin_probability_up_to_the_cut_mass(sde_cls, sigma):
    sde = sde_cls()
    grid, weights, mix, score_fn = _discrete_model(sde)
    y = grid.repeat(8, 1)
    nats, _ = dq.discrete_nll(sde, score_fn, y, num_levels=LEVELS, data_scale=SCALE, data_shift=-1.0,
                              dequantizer="truncated_normal",
                              sigma=sigma, generator=torch.Generator().manual_seed(2), trace="exact")
    exact = -torch.log(weights).repeat(8)
    lo, hi = dq.bin_limits(y, sigma, LEVELS, SCALE, -1.0)
    cut = -torch.log1p(-(torch.special.ndtr(lo) + torch.special.ndtr(-hi))).sum(1)   # N(y_k, sigma^2) beyond the bin
    assert (nats - exact).mean() > -1e-3                    # a bound: never below -log P(k) on average
    assert abs(float((nats - exact - cut).mean())) < 0.02 + 0.2 * float(cut.mean())


def test_truncated_normal_bound_equals_the_exact_density_at_the_start_time():
    """Per draw: -log p(v) + log q(v|k) with p(v) = m^d p_t(m v) read off the mixture (the Jacobian
    d log m is -0.086 nats at sigma = 0.3), up to the prior N(0, I) standing in for p_T (~2e-3 nats)."""
    sde = sde_lib.VPSDE()
    grid, weights, mix, score_fn = _discrete_model(sde)
    sigma = 0.3
    nats, _ = dq.discrete_nll(sde, score_fn, grid, num_levels=LEVELS, data_scale=SCALE, data_shift=-1.0,
                              dequantizer="truncated_normal",
                              sigma=sigma, generator=torch.Generator().manual_seed(3), trace="exact")
    v, log_q = dq.truncated_normal(grid, sigma, *dq.bin_limits(grid, sigma, LEVELS, SCALE, -1.0),
                                   torch.Generator().manual_seed(3))
    t = dq.ode_start_time(sde, sigma)
    m, s = (f(torch.tensor(t, dtype=torch.float64)) for f in (sde.mean_coeff, sde.marginal_std))
    expect = -(mix.log_prob_t(m * v, m, s) + 2 * torch.log(m)) + log_q
    torch.testing.assert_close(nats, expect, rtol=0, atol=5e-3)
    ode, _, _ = likelihood.get_likelihood_fn(sde, eps=t, trace="exact")(score_fn, m * v)
    torch.testing.assert_close(nats, ode - 2 * torch.log(m) + log_q, rtol=0, atol=1e-12)


def test_more_draws_tighten_the_uniform_bound_towards_the_bin_probability():
    sde = sde_lib.VPSDE()
    grid, weights, mix, score_fn = _discrete_model(sde)
    # a smooth model: the data's own mixture, each point mass widened to N(y_k, 0.15^2 I)
    wide = GaussianMixture(weights, grid, 0.15 ** 2 * torch.eye(2, dtype=torch.float64).repeat(6, 1, 1))
    exact = -torch.log(torch.stack([_bin_probability(wide, g) for g in grid]))
    y = grid.repeat(50, 1)
    means = []
    for draws in (1, 8):
        nats, _ = dq.discrete_nll(sde, wide.score_fn(sde), y, num_levels=LEVELS, data_scale=SCALE, data_shift=-1.0,
                                  draws=draws,
                                  generator=torch.Generator().manual_seed(4), trace="exact")
        gap = nats - exact.repeat(50)
        assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap))      # a bound on -log P(k)
        means.append(float(gap.mean()))
    assert means[1] < 0.5 * means[0]


def _bin_probability(mix: GaussianMixture, centre: torch.Tensor) -> torch.Tensor:
    """Exact mass of the bin around `centre` under a mixture of isotropic Gaussians."""
    lo, hi = centre - WIDTH / 2, centre + WIDTH / 2
    sd = mix.eigvals.sqrt()                                     # [K, d]
    cdf = lambda a: torch.special.ndtr((a - mix.means) / sd)   # noqa: E731
    return (mix.weights * (cdf(hi) - cdf(lo)).prod(dim=1)).sum()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(dequantizer="gaussian"), "unknown dequantizer"),
    (dict(draws=0), "draws must be a positive integer"),
    (dict(dequantizer="truncated_normal", sigma=0.0), "sigma > 0"),
    (dict(dequantizer="truncated_normal", sigma=500.0), "outside this SDE's noise levels"),
])
def test_bad_dequantizer_options_raise_one_line_errors(kwargs, fragment):
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match=fragment):
        dq.discrete_nll(sde, lambda x, t: -x, torch.zeros(2, 2), num_levels=LEVELS, data_scale=SCALE, data_shift=-1.0,
                        **kwargs)
