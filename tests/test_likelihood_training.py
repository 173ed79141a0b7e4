"""Likelihood-aware training: weightings in eps space, importance-sampled t, EDM's log-normal sigma,
and improved DDPM's hybrid loss with learned variances."""
import math

import pytest
import torch

from score_sde import likelihood, losses, parameterization, sde_lib, toy
from score_sde.models.mlp import ConditionalMLP


pytestmark = pytest.mark.usefixtures("one_thread")
RING = toy.ring_mixture(8, 4.0, 0.5)


@pytest.mark.parametrize("weighting", ["x0", "v", "edm"])
def test_weights_turn_eps_errors_into_errors_in_the_networks_own_space(weighting):
    """|x0_hat - x0|^2 = sigma^2 |eps_hat - eps|^2, |v_hat - v|^2 = (1 + sigma^2) |...|^2 and EDM's
    lambda(sigma) |D - x0|^2 = (sigma^2 + sigma_data^2)/sigma_data^2 |...|^2, at every (m, s)."""
    g = torch.Generator().manual_seed(0)
    x, eps, eps_hat = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    m, s = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) * 3
    dst = "x0" if weighting == "edm" else weighting
    conv = lambda e: parameterization.convert(e, x, m, s, "eps", dst)  # noqa: E731
    own = ((conv(eps_hat) - conv(eps)) ** 2).sum(1)
    if weighting == "edm":
        sigma2 = (s / m) ** 2
        own = own * (sigma2 + 0.25) / (sigma2 * 0.25)                   # lambda(sigma), sigma_data = 0.5
    torch.testing.assert_close(own, losses.eps_weight(weighting, m, s) * ((eps_hat - eps) ** 2).sum(1))


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_importance_sampling_density_makes_the_likelihood_integrand_constant(sde_name):
    sde = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE(), "subvp": sde_lib.subVPSDE()}[sde_name]
    u = torch.rand(200000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, iw = losses.sample_time(sde, u, 1e-3, "importance")
    assert (t >= 1e-3).all() and (t <= sde.T).all()
    # E_p[1 / ((T - eps) p)] = 1: the reweighted objective keeps the uniform-t expectation
    assert abs(float(iw.mean()) - 1) < 0.02
    w = losses.eps_weight("likelihood", sde.mean_coeff(t), sde.marginal_std(t), sde.diffusion(t) ** 2) * iw
    z = float(2 * torch.log(sde.sigma(torch.tensor([sde.T])) / sde.sigma(torch.tensor([1e-3]))))
    torch.testing.assert_close(w, torch.full_like(w, z / (sde.T - 1e-3)), rtol=1e-6, atol=0)


def test_importance_sampling_keeps_the_objective_and_lowers_its_variance():
    sde = sde_lib.VPSDE()
    exact = RING.score_fn(sde)
    off = lambda x, t: 0.9 * exact(x, t)  # noqa: E731  (a wrong score: the loss is not at its floor)
    x0 = RING.sample(40000, torch.Generator().manual_seed(2)).reshape(40, 1000, 2)
    est = {}
    for sampling in ("uniform", "importance"):
        fn = losses.get_loss_fn(sde, likelihood_weighting=True, time_sampling=sampling, eps=1e-3)
        g = torch.Generator().manual_seed(3)
        est[sampling] = torch.stack([fn(off, batch, generator=g) for batch in x0])
    diff = est["uniform"].mean() - est["importance"].mean()
    se = math.sqrt(float(est["uniform"].var() + est["importance"].var()) / 40)
    assert abs(float(diff)) < 4 * se
    assert est["importance"].std() < 0.5 * est["uniform"].std()


@pytest.mark.parametrize("weighting,sampling", [("eps", "importance"), ("x0", "uniform"), ("v", "uniform"),
                                                ("edm", "lognormal"), ("likelihood", "importance")])
def test_every_objective_is_smallest_at_the_exact_score(weighting, sampling):
    sde = sde_lib.VPSDE()
    exact = RING.score_fn(sde)
    fn = losses.get_loss_fn(sde, weighting=weighting, time_sampling=sampling, eps=1e-3)
    x0 = RING.sample(20000, torch.Generator().manual_seed(4))
    at = lambda f: float(fn(f, x0, generator=torch.Generator().manual_seed(5)))  # noqa: E731
    best = at(exact)
    for other in (lambda x, t: 1.1 * exact(x, t), lambda x, t: 0.9 * exact(x, t)):
        assert at(other) > best


def test_lognormal_times_follow_edm_sigma_distribution():
    sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
    g = torch.Generator().manual_seed(6)
    normal = torch.randn(100000, generator=g, dtype=torch.float64)
    t, iw = losses.sample_time(sde, torch.rand(100000, dtype=torch.float64), 1e-5, "lognormal", normal=normal)
    log_sigma = torch.log(sde.sigma(t))
    assert abs(float(log_sigma.mean()) + 1.2) < 0.02 and abs(float(log_sigma.std()) - 1.2) < 0.02
    assert torch.equal(iw, torch.ones_like(iw))


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(weighting="snr"), "weighting"), (dict(time_sampling="beta"), "time_sampling"),
    (dict(kind="ddpm", time_sampling="importance"), "continuous"),
    (dict(likelihood_weighting=True, weighting="x0"), "contradicts"),
])
def test_bad_weighting_options(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        losses.get_loss_fn(sde_lib.VPSDE(), **kwargs)


# ----------------------------------------------------------------------------- learned variances
def test_learned_variance_network_feeds_the_bound_and_the_hybrid_loss():
    torch.manual_seed(0)
    sde = sde_lib.VPSDE(N=50)
    net = ConditionalMLP(2, (16,), 8, learned_variance=True)
    net.prediction = "eps"
    x = (RING.sample(6, torch.Generator().manual_seed(7)) / 8).float()
    assert net(x, torch.zeros(6)).shape == (6, 4)
    fn = losses.learned_variance_fn(sde, net)
    vlb = likelihood.ddpm_vlb(sde, fn, x, variance="learned", prediction="eps", decoder="gaussian")
    assert torch.isfinite(vlb["total"]).all()
    loss = losses.hybrid_loss(sde, fn, x, generator=torch.Generator().manual_seed(8))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())


