"""ddpm, ddim, ald and pc fed the EXACT score of the Gaussian-mixture oracle (DESIGN section 5).

Fed the exact score, a sampler differs from the data only by its own discretization error. Each sampler
must reproduce an 8-component ring at its default settings within sampling noise: mean exact log-density
of its samples minus that of exact samples within 4 combined standard errors, and component-occupancy
total variation within 3x its expected value under pure sampling noise. Its error must fall as steps rise.
With Gaussian data the DDIM (eta=0) map has a closed form, checked to float64 precision.

Tested defaults: VP and sub-VP with N=500 (beta_min=0.1, beta_max=20), VE with sigma_min=0.01,
sigma_max=20, N=500 (the ring's radius is 4); 2000 samples. ALD on VP uses N=1000: VP's levels are
sparse at low noise, where Langevin needs the most steps. The Gaussian closed forms use N=1000. ddpm/ddim/ald get `discrete_score_fn`
(exact for the discrete chain they walk); pc gets the continuous `score_fn`.
"""
import math

import pytest
import torch

from score_sde import sampling, sde_lib, toy
from score_sde.sampling import algebra
from score_sde.sampling.ddim import ddim_invert

N_SAMPLES = 2000


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ring():
    return toy.ring_mixture()


@pytest.fixture(scope="module")
def reference(ring):
    """log p of 20000 exact samples: the target of the mean log-density."""
    return ring.log_prob(ring.sample(20000, torch.Generator().manual_seed(123)))


