"""Probability-flow likelihood against exact log-densities of the Gaussian-mixture oracle, Hutchinson's
unbiasedness, and bits/dim against hand computations."""
import math

import pytest
import scipy.stats
import torch

from score_sde import likelihood, sde_lib, toy


pytestmark = pytest.mark.usefixtures("one_thread")


def at(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    return sde.mean_coeff(tt), sde.marginal_std(tt)


def reference_logp(gmm, sde, x, z, eps):
    """What the ODE computes with the exact score: log p_eps(x) - log p_T(z) + log prior(z).

    Eq. 39 gives log p_eps(x) = log p_T(z) + int div exactly; the likelihood puts the prior in place of
    p_T, so the known difference log prior(z) - log p_T(z) is added to the analytic marginal at eps.
    """
    return gmm.log_prob_t(x.reshape(x.shape[0], -1), *at(sde, eps)) \
        - gmm.log_prob_t(z.reshape(z.shape[0], -1), *at(sde, sde.T)) + sde.prior_logp(z)


RING = toy.ring_mixture()
GAUSS = toy.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([[0.5, -1.0, 0.0, 2.0]]),
                            torch.diag(torch.tensor([0.3, 1.0, 0.5, 2.0]))[None] ** 2)


@pytest.mark.parametrize("sde_cls", [sde_lib.VPSDE, sde_lib.VESDE, sde_lib.subVPSDE])
@pytest.mark.parametrize("data", ["ring", "gaussian"])
@pytest.mark.parametrize("backend,method", [("scipy", "RK45"), ("torchdiffeq", "dopri5")])
def test_exact_trace_matches_analytic_log_density(sde_cls, data, backend, method):
    sde = sde_cls()
    gmm = RING if data == "ring" else GAUSS
    x = gmm.sample(24, torch.Generator().manual_seed(0))
    if data == "gaussian":
        x = x.reshape(24, 1, 2, 2)  # any data shape
    nll, z, nfe = likelihood.get_likelihood_fn(sde, backend=backend, method=method)(gmm.score_fn(sde), x)
    assert nll.shape == (24,) and z.shape == x.shape and 0 < nfe <= 300
    per_dim_error = (-nll - reference_logp(gmm, sde, x, z, likelihood.DEFAULT_EPS)).abs().max() / gmm.dim
    assert per_dim_error < 1e-3