def test_hybrid_loss_is_l_simple_plus_lambda_n_vlb_and_the_bound_does_not_move_the_mean():
    """Two parameters: a shifts eps_hat, b sets v. The bound's gradient reaches only b (stop-gradient on the
    mean); the value is L_simple + lambda N L_i / (d ln 2) with L_i from likelihood.vlb_term."""
    sde = sde_lib.VPSDE(N=50)
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    exact = RING.discrete_score_fn(sde)

    def model_fn(x, t):
        s = sde.discrete_marginal(sde.discrete_index(t), like=x)[1][:, None]
        return -s * exact(x, t) + a, torch.sigmoid(b).expand_as(x)

    x0 = RING.sample(64, torch.Generator().manual_seed(9)) / 8
    big = losses.hybrid_loss(sde, model_fn, x0, vlb_weight=10.0, generator=torch.Generator().manual_seed(10))
    small = losses.hybrid_loss(sde, model_fn, x0, vlb_weight=0.0, generator=torch.Generator().manual_seed(10))
    grad_a_big, grad_b_big = torch.autograd.grad(big, (a, b))
    grad_a_small, grad_b_small = torch.autograd.grad(small, (a, b), allow_unused=True)
    torch.testing.assert_close(grad_a_big, grad_a_small)
    assert float(grad_b_big.abs()) > 0 and (grad_b_small is None or float(grad_b_small.abs()) == 0)
    # the value, rebuilt from the same draws
    g = torch.Generator().manual_seed(10)
    u = torch.rand(64, generator=g, dtype=torch.float64)
    levels = torch.clamp((u * sde.N).long(), max=sde.N - 1)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)
    m, s = (c[:, None] for c in sde.discrete_marginal(levels, like=x0))
    x_i = m * x0 + s * z
    eps_hat, v = model_fn(x_i, sde.discrete_times()[levels])
    term = likelihood.vlb_term(likelihood.ddpm_chain(sde), levels, x0, x_i, eps_hat, v=v, num_levels=256)
    want = (((eps_hat - z) ** 2).mean(1) + 10.0 * 50 * term / math.log(2) / 2).mean()
    torch.testing.assert_close(big, want)


def test_step_fn_trains_a_learned_variance_model_with_the_hybrid_loss():
    import ml_collections
    from score_sde.models.ema import ExponentialMovingAverage
    torch.manual_seed(1)
    sde = sde_lib.VPSDE(N=50)
    net = ConditionalMLP(2, (16,), 8, learned_variance=True)
    net.prediction = "eps"
    optim = ml_collections.ConfigDict(dict(optimizer="Adam", lr=1e-3, beta1=0.9, eps=1e-8, weight_decay=0.0,
                                           warmup=0, grad_clip=1.0))
    state = dict(model=net, ema=ExponentialMovingAverage(net.parameters(), decay=0.9),
                 optimizer=losses.get_optimizer(optim, net.parameters()), step=0)
    step = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(optim), kind="ddpm",
                              continuous=False, reduce_mean=True, learned_variance=True)
    before = [p.detach().clone() for p in net.parameters()]
    out = step(state, (RING.sample(32) / 8).float())
    assert math.isfinite(out["loss"]) and state["step"] == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(ValueError, match="discrete DDPM"):
        losses.get_step_fn(sde, train=True, kind="dsm", continuous=True, learned_variance=True)
