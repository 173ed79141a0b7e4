"""The Gaussian-mixture oracle against independent computations (scipy densities, Gaussian conditioning)."""
import numpy as np
import pytest
import scipy.stats
import torch

from score_sde import toy


@pytest.fixture(scope="module")
def gmm():
    return toy.random_mixture(dim=3, k=4, seed=1)


def scipy_logpdf(gmm, x, m, s):
    comps = [scipy.stats.multivariate_normal(m * mu, m ** 2 * S + s ** 2 * np.eye(gmm.dim))
             for mu, S in zip(gmm.means.numpy(), gmm.covs.numpy())]
    logs = np.stack([c.logpdf(x) for c in comps], 1) + np.log(gmm.weights.numpy())
    return scipy.special.logsumexp(logs, axis=1), comps


@pytest.mark.parametrize("m,s", [(1.0, 0.0), (0.7, 0.5), (0.05, 1.0), (1.0, 20.0)])
def test_log_prob_matches_scipy(gmm, m, s):
    x = gmm.marginal(m, s).sample(50, torch.Generator().manual_seed(0))
    expected, _ = scipy_logpdf(gmm, x.numpy(), m, s)
    np.testing.assert_allclose(gmm.log_prob_t(x, m, s).numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("m,s", [(0.7, 0.5), (0.05, 1.0), (1.0, 3.0)])
def test_score_is_minus_posterior_mean_noise_over_std(gmm, m, s):
    """score(x_t) = -E[eps | x_t] / s, with E[eps | x_t, k] = s C_k^{-1} (x_t - m mu_k) by Gaussian conditioning."""
    x = gmm.marginal(m, s).sample(40, torch.Generator().manual_seed(1)).numpy()
    _, comps = scipy_logpdf(gmm, x, m, s)
    logs = np.stack([c.logpdf(x) for c in comps], 1) + np.log(gmm.weights.numpy())
    resp = np.exp(logs - scipy.special.logsumexp(logs, axis=1, keepdims=True))
    e_eps = sum(resp[:, [k]] * (s * np.linalg.solve(c.cov, (x - c.mean).T).T) for k, c in enumerate(comps))
    np.testing.assert_allclose(gmm.score(torch.from_numpy(x), m, s).numpy(), -e_eps / s, rtol=1e-8, atol=1e-10)


def test_score_is_gradient_of_log_prob(gmm):
    x = gmm.sample(20, torch.Generator().manual_seed(2)).requires_grad_(True)
    m, s = torch.full((20,), 0.6, dtype=torch.float64), torch.linspace(0.1, 2, 20, dtype=torch.float64)
    (grad,) = torch.autograd.grad(gmm.log_prob_t(x, m, s).sum(), x)
    torch.testing.assert_close(gmm.score(x.detach(), m, s), grad, rtol=1e-10, atol=1e-12)


def test_samples_have_the_mixture_moments(gmm):
    x = gmm.sample(200_000, torch.Generator().manual_seed(3))
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    second = sum(w * (S + torch.outer(mu, mu)) for w, mu, S in zip(gmm.weights, gmm.means, gmm.covs))
    cov = second - torch.outer(mean, mean)
    scale = float(cov.diagonal().max().sqrt())
    torch.testing.assert_close(x.mean(0), mean, atol=0.02 * scale, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.03 * scale ** 2, rtol=0)


def test_assign_and_ring():
    ring = toy.ring_mixture(8, radius=4.0, std=0.1)
    assert torch.equal(ring.assign(ring.means), torch.arange(8))
    with pytest.raises(ValueError):
        toy.GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))


def test_score_fn_is_differentiable_for_the_exact_trace():
    """The likelihood's exact divergence differentiates score_fn: the oracle must not cut the graph."""
    from score_sde import sde_lib
    gmm, sde = toy.ring_mixture(4, 2.0, 0.5), sde_lib.VPSDE()
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(gmm.score_fn(sde)(x, t)[:, 0].sum(), x)
    m, s = sde.mean_coeff(t), sde.marginal_std(t)
    h = 1e-6
    for i in range(3):
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[i, 0] += h
        xm[i, 0] -= h
        fd = (gmm.score(xp, m, s)[i, 0] - gmm.score(xm, m, s)[i, 0]) / (2 * h)
        assert float(grad[i, 0]) == pytest.approx(float(fd), rel=1e-5)