def test_standard_normal_data_under_vp_needs_no_prior_correction():
    """N(0, I) data stays N(0, I) under VP, so the prior is p_T exactly and -nll = log N(x; 0, I)."""
    sde = sde_lib.VPSDE()
    gmm = toy.GaussianMixture(torch.ones(1), torch.zeros(1, 3), torch.eye(3)[None])
    x = gmm.sample(16, torch.Generator().manual_seed(1))
    nll, _, _ = likelihood.get_likelihood_fn(sde, rtol=1e-7, atol=1e-7)(gmm.score_fn(sde), x)
    expected = torch.tensor(scipy.stats.multivariate_normal(mean=[0, 0, 0]).logpdf(x.numpy()))
    torch.testing.assert_close(-nll, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("trace", ["hutchinson-rademacher", "hutchinson-gaussian"])
def test_hutchinson_is_unbiased(trace):
    """Each row draws its own probe; the mean over 400 probes sits within 3 standard errors of the exact trace."""
    sde, reps = sde_lib.VESDE(), 400
    points = RING.sample(3, torch.Generator().manual_seed(4))
    x = points.repeat_interleave(reps, dim=0)
    score = RING.score_fn(sde)
    exact, _, _ = likelihood.get_likelihood_fn(sde)(score, points)
    est, _, _ = likelihood.get_likelihood_fn(sde, trace=trace)(score, x, torch.Generator().manual_seed(5))
    est = est.reshape(3, reps)
    mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
    assert (se > 1e-3).all()  # a real estimator: single-probe values do scatter
    assert ((mean - exact).abs() < 3 * se).all(), (mean - exact, se)


def test_more_probes_shrink_the_spread_and_generator_reproduces():
    sde = sde_lib.VPSDE()
    x = RING.sample(2, torch.Generator().manual_seed(6)).repeat_interleave(100, dim=0)
    score = RING.score_fn(sde)
    one = likelihood.get_likelihood_fn(sde, trace="hutchinson-gaussian")
    eight = likelihood.get_likelihood_fn(sde, trace="hutchinson-gaussian", num_probes=8)
    a, _, _ = one(score, x, torch.Generator().manual_seed(7))
    b, _, _ = one(score, x, torch.Generator().manual_seed(7))
    c, _, _ = eight(score, x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert c.reshape(2, 100).std(1).max() < 0.6 * a.reshape(2, 100).std(1).min()


def test_detached_score_is_refused():
    sde = sde_lib.VPSDE()
    detached = lambda x, t: RING.score_fn(sde)(x.detach(), t)
    with pytest.raises(ValueError, match="detached"):
        likelihood.get_likelihood_fn(sde)(detached, RING.sample(4))


def test_oracle_score_fn_works_with_the_exact_trace():
    sde = sde_lib.VPSDE()
    x = RING.sample(4, torch.Generator().manual_seed(0))
    nll, _, _ = likelihood.get_likelihood_fn(sde, rtol=1e-4, atol=1e-4)(RING.score_fn(sde), x)
    assert torch.isfinite(nll).all() and nll.shape == (4,)


@pytest.mark.parametrize("opts,fragment", [
    (dict(trace="hutchinson"), "hutchinson-rademacher"), (dict(num_probes=0), "num_probes"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(backend="torch"), "torchdiffeq"), (dict(method="dopri5"), "RK45"),
    (dict(backend="torchdiffeq", method="rk4"), "dopri5"), (dict(rtol=-1.0), "rtol"), (dict(eps=0.0), "eps"),
])
def test_bad_options_raise_value_error_naming_valid_ones(opts, fragment):
    with pytest.raises(ValueError) as info:
        likelihood.get_likelihood_fn(sde_lib.VPSDE(), **opts)
    assert fragment in str(info.value)


def test_default_protocol_is_within_005_nats_rms_of_the_truth_on_an_image_like_mixture():
    """64-D image-like mixture (power-law spectra, exponent 1.5), exact score and trace: the default (eps = 1e-5) is within 0.05 nats RMS of
    the true -log p0(x); the old eps = sampling_eps = 1e-3 is off by several tenths (the data's smallest
    std, 0.02, is comparable to s(1e-3) = 0.01)."""
    sde, gmm = sde_lib.VPSDE(), toy.image_like_mixture(64, 4, alpha=1.5, top_var=0.25, spread=0.5)
    x = gmm.sample(16, torch.Generator().manual_seed(0))
    truth = -gmm.log_prob(x)
    nll, _, nfe = likelihood.get_likelihood_fn(sde)(gmm.score_fn(sde), x)
    old, _, _ = likelihood.get_likelihood_fn(sde, eps=sde.sampling_eps)(gmm.score_fn(sde), x)
    rms = lambda e: float(e.pow(2).mean().sqrt())
    assert rms(nll - truth) < 0.05 and rms(old - truth) > 0.2, (rms(nll - truth), rms(old - truth))
    assert nfe < 200


def _loop_divergence(f, x):
    """Reference: one autograd pass per output coordinate."""
    flat = f.reshape(f.shape[0], -1)
    return sum(torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].reshape(f.shape[0], -1)[:, i]
               for i in range(flat.shape[1]))


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 12])
def test_batched_exact_divergence_equals_one_pass_per_dimension(chunk_size):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 12)).double()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    f = net(x.reshape(5, 12)).reshape(x.shape) * x   # a non-linear, non-diagonal Jacobian
    torch.testing.assert_close(likelihood.exact_divergence(f, x, chunk_size), _loop_divergence(f, x))


