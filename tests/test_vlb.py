"""DDPM variational bound (Ho et al. 2020, eq. 5) against closed forms on Gaussian data with the exact score."""
import math

import pytest
import scipy.stats
import torch

from score_sde import likelihood, sde_lib, toy


pytestmark = pytest.mark.usefixtures("one_thread")

MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
VAR = torch.tensor([0.5, 0.3, 0.2, 0.1], dtype=torch.float64) ** 2
GAUSS = toy.GaussianMixture(torch.ones(1, dtype=torch.float64), MU[None], torch.diag(VAR)[None])


def expected_terms(sde, x0, variance):
    """Closed-form E_{x_i ~ q(x_i|x0)} of every term for data N(MU, diag VAR) and the exact score.

    At level i (m, s) the exact eps-prediction is affine in x_i, and x0 - x0_hat = (s/m)(eps_hat - z), so
    E (x0 - x0_hat)^2 = (s/m)^2 (s^2 m^2 (x0 - MU)^2 + m^4 VAR^2) / (m^2 VAR + s^2)^2 per dimension;
    the model mean misses the posterior mean by c_i (x0 - x0_hat), c_i = sqrt(abar_{i-1}) beta_i / (1 - abar_i).
    """
    betas = sde.discrete_betas
    abar = sde.alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = (1 - abar_prev) / (1 - abar) * betas
    log_var = torch.log(betas) if variance == "beta" else torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    diffusion = torch.zeros(x0.shape[0], dtype=torch.float64)
    for i in range(sde.N):
        m, s = abar[i].sqrt(), (1 - abar[i]).sqrt()
        err2 = (s / m) ** 2 * (s ** 2 * m ** 2 * (x0 - MU) ** 2 + m ** 4 * VAR ** 2) / (m ** 2 * VAR + s ** 2) ** 2
        var = log_var[i].exp()
        if i == 0:
            decoder = (0.5 * (math.log(2 * math.pi) + log_var[0]) + err2 / (2 * var)).sum(1)
            continue
        c = abar_prev[i].sqrt() * betas[i] / (1 - abar[i])
        kl = 0.5 * (log_var[i] - post_var[i].log() + post_var[i] / var - 1) + c ** 2 * err2 / (2 * var)
        diffusion = diffusion + kl.sum(1)
    a = abar[-1]
    prior = (0.5 * (-torch.log1p(-a) + (1 - a) + a * x0 ** 2 - 1)).sum(1)
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": prior + diffusion + decoder}


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_every_term_matches_its_closed_form_expectation(variance):
    sde, reps = sde_lib.VPSDE(N=100), 1000
    points = GAUSS.sample(2, torch.Generator().manual_seed(0))
    x = points.repeat_interleave(reps, dim=0)
    got = likelihood.ddpm_vlb(sde, GAUSS.discrete_score_fn(sde), x, decoder="gaussian", variance=variance,
                              generator=torch.Generator().manual_seed(1))
    want = expected_terms(sde, points, variance)
    torch.testing.assert_close(got["prior"].reshape(2, reps)[:, 0], want["prior"], rtol=1e-10, atol=1e-12)
    for key in ("diffusion", "decoder", "total"):
        est = got[key].reshape(2, reps)
        se = est.std(1) / math.sqrt(reps)
        assert ((est.mean(1) - want[key]).abs() < 4 * se).all(), (key, est.mean(1), want[key], se)


def test_bound_is_above_the_exact_nll_and_tightens_with_n():
    """E over data of the closed-form bound (checked above) minus the entropy of N(MU, VAR), per dimension;
    the library's estimate at N = 1000 sits within 4 standard errors of it."""
    x0 = torch.stack([MU + VAR.sqrt(), MU - VAR.sqrt()])        # E over x0 of (x0 - MU)^2 = VAR exactly
    entropy = 0.5 * torch.log(2 * math.pi * math.e * VAR).sum()
    gaps = [float(expected_terms(sde_lib.VPSDE(N=n), x0, "beta")["total"].mean() - entropy) / 4
            for n in (100, 300, 1000)]
    assert 0 < gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.05, gaps
    sde = sde_lib.VPSDE(N=1000)
    x = GAUSS.sample(600, torch.Generator().manual_seed(2))
    gap = likelihood.ddpm_vlb(sde, GAUSS.discrete_score_fn(sde), x, decoder="gaussian",
                              generator=torch.Generator().manual_seed(3))["total"] + GAUSS.log_prob(x)
    assert abs(float(gap.mean()) / 4 - gaps[2]) < 4 * float(gap.std()) / math.sqrt(600) / 4


def point_mass(x0):
    return toy.GaussianMixture(torch.ones(1, dtype=torch.float64), x0[None], torch.zeros(1, 4, 4, dtype=torch.float64))


