"""SDE library against closed forms: marginals vs. discretized chains, prior density, sigma(t) inverse."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from score_sde import sde_lib

ALL = [lambda N=1000: sde_lib.VPSDE(0.1, 20.0, N), lambda N=1000: sde_lib.subVPSDE(0.1, 20.0, N),
       lambda N=1000: sde_lib.VESDE(0.01, 50.0, N)]
IDS = ["vp", "subvp", "ve"]


def chain_moments(sde, n_steps):
    """Mean coefficient and variance of x after each discretize step, started at x_0 = 1 (exact recursion)."""
    mean, var, out = 1.0, 0.0, []
    x1 = torch.ones(1, 3, dtype=torch.float64)
    for i in range(n_steps):
        t = torch.full((1,), i / (sde.N - 1) * sde.T, dtype=torch.float64)
        f, G = sde.discretize(x1, t)            # f is linear in x: f(x) = a x
        a = float(f[0, 0])
        mean, var = (1 + a) * mean, (1 + a) ** 2 * var + float(G[0]) ** 2
        out.append((mean, var))
    return out


@pytest.mark.parametrize("make", ALL[:1] + ALL[2:], ids=["vp", "ve"])
def test_discrete_chain_matches_discrete_marginal_exactly(make):
    sde = make(200)
    moments = chain_moments(sde, sde.N)
    m, s = sde.discrete_marginal(torch.arange(sde.N))
    np.testing.assert_allclose([mu for mu, _ in moments], m.numpy(), rtol=1e-12)
    np.testing.assert_allclose([math.sqrt(v) for _, v in moments], s.numpy(), rtol=1e-10)


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_discretize_converges_to_marginal_prob(make):
    errors = []
    for N in (250, 1000, 4000):
        sde = make(N)
        moments = chain_moments(sde, N)
        idx = [N // 4, N // 2, N - 1]
        t = torch.tensor([i / (N - 1) for i in idx], dtype=torch.float64)
        mean, std = sde.marginal_prob(torch.ones(3, 1, dtype=torch.float64), t)
        err = max(max(abs(moments[i][0] - float(mean[k, 0])) / float(mean[k, 0]),
                      abs(math.sqrt(moments[i][1]) - float(std[k])) / float(std[k]))
                  for k, i in enumerate(idx))
        errors.append(err)
    assert errors[-1] < 0.02, errors
    assert errors[2] < errors[0] / 4 or errors[2] < 1e-12, errors   # first order in 1/N (VE: exact)


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_sde_coefficients_generate_the_marginal(make):
    """For linear SDEs, d m/dt = f m and d s^2/dt = 2 f s^2 + g^2 (moment ODEs), checked by finite differences."""
    sde, h = make(), 1e-6
    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    x = torch.ones(3, 1, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    dm = (sde.mean_coeff(t + h) - sde.mean_coeff(t - h)) / (2 * h)
    dv = (sde.marginal_std(t + h) ** 2 - sde.marginal_std(t - h) ** 2) / (2 * h)
    np.testing.assert_allclose(dm, drift[:, 0] * sde.mean_coeff(t), rtol=1e-6)
    np.testing.assert_allclose(dv, 2 * drift[:, 0] * sde.marginal_std(t) ** 2 + g ** 2, rtol=1e-6)


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_prior_logp_matches_scipy(make):
    sde = make()
    z = sde.prior_sampling((5, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = scipy.stats.norm(scale=sde.prior_std).logpdf(z.reshape(5, -1).numpy()).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_sigma_and_its_inverse(make):
    sde = make()
    t = torch.linspace(1e-4, 1.0, 50, dtype=torch.float64)
    np.testing.assert_allclose(sde.sigma(t), sde.marginal_std(t) / sde.mean_coeff(t), rtol=1e-12)
    np.testing.assert_allclose(sde.t_from_sigma(sde.sigma(t)), t, rtol=1e-9, atol=1e-12)


def test_ddpm_schedule_defaults():
    sde = sde_lib.VPSDE(0.1, 20.0, N=1000)
    np.testing.assert_allclose(sde.discrete_betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-10)
    betas = sde_lib.cosine_betas(100, s=0.008)        # the last beta is clipped at max_beta
    steps = np.arange(101) / 100
    abar = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(sde_lib.alphas_cumprod(betas)[:-1], abar[1:-1] / abar[0], rtol=1e-10)
    assert float(betas[-1]) == 0.999
    np.testing.assert_allclose(sde_lib.geometric_sigmas(0.01, 50, 10),
                               np.geomspace(0.01, 50, 10), rtol=1e-12)


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(make, dtype):
    sde = make()
    x = torch.randn(4, 3, dtype=dtype)
    t = torch.rand(4, dtype=dtype)
    score_fn = lambda x, t: -x
    outs = [*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t),
            *sde.reverse(score_fn).sde(x, t), *sde.reverse(score_fn, True).discretize(x, t),
            sde.sigma(t), sde.t_from_sigma(sde.sigma(t)), sde.prior_logp(x),
            *sde.discrete_marginal(sde.discrete_index(t), like=x)]
    assert all(o.dtype == dtype for o in outs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_device_preserved(make):
    sde = make()
    x, t = torch.randn(4, 3, device="cuda"), torch.rand(4, device="cuda")
    outs = [*sde.sde(x, t), *sde.discretize(x, t), *sde.reverse(lambda x, t: -x).discretize(x, t),
            sde.prior_sampling((2, 3), generator=torch.Generator().manual_seed(0), device="cuda")]
    assert all(o.device.type == "cuda" for o in outs)


def test_reverse_and_probability_flow():
    sde = sde_lib.subVPSDE()
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    score_fn = lambda x, t: -2.0 * x
    f, g = sde.sde(x, t)
    rf, rg = sde.reverse(score_fn).sde(x, t)
    pf, pg = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    torch.testing.assert_close(rf, f - g[:, None] ** 2 * score_fn(x, t))
    torch.testing.assert_close(pf, f - 0.5 * g[:, None] ** 2 * score_fn(x, t))
    assert torch.equal(rg, g) and torch.all(pg == 0)
    df, dg = sde.discretize(x, t)
    rdf, rdg = sde.reverse(score_fn).discretize(x, t)
    torch.testing.assert_close(rdf, df - dg[:, None] ** 2 * score_fn(x, t))


@pytest.mark.parametrize("kwargs,cls", [
    (dict(sigma_min=1.0, sigma_max=0.5), sde_lib.VESDE), (dict(sigma_min=0.0, sigma_max=1.0), sde_lib.VESDE),
    (dict(beta_min=-0.1), sde_lib.VPSDE), (dict(beta_min=5.0, beta_max=1.0), sde_lib.subVPSDE),
    (dict(N=0), sde_lib.VPSDE), (dict(N=2.5), sde_lib.VESDE), (dict(beta_max=20.0, N=20), sde_lib.VPSDE)])
def test_bad_arguments(kwargs, cls):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_bad_shapes_and_names():
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match="shape"):
        sde.marginal_prob(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="unknown SDE"):
        sde_lib.get_sde("vp-sde")
    assert isinstance(sde_lib.get_sde("VESDE", sigma_max=10.0), sde_lib.VESDE)