class NoVmapSquare(torch.autograd.Function):
    """x^2 whose backward asks for a memory format, as some CPU conv/norm kernels do: vmap cannot
    answer that (NYI), so the batched backward pass must fall back to one pass per cotangent."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad.is_contiguous(memory_format=torch.channels_last)
        return 2 * x * grad


def test_exact_divergence_falls_back_where_an_op_has_no_vmap_rule():
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    f = NoVmapSquare.apply(x).flip(3) + x.sum(dim=(1, 2, 3), keepdim=True) * x
    with pytest.raises(RuntimeError, match="vmap"):   # the batched pass alone fails on this op
        torch.autograd.grad(f, x, grad_outputs=torch.ones((2,) + f.shape, dtype=f.dtype), retain_graph=True,
                            is_grads_batched=True)
    torch.testing.assert_close(likelihood.exact_divergence(f, x), _loop_divergence(f, x))


def test_orthogonal_probes_are_orthogonal_and_d_of_them_give_the_exact_trace():
    torch.manual_seed(1)
    a = torch.randn(6, 6, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    f = torch.tanh(x @ a)
    probes = likelihood.draw_probes("hutchinson-orthogonal", 6, x, torch.Generator().manual_seed(2))
    gram = torch.einsum("kbi,jbi->bkj", probes, probes)
    torch.testing.assert_close(gram, 6 * torch.eye(6, dtype=torch.float64).expand(3, 6, 6))
    torch.testing.assert_close(likelihood.hutchinson_divergence(f, x, probes), _loop_divergence(f, x))
    with pytest.raises(ValueError, match="at most d=6"):
        likelihood.draw_probes("hutchinson-orthogonal", 7, x, None)


def ssp_bits_per_dim(nll, d, inverse_scaler):
    """score_sde_pytorch's conversion (likelihood.py): bpd = nll/(d ln 2) + 7 - inverse_scaler(-1)."""
    return nll / math.log(2) / d + 7.0 - inverse_scaler(-1.0)


@pytest.mark.parametrize("centered", [True, False])
def test_bits_per_dim_reproduces_score_sde_pytorch_offsets(centered):
    """Its scalers: centered data x -> 2x - 1 (inverse (x + 1)/2), else identity; 256 levels."""
    inverse = (lambda v: (v + 1.0) / 2.0) if centered else (lambda v: v)
    nll = torch.tensor([0.0, 1234.5, 5000.0], dtype=torch.float64)
    ours = likelihood.bits_per_dim(nll, (3, 32, 32), num_levels=256, data_scale=2.0 if centered else 1.0)
    torch.testing.assert_close(ours, ssp_bits_per_dim(nll, 3072, inverse), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- bits per dimension
def test_bits_per_dim_of_uniform_model_on_three_levels_is_log2_3():
    """y = 2x - 1 uniform on [-1, 1]^d has density 2^-d: every one of the 3^d discrete values gets 3^-d."""
    d = 5
    nll_y = torch.tensor([d * math.log(2.0)])
    torch.testing.assert_close(likelihood.bits_per_dim(nll_y, d, num_levels=3), torch.tensor([math.log2(3)]))


@pytest.mark.parametrize("data_scale,shift", [(2.0, -1.0), (1.0, 0.0)])
def test_bits_per_dim_of_gaussian_on_dequantized_three_level_data(data_scale, shift):
    """Hand computation in data space: x = (k + u)/3, y = scale x + shift ~ N(0, 0.5^2) per dimension, so
    x ~ N(-shift/scale, (0.5/scale)^2); bpd = (-log p_x(x) + d log 3) / (d ln 2)."""
    k, u = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.25, 0.9], dtype=torch.float64)
    x = (k + u) / 3
    y = data_scale * x + shift
    nll_y = -torch.tensor(scipy.stats.norm(0, 0.5).logpdf(y.numpy()).sum())
    log_px = scipy.stats.norm(-shift / data_scale, 0.5 / data_scale).logpdf(x.numpy()).sum()
    expected = (-log_px + 3 * math.log(3)) / (3 * math.log(2))
    got = likelihood.bits_per_dim(nll_y, (1, 3), num_levels=3, data_scale=data_scale)
    assert abs(float(got) - expected) < 1e-12


def test_bits_per_dim_offsets_for_8bit_images():
    """Zero model nll: 8 bits for [0, 1] data, 7 for data centered to [-1, 1] (score_sde_pytorch's offset 7)."""
    assert likelihood.bits_per_dim(0.0, (3, 32, 32)) == pytest.approx(7.0)
    assert likelihood.bits_per_dim(0.0, 3072, data_scale=1.0) == pytest.approx(8.0)
    nll = torch.tensor([3072 * math.log(2) * 3.0])   # 3 bits/dim in model space
    assert float(likelihood.bits_per_dim(nll, (3, 32, 32))) == pytest.approx(10.0)