def sdes(N):
    return {"vp": lambda: sde_lib.VPSDE(N=N), "subvp": lambda: sde_lib.subVPSDE(N=N),
            "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=N)}


SDES = sdes(500)  # ring tests: samplers that walk all N levels stay at a few seconds
SDES["vp1000"] = sdes(1000)["vp"]  # ALD on VP's schedule: its levels are sparse at low noise
FINE_SDES = sdes(1000)  # Gaussian closed-form tests (cheap: 200 points)


def run(name, sde_key, ring, seed=0, n=N_SAMPLES, **options):
    sde = SDES[sde_key]()
    score = ring.score_fn(sde) if name == "pc" else ring.discrete_score_fn(sde)
    sampler = sampling.get_sampler(name, sde, (n, 2), **options)
    x, nfe = sampler(score, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(x).all()
    return x, nfe


def delta_logp(ring, reference, x):
    """(mean log p(x) - mean log p(exact), its standard error)."""
    lp = ring.log_prob(x.double())
    return float(lp.mean() - reference.mean()), math.sqrt(lp.var() / len(lp) + reference.var() / len(reference))


def occupancy_tv(ring, x):
    """(TV between component occupancy and the weights, its expected value under multinomial noise)."""
    n = x.shape[0]
    occ = torch.bincount(ring.assign(x.double()), minlength=ring.num_components).double() / n
    w = ring.weights
    expected = 0.5 * float((math.sqrt(2 / math.pi) * torch.sqrt(w * (1 - w) / n)).sum())
    return float(0.5 * (occ - w).abs().sum()), expected


def assert_reproduces(ring, reference, x):
    d, se = delta_logp(ring, reference, x)
    assert abs(d) < 4 * se, f"mean log p off by {d:+.4f} (standard error {se:.4f})"
    tv, expected = occupancy_tv(ring, x)
    assert tv < 3 * expected, f"occupancy TV {tv:.4f} above 3x its noise level {expected:.4f}"


# ----------------------------------------------------------------------------- (1) defaults reproduce the ring
DEFAULTS = [
    ("ddpm", "vp", {}),
    ("ddpm", "vp", {"variance": "beta_tilde"}),
    ("ddpm", "ve", {}),
    ("ddpm", "subvp", {}),
    ("ddim", "vp", {}),
    ("ddim", "ve", {}),
    ("ddim", "subvp", {}),
    ("ddim", "vp", {"eta": 1.0, "steps": 200}),
    ("ald", "vp1000", {}),
    ("ald", "ve", {}),
    ("pc", "vp", {}),
    ("pc", "ve", {}),
    ("pc", "vp", {"predictor": "euler_maruyama", "corrector": "none"}),
    ("pc", "vp", {"predictor": "ancestral_sampling", "corrector": "ald", "snr": 0.1}),
    ("pc", "ve", {"predictor": "reverse_diffusion", "corrector": "none", "probability_flow": True}),
    ("pc", "subvp", {"predictor": "euler_maruyama", "corrector": "langevin"}),
]


@pytest.mark.parametrize("name,sde_key,options", DEFAULTS)
def test_reproduces_ring_at_default_steps(ring, reference, name, sde_key, options):
    x, _ = run(name, sde_key, ring, **options)
    assert_reproduces(ring, reference, x)


# ----------------------------------------------------------------------------- (2) error falls with steps
@pytest.mark.parametrize("name,sde_key,coarse,fine", [
    ("ddim", "vp", {"steps": 5}, {"steps": 50}),
    ("ddim", "ve", {"steps": 5, "skip_type": "quadratic"}, {"steps": 50, "skip_type": "quadratic"}),
    ("ddpm", "vp", {"steps": 10}, {"steps": 200}),
    ("ald", "ve", {"steps": 50}, {}),
    ("pc", "vp", {"steps": 20, "corrector": "none"}, {"steps": 200, "corrector": "none"}),
])
def test_error_falls_as_steps_rise(ring, reference, name, sde_key, coarse, fine):
    d_coarse, se_coarse = delta_logp(ring, reference, run(name, sde_key, ring, **coarse)[0])
    d_fine, se_fine = delta_logp(ring, reference, run(name, sde_key, ring, **fine)[0])
    assert abs(d_coarse) > abs(d_fine) + 4 * math.hypot(se_coarse, se_fine), (d_coarse, d_fine)


# ----------------------------------------------------------------------------- (3) Gaussian data: closed forms
MU, C = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.3


def gaussian():
    return toy.GaussianMixture(torch.ones(1), MU[None], C ** 2 * torch.eye(2, dtype=torch.float64)[None])


def pf_point(m, s, w):
    """Probability-flow trajectory of N(MU, C^2 I) data: x_t = m MU + sqrt(m^2 C^2 + s^2) w."""
    return m * MU + math.sqrt(m * m * C * C + s * s) * w


@pytest.mark.parametrize("sde_key", ["vp", "ve", "subvp"])
def test_ddim_eta0_matches_its_gaussian_recursion_and_tracks_the_pf_ode(sde_key):
    """With x = m MU + rho w, eq. 12 gives rho_s = rho_t (m_s m_t C^2 + s_s s_t) / r_t^2, r^2 = m^2 C^2 + s^2."""
    sde, data = FINE_SDES[sde_key](), gaussian()
    w = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (100, 1000):
        levels = algebra.level_sequence(sde.N, steps)
        ms, ss = algebra.level_coeffs(sde, levels)
        rho = [math.sqrt(ms[0] ** 2 * C ** 2 + ss[0] ** 2)]
        for k in range(len(levels)):
            rho.append(rho[-1] * (ms[k + 1] * ms[k] * C ** 2 + ss[k + 1] * ss[k]) / (ms[k] ** 2 * C ** 2 + ss[k] ** 2))
        seen = []
        sampler = sampling.get_sampler("ddim", sde, w.shape, steps=steps, eta=0.0, dtype=torch.float64)
        x, nfe = sampler(data.discrete_score_fn(sde), x_T=pf_point(ms[0], ss[0], w),
                         callback=lambda i, t, x, x0: seen.append(x))
        assert nfe == steps and x.dtype == torch.float64
        for k, xk in enumerate(seen):
            torch.testing.assert_close(xk, ms[k + 1] * MU + rho[k + 1] * w, rtol=1e-10, atol=1e-10)
        errors[steps] = max(float((xk - pf_point(ms[k + 1], ss[k + 1], w)).abs().max()) for k, xk in enumerate(seen))
    assert errors[1000] < 1e-2 * C * 4  # within 1% of the data scale along the whole trajectory
    assert errors[1000] < errors[100] / 5  # first-order convergence to the probability-flow ODE


@pytest.mark.parametrize("sde_key", ["vp", "ve"])
def test_ddim_invert_round_trips(sde_key):
    sde, data = FINE_SDES[sde_key](), gaussian()
    x0 = data.sample(200, torch.Generator().manual_seed(1))
    w = (x0 - MU) / C
    m_top, s_top = (float(v) for v in sde.discrete_marginal(torch.tensor(sde.N - 1)))
    errors = {}
    for steps in (100, 1000):
        z, nfe = ddim_invert(sde, x0, data.discrete_score_fn(sde), steps=steps)
        assert nfe == steps
        back, _ = sampling.get_sampler("ddim", sde, x0.shape, steps=steps, dtype=torch.float64)(
            data.discrete_score_fn(sde), x_T=z)
        scale = math.hypot(m_top * C, s_top)  # the latent's spread
        torch.testing.assert_close(z, pf_point(m_top, s_top, w), rtol=0, atol=0.5 * scale * 100 / steps)
        errors[steps] = float((back - x0).abs().max())
    assert errors[1000] < 1e-2 and errors[1000] < errors[100] / 5


# ----------------------------------------------------------------------------- literal paper formulas (VP)
def test_ddpm_step_is_ho_algorithm_2():
    """x_{t-1} = (x_t - beta_t/sqrt(1-abar_t) eps)/sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t (Ho et al.)."""
    sde, data = sde_lib.VPSDE(N=50), gaussian()
    score_fn = data.discrete_score_fn(sde)
    x_T = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x, nfe = sampling.get_sampler("ddpm", sde, x_T.shape, dtype=torch.float64)(
        score_fn, generator=torch.Generator().manual_seed(3), x_T=x_T)
    g, y = torch.Generator().manual_seed(3), x_T
    abar, betas, times = sde.alphas_cumprod, sde.discrete_betas, sde.discrete_times()
    for i in range(49, -1, -1):
        eps = -torch.sqrt(1 - abar[i]) * score_fn(y, torch.full((50,), float(times[i])))
        y = (y - betas[i] / torch.sqrt(1 - abar[i]) * eps) / torch.sqrt(1 - betas[i])
        if i > 0:
            y = y + torch.sqrt(betas[i]) * torch.randn(y.shape, dtype=y.dtype, generator=g)
    assert nfe == 50
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_ddim_step_is_eq_12_with_eq_16_sigma():
    sde, data = sde_lib.VPSDE(N=40), gaussian()
    score_fn = data.discrete_score_fn(sde)
    x_T = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x, _ = sampling.get_sampler("ddim", sde, x_T.shape, steps=4, eta=0.5, dtype=torch.float64)(
        score_fn, generator=torch.Generator().manual_seed(3), x_T=x_T)
    g, y, abar = torch.Generator().manual_seed(3), x_T, sde.alphas_cumprod
    levels, times = [39, 26, 13, 0], sde.discrete_times()
    for k, i in enumerate(levels):
        a_t = abar[i]
        a_prev = abar[levels[k + 1]] if k + 1 < len(levels) else torch.tensor(1.0, dtype=torch.float64)
        eps = -torch.sqrt(1 - a_t) * score_fn(y, torch.full((50,), float(times[i])))
        x0 = (y - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
        sigma = 0.5 * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
        y = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev - sigma ** 2) * eps
        if sigma > 0:
            y = y + sigma * torch.randn(y.shape, dtype=y.dtype, generator=g)
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_ve_ddim_and_ddpm_are_the_smld_formulas():
    """VE, eta = 0: x_s = x0 + (s_s/s_t)(x_t - x0); ancestral: x + (s_t^2 - s_s^2) score + sqrt(beta_tilde) z."""
    sde, data = sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0, N=30), gaussian()
    score_fn, sig, times = data.discrete_score_fn(sde), sde.discrete_sigmas, sde.discrete_times()
    x_T = 20.0 * torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x, _ = sampling.get_sampler("ddim", sde, x_T.shape, steps=30, dtype=torch.float64)(score_fn, x_T=x_T)
    y = x_T
    for i in range(29, -1, -1):
        x0 = y + sig[i] ** 2 * score_fn(y, torch.full((40,), float(times[i])))
        y = x0 + (sig[i - 1] / sig[i]) * (y - x0) if i > 0 else x0
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    x, _ = sampling.get_sampler("ddpm", sde, x_T.shape, variance="beta_tilde", dtype=torch.float64)(
        score_fn, generator=torch.Generator().manual_seed(5), x_T=x_T)
    g, y = torch.Generator().manual_seed(5), x_T
    for i in range(29, -1, -1):
        prev = sig[i - 1] if i > 0 else torch.tensor(0.0, dtype=torch.float64)
        y = y + (sig[i] ** 2 - prev ** 2) * score_fn(y, torch.full((40,), float(times[i])))
        if i > 0:
            y = y + torch.sqrt(prev ** 2 * (sig[i] ** 2 - prev ** 2) / sig[i] ** 2) * torch.randn(
                y.shape, dtype=y.dtype, generator=g)
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- (4) plumbing
ALL = [("ddpm", {}), ("ddim", {"steps": 5, "eta": 0.5}), ("ald", {"steps": 5, "n_steps_each": 2}),
       ("pc", {"steps": 5, "n_steps_each": 2})]
ALL_OPTIONS = dict(ALL)
EXPECTED_NFE = {"ddpm": 50, "ddim": 5, "ald": 11, "pc": 15}


@pytest.mark.parametrize("name,options", ALL)
def test_reproducible_dtype_shape_and_nfe(ring, name, options):
    sde = sde_lib.VPSDE(N=50)
    shape = (64, 1, 2)  # any data shape: the score function sees (batch, *data_shape)
    calls = []
    sampler = sampling.get_sampler(name, sde, shape, dtype=torch.float64, **options)
    a, nfe = sampler(ring.score_fn(sde), generator=torch.Generator().manual_seed(7),
                     callback=lambda **kw: calls.append(kw))
    b, _ = sampler(ring.score_fn(sde), generator=torch.Generator().manual_seed(7))
    c, _ = sampler(ring.score_fn(sde), generator=torch.Generator().manual_seed(8))
    assert a.shape == shape and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert nfe == EXPECTED_NFE[name]
    assert calls and set(calls[0]) == {"i", "t", "x", "x0"}
    x32, _ = sampling.get_sampler(name, sde, shape, progress=True, **options)(ring.score_fn(sde))
    assert x32.dtype == torch.float32


@pytest.mark.parametrize("name", ["ddpm", "ddim", "ald", "pc"])
def test_x_T_shape_mismatch_raises(ring, name):
    sde = sde_lib.VPSDE(N=50)
    with pytest.raises(ValueError, match="x_T has shape"):
        sampling.get_sampler(name, sde, (8, 2), **ALL_OPTIONS[name])(ring.score_fn(sde), x_T=torch.zeros(8, 3))


@pytest.mark.parametrize("name,options,valid", [
    ("ddpm", {"variance": "fixed"}, "beta_tilde"),
    ("ddim", {"skip_type": "log", "steps": 5}, "quadratic"),
    ("ddim", {"eta": 1.5}, "eta"),
    ("ddim", {"steps": 51}, "steps"),
    ("ald", {"step_size": 0.0}, "step_size"),
    ("ald", {"n_steps_each": 0}, "n_steps_each"),
    ("pc", {"predictor": "heun"}, "reverse_diffusion"),
    ("pc", {"corrector": "hmc"}, "langevin"),
    ("pc", {"predictor": "none", "corrector": "none"}, "both 'none'"),
    ("pc", {"predictor": "ancestral_sampling", "probability_flow": True}, "reverse_diffusion"),
    ("pc", {"snr": -1.0}, "snr"),
    ("pc", {"noise_removal": "yes"}, "noise_removal must be True or False"),
    ("ald", {"noise_removal": 1}, "noise_removal must be True or False"),
    ("ddim", {"eps": 2.0, "steps": 5}, "eps"),
    ("ddim", {"etaa": 0.0}, "valid options"),
])
def test_bad_options_raise_naming_valid_ones(name, options, valid):
    with pytest.raises(ValueError, match=valid):
        sampling.get_sampler(name, sde_lib.VPSDE(N=50), (8, 2), **options)


def test_registered_names():
    assert {"ddpm", "ddim", "ald", "pc"} <= set(sampling.SAMPLERS)


def test_level_sequence_spans_top_to_bottom():
    for skip in ("uniform", "quadratic"):
        levels = algebra.level_sequence(1000, 50, skip)
        assert levels[0] == 999 and levels[-1] == 0 and (levels[1:] < levels[:-1]).all()
    assert algebra.level_sequence(1000, 1).tolist() == [999]


def test_ddim_invert_rejects_bad_input(ring):
    sde = sde_lib.VPSDE(N=50)
    with pytest.raises(ValueError, match="x0 must be a tensor"):
        ddim_invert(sde, torch.zeros(3), ring.score_fn(sde), steps=5)
    with pytest.raises(ValueError, match="steps"):
        ddim_invert(sde, torch.zeros(3, 2), ring.score_fn(sde), steps=51)