def test_point_mass_on_the_grid_gives_every_term_exactly():
    """Data = one grid point: the exact eps-prediction recovers x0, so the model mean IS the posterior mean,
    beta~ makes every L_t vanish, beta leaves 1/2 (log(beta/beta~) + beta~/beta - 1) per dim, and the
    discretized decoder is the N(x0, sigma_0^2) mass of x0's bin (half-width 1/L for [-1, 1] data)."""
    sde, levels = sde_lib.VPSDE(N=50), 256
    x0 = (torch.tensor([0, 255, 100, 201], dtype=torch.float64) + 0.5) * 2 / 256 - 1   # 2 (k + 1/2)/L - 1
    x = x0.expand(3, 4).clone()
    score = point_mass(x0).discrete_score_fn(sde)
    chain = likelihood.ddpm_chain(sde)
    half = 1.0 / levels
    for variance in ("beta", "beta_tilde"):
        got = likelihood.ddpm_vlb(sde, score, x, variance=variance, num_levels=levels)
        if variance == "beta_tilde":
            want_diff = 0.0
        else:
            r = chain["post_var"][1:] / chain["betas"][1:]
            want_diff = float(4 * 0.5 * (-torch.log(r) + r - 1).sum())
        std = math.exp(0.5 * likelihood.reverse_log_variance(chain, 0, variance))
        mass = torch.tensor([scipy.stats.norm.cdf(half / std)] * 2 + [1 - 2 * scipy.stats.norm.cdf(-half / std)] * 2)
        torch.testing.assert_close(got["diffusion"], torch.full((3,), want_diff, dtype=torch.float64),
                                   rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(got["decoder"], torch.full((3,), float(-mass.log().sum()),
                                                              dtype=torch.float64), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "mu"])
def test_every_prediction_type_gives_the_same_bound(prediction):
    """A network predicting eps, x0, v or the reverse mean mu (the DDPM options) is the same model."""
    sde = sde_lib.VPSDE(N=40)
    chain = likelihood.ddpm_chain(sde)
    score = GAUSS.discrete_score_fn(sde)

    def predict(x, t):
        i = int(sde.discrete_index(t)[0])
        abar, beta, alpha = (float(chain[k][i]) for k in ("abar", "betas", "alphas"))
        m, s = math.sqrt(abar), math.sqrt(1 - abar)
        eps = -s * score(x, t)
        return {"eps": eps, "x0": (x - s * eps) / m, "v": m * eps - s * (x - s * eps) / m,
                "mu": (x - beta / s * eps) / math.sqrt(alpha)}[prediction]

    x = GAUSS.sample(8, torch.Generator().manual_seed(4))
    ref = likelihood.ddpm_vlb(sde, score, x, decoder="gaussian", generator=torch.Generator().manual_seed(5))
    got = likelihood.ddpm_vlb(sde, predict, x, decoder="gaussian", prediction=prediction,
                              generator=torch.Generator().manual_seed(5))
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-9)


def test_learned_variance_interpolates_between_beta_and_beta_tilde():
    sde = sde_lib.VPSDE(N=40)
    score = GAUSS.discrete_score_fn(sde)
    x = GAUSS.sample(8, torch.Generator().manual_seed(6))
    for v, fixed in ((1.0, "beta"), (0.0, "beta_tilde")):
        learned = lambda y, t: (score(y, t), torch.full_like(y, v))  # noqa: E731
        got = likelihood.ddpm_vlb(sde, learned, x, variance="learned", decoder="gaussian",
                                  generator=torch.Generator().manual_seed(7))
        ref = likelihood.ddpm_vlb(sde, score, x, variance=fixed, decoder="gaussian",
                                  generator=torch.Generator().manual_seed(7))
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-9)
    raw = torch.tensor([[[0.3], [1.0]], [[0.3], [-1.0]]])               # [B=2, 2C=2, 1]
    pred, frac = likelihood.split_learned_variance(raw)
    assert pred.shape == (2, 1, 1) and torch.equal(frac.flatten(), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="even number of channels"):
        likelihood.split_learned_variance(torch.zeros(2, 3, 1))


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(decoder="logistic"), "decoder"), (dict(variance="large"), "variance"), (dict(prediction="sigma"), "prediction"),
    (dict(num_levels=1), "num_levels"), (dict(data_scale=0.0), "data_scale"),
])
def test_bad_options_raise(kwargs, fragment):
    sde = sde_lib.VPSDE(N=40)
    with pytest.raises(ValueError, match=fragment):
        likelihood.ddpm_vlb(sde, GAUSS.discrete_score_fn(sde), GAUSS.sample(2), **kwargs)


def test_non_vp_chains_and_off_grid_data_are_refused():
    with pytest.raises(ValueError, match="VPSDE"):
        likelihood.ddpm_chain(sde_lib.VESDE())
    with pytest.raises(ValueError, match="variance-preserving"):
        likelihood.ddpm_chain(sde_lib.subVPSDE())
    sde = sde_lib.VPSDE(N=40)
    with pytest.raises(ValueError, match="data_shift"):
        likelihood.ddpm_vlb(sde, GAUSS.discrete_score_fn(sde), torch.full((2, 4), 3.0, dtype=torch.float64))