@pytest.mark.parametrize("args,kwargs,fragment", [((1.0, 0), {}, "x_shape_or_dim"), ((1.0, 4), {"num_levels": 1}, "num_levels"),
                                                  ((1.0, 4), {"data_scale": 0.0}, "data_scale")])
def test_bits_per_dim_rejects_bad_arguments(args, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        likelihood.bits_per_dim(*args, **kwargs)


# ----------------------------------------------------------------------------- two-pass quadrature
@pytest.mark.parametrize("sde_cls", [sde_lib.VPSDE, sde_lib.VESDE, sde_lib.subVPSDE])
def test_log_sigma_midpoints_integrate_the_drift_coefficient_exactly_in_the_limit(sde_cls):
    """sum_k w_k f(t_k) -> int_eps^T f dt = log m(T) - log m(eps) (f = d log m/dt), and sum_k w_k = T - eps."""
    sde, eps = sde_cls(), 1e-5
    u, t, w = likelihood.log_sigma_midpoints(sde, eps, 400)
    torch.testing.assert_close(torch.log(sde.sigma(t)), u)
    ends = torch.tensor([eps, sde.T], dtype=torch.float64)
    assert bool((t[1:] > t[:-1]).all()) and eps < float(t[0]) and float(t[-1]) < sde.T
    assert abs(float(w.sum()) - (sde.T - eps)) < 1e-4 * sde.T
    exact = float(sde.log_mean_coeff(ends[1:]) - sde.log_mean_coeff(ends[:1]))
    assert abs(float((w * sde.drift_coeff(t)).sum()) - exact) < 1e-4 * max(1.0, abs(exact))


@pytest.mark.parametrize("backend,method", [("scipy", "RK45"), ("torchdiffeq", "dopri5")])
def test_integrate_at_reads_the_dense_output_of_a_linear_ode(backend, method):
    from score_sde.sampling.ode import integrate_at
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    times = torch.tensor([0.1, 0.35, 0.9], dtype=torch.float64)
    (xs,), (x1,) = integrate_at(lambda t, s: (-s[0],), (x0,), 0.0, 1.0, times, backend=backend, solver=method,
                                rtol=1e-9, atol=1e-9)
    assert xs.shape == (3, 2, 2)
    torch.testing.assert_close(xs, torch.exp(-times)[:, None, None] * x0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x1, math.exp(-1.0) * x0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sde_cls,backend,method", [(sde_lib.VPSDE, "scipy", "RK45"), (sde_lib.VESDE, "scipy", "RK45"),
                                                    (sde_lib.subVPSDE, "torchdiffeq", "dopri5")])
def test_quadrature_with_the_exact_trace_matches_the_analytic_log_density(sde_cls, backend, method):
    sde = sde_cls()
    x = GAUSS.sample(12, torch.Generator().manual_seed(3)).reshape(12, 1, 2, 2)
    nll, z, nfe = likelihood.get_likelihood_fn(sde, nodes=128, backend=backend, method=method)(GAUSS.score_fn(sde), x)
    assert nll.shape == (12,) and z.shape == x.shape and nfe > 1
    per_dim_error = (-nll - reference_logp(GAUSS, sde, x, z, likelihood.DEFAULT_EPS)).abs().max() / GAUSS.dim
    assert per_dim_error < 1e-3


def test_quadrature_hutchinson_is_unbiased_and_fresh_probes_beat_a_fixed_one():
    """Mean over 300 probe draws within 3 se of the exact-trace quadrature; the spread of 64 nodes with fresh
    probes is several times below that of one probe fixed along the joint ODE."""
    sde, reps = sde_lib.VPSDE(), 300
    gmm = toy.image_like_mixture(16, 2, alpha=1.5, top_var=0.25, spread=0.5)
    points = gmm.sample(2, torch.Generator().manual_seed(2))
    x, score = points.repeat_interleave(reps, dim=0), gmm.score_fn(sde)
    exact, _, _ = likelihood.get_likelihood_fn(sde, nodes=64)(score, points)
    est, _, _ = likelihood.get_likelihood_fn(sde, nodes=64, trace="hutchinson-rademacher")(
        score, x, torch.Generator().manual_seed(5))
    fixed, _, _ = likelihood.get_likelihood_fn(sde, trace="hutchinson-rademacher")(
        score, x, torch.Generator().manual_seed(5))
    est, fixed = est.reshape(2, reps), fixed.reshape(2, reps)
    mean, se = est.mean(1), est.std(1) / math.sqrt(reps)
    assert ((mean - exact).abs() < 3 * se).all(), (mean - exact, se)
    assert (fixed.std(1) > 3 * est.std(1)).all(), (fixed.std(1), est.std(1))


def test_orthogonal_node_probes_never_repeat_a_direction_within_a_group():
    """d slots (nodes x probes) per group: sum_k v_k v_k^T = d I per sample, so a Jacobian shared by the
    group's nodes is traced exactly."""
    x = torch.zeros(3, 2, 3, dtype=torch.float64)    # d = 6
    probes = likelihood.node_probes("hutchinson-orthogonal", 6, 2, x, torch.Generator().manual_seed(0))
    assert probes.shape == (2, 6, 3, 2, 3)
    slots = probes.transpose(0, 1).reshape(12, 3, 6)   # slot order: node-major, then probe
    for group in (slots[:6], slots[6:]):
        gram = torch.einsum("kbi,kbj->bij", group, group)
        torch.testing.assert_close(gram, 6 * torch.eye(6, dtype=torch.float64).expand(3, 6, 6))


def test_nodes_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="nodes"):
        likelihood.get_likelihood_fn(sde_lib.VPSDE(), nodes=0)


def test_orthogonal_quadrature_is_exact_when_the_jacobian_is_shared_by_the_nodes():
    """Drift f~ = A x / 2 for all t (VE, score = -A x / g^2): d slots of orthogonal probes trace it exactly,
    for any draw, whereas Rademacher probes scatter."""
    sde, d = sde_lib.VESDE(), 6
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3

    def score_fn(x, t):
        return -(x @ a.T) / sde.diffusion(t).to(x).pow(2)[:, None]
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact, z, _ = likelihood.get_likelihood_fn(sde, nodes=3)(score_fn, x)
    integral = 0.5 * float(torch.trace(a)) * (sde.T - likelihood.DEFAULT_EPS)   # int tr(A/2) dt
    torch.testing.assert_close(-exact - sde.prior_logp(z), torch.full((5,), integral, dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    for seed in range(3):
        orth, _, _ = likelihood.get_likelihood_fn(sde, nodes=3, num_probes=2, trace="hutchinson-orthogonal")(
            score_fn, x, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(orth, exact, rtol=0, atol=1e-9)
    rade, _, _ = likelihood.get_likelihood_fn(sde, nodes=3, num_probes=2, trace="hutchinson-rademacher")(
        score_fn, x, torch.Generator().manual_seed(0))
    assert (rade - exact).abs().max() > 1e-3


def test_importance_weighted_dequantization_bound_tightens_towards_the_bin_probability():
    """A N(0.3, 0.2^2) density on [0, 1] cut into 4 bins: E log (1/K sum_j p(k + u_j) width) is below
    log P(k) for every K, increases with K, and K = 1 is the plain uniform-dequantization bound."""
    mean, std, width = 0.3, 0.2, 0.25
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    g, reps = torch.Generator().manual_seed(0), 20000
    for k in range(4):
        log_p_bin = float(torch.log(normal.cdf(torch.tensor((k + 1) * width)) - normal.cdf(torch.tensor(k * width))))
        bounds = []
        for draws in (1, 4, 16):
            y = (k + torch.rand(reps, draws, generator=g, dtype=torch.float64)) * width
            nll = -(normal.log_prob(y) + math.log(width))           # per draw, in bin units
            bound = -likelihood.importance_weighted_nll(nll)          # a lower bound on log P(k)
            bounds.append((float(bound.mean()), float(bound.std()) / math.sqrt(reps)))
            if draws == 1:
                torch.testing.assert_close(-likelihood.importance_weighted_nll(nll), -nll[:, 0])
        for mean_bound, se in bounds:
            assert mean_bound < log_p_bin + 3 * se
        assert bounds[0][0] < bounds[1][0] < bounds[2][0], bounds
        assert log_p_bin - bounds[2][0] < 0.25 * (log_p_bin - bounds[0][0]) + 3 * bounds[2][1]
    with pytest.raises(ValueError, match=r"\[batch, K\]"):
        likelihood.importance_weighted_nll(torch.zeros(3))
