"""ode, heun and dpm_solver samplers against exact answers: the Gaussian-mixture oracle's ring and the
closed-form probability-flow trajectory of Gaussian data."""
import math

import pytest
import torch

from score_sde import sampling, sde_lib, toy
from score_sde.sampling.dpm_solver import multistep_update
from score_sde.sampling.ode import ode_encode

SDES = {"vp": sde_lib.VPSDE, "ve": sde_lib.VESDE, "subvp": sde_lib.subVPSDE}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- ring at default steps
RING = toy.ring_mixture()
N_RING = 4000


@pytest.fixture(scope="module")
def ring_reference():
    x = RING.sample(N_RING, torch.Generator().manual_seed(123))
    return RING.log_prob(x), torch.bincount(RING.assign(x), minlength=8).double() / N_RING


def ring_check(x, reference):
    """Mean exact log p0 and component occupancy of samples vs exact samples (DESIGN section 5)."""
    logp_ref, occ_ref = reference
    logp = RING.log_prob(x.double())
    delta = float(logp.mean() - logp_ref.mean())
    se = float((logp.var() / len(logp) + logp_ref.var() / len(logp_ref)).sqrt())
    occ = torch.bincount(RING.assign(x.double()), minlength=8).double() / len(x)
    tv = 0.5 * float((occ - occ_ref).abs().sum())
    w = RING.weights
    tv_noise = 0.5 * float((2 * w * (1 - w) / N_RING).sqrt().sum())  # std of the occupancy difference, summed
    assert abs(delta) < 3 * se, f"mean log p differs by {delta:.4f} (3 SE = {3 * se:.4f})"
    assert tv < 2.5 * tv_noise, f"occupancy TV {tv:.4f} above noise level {2.5 * tv_noise:.4f}"


@pytest.mark.parametrize("name,sde_name", [("ode", "vp"), ("ode", "ve"), ("ode", "subvp"), ("heun", "vp"),
                                           ("heun", "ve"), ("dpm_solver", "vp"), ("dpm_solver", "ve"),
                                           ("dpm_solver", "subvp")])
def test_reproduces_ring_at_default_steps(name, sde_name, ring_reference):
    sde = SDES[sde_name]()
    x, nfe = sampling.get_sampler(name, sde, (N_RING, 2))(RING.score_fn(sde), torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (N_RING, 2)
    ring_check(x, ring_reference)
    assert nfe == {"heun": 35, "dpm_solver": 20}.get(name, nfe)


def test_heun_with_churn_reproduces_ring(ring_reference):
    """Algorithm 2's churn adds error with an exact score (-0.13 nats at 18 steps, churn 10): more steps."""
    sde = sde_lib.VESDE()
    sampler = sampling.get_sampler("heun", sde, (N_RING, 2), steps=64, churn=20.0, s_tmin=0.05, s_tmax=50.0)
    x, _ = sampler(RING.score_fn(sde), torch.Generator().manual_seed(0))
    ring_check(x, ring_reference)
    again, _ = sampler(RING.score_fn(sde), torch.Generator().manual_seed(0))
    other, _ = sampler(RING.score_fn(sde), torch.Generator().manual_seed(1))
    assert torch.equal(x, again) and not torch.equal(x, other)


@pytest.mark.parametrize("name,grid", [("heun", [4, 8, 16]), ("dpm_solver", [5, 10, 20]),
                                       ("ode", [1e-2, 1e-4, 1e-6])])
def test_error_falls_as_steps_rise(name, grid):
    """Distance to a tight-tolerance reference solution from the same x_T shrinks with the budget."""
    sde = sde_lib.VPSDE()
    x_T = sde.prior_sampling((300, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    score = RING.score_fn(sde)
    ref, _ = sampling.get_sampler("ode", sde, (300, 2), solver="DOP853", rtol=1e-10, atol=1e-10, eps=1e-3,
                                  noise_removal=False, dtype=torch.float64)(score, x_T=x_T)
    if name == "heun":  # heun ends at sigma = 0: compare after denoising the reference at eps
        ref = ref + sde.marginal_std(torch.tensor([1e-3], dtype=torch.float64)) ** 2 * score(
            ref, torch.full((300,), 1e-3, dtype=torch.float64))
        ref = ref / sde.mean_coeff(torch.tensor([1e-3], dtype=torch.float64))
    errors = []
    for budget in grid:
        # sigma_max=None: start at sigma(T) as the reference does (the default starts at EDM's 80 from pure noise)
        opts = ({"rtol": budget, "atol": budget, "noise_removal": False} if name == "ode"
                else {"steps": budget, "sigma_max": None})
        opts["eps"] = 1e-3
        if name == "dpm_solver":  # end at eps without the denoising step, as the reference does
            opts["denoise_to_zero"] = False
        x, _ = sampling.get_sampler(name, sde, (300, 2), dtype=torch.float64, **opts)(score, x_T=x_T)
        errors.append(float((x - ref).norm(dim=1).mean()))
    assert errors[0] > 2 * errors[1] > 4 * errors[2], errors


# ----------------------------------------------------------------------------- Gaussian data, closed form
MU = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64)
C = 0.7
GAUSS = toy.GaussianMixture(torch.ones(1, dtype=torch.float64), MU[None], C ** 2 * torch.eye(6, dtype=torch.float64)[None])


def coeffs(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    return float(sde.mean_coeff(tt)), float(sde.marginal_std(tt))


def pf_closed_form(sde, x, t_from, t_to):
    """x_t = m_t mu + sqrt(m_t^2 c^2 + s_t^2) w with w fixed along the probability-flow trajectory."""
    (m1, s1), (m2, s2) = coeffs(sde, t_from), coeffs(sde, t_to)
    w = (x.reshape(x.shape[0], -1) - m1 * MU) / math.sqrt(m1 ** 2 * C ** 2 + s1 ** 2)
    return (m2 * MU + math.sqrt(m2 ** 2 * C ** 2 + s2 ** 2) * w).reshape(x.shape)


def x_T_for(sde, seed=0):
    return sde.prior_sampling((40, 2, 3), torch.Generator().manual_seed(seed), dtype=torch.float64)


ODE_OPTIONS = [dict(rtol=1e-8, atol=1e-8), dict(backend="torchdiffeq", solver="dopri5", rtol=1e-8, atol=1e-8),
               dict(backend="torchdiffeq", solver="rk4", steps=200)]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("opts", ODE_OPTIONS, ids=["scipy-RK45", "torchdiffeq-dopri5", "torchdiffeq-rk4"])
def test_ode_tracks_gaussian_trajectory_and_encode_round_trips(sde_name, opts):
    sde = SDES[sde_name]()
    eps = sde.sampling_eps
    x_T = x_T_for(sde)
    x, nfe = sampling.get_sampler("ode", sde, x_T.shape, dtype=torch.float64, eps=eps, noise_removal=False,
                                  **opts)(GAUSS.score_fn(sde), x_T=x_T)
    torch.testing.assert_close(x, pf_closed_form(sde, x_T, sde.T, eps), rtol=0, atol=1e-6)
    z, _ = ode_encode(sde, x, GAUSS.score_fn(sde), **opts)
    torch.testing.assert_close(z, x_T, rtol=0, atol=1e-5 * sde.prior_std)


def test_ode_noise_removal_is_tweedie():
    """The final denoising step gives E[x0 | x_eps] = mu + m c^2 / (m^2 c^2 + s^2) (x_eps - m mu)."""
    sde = sde_lib.VESDE(sigma_min=0.3)
    x_T = x_T_for(sde)
    opts = dict(rtol=1e-9, atol=1e-9, dtype=torch.float64, eps=sde.sampling_eps)
    x, nfe = sampling.get_sampler("ode", sde, x_T.shape, noise_removal=False, **opts)(GAUSS.score_fn(sde), x_T=x_T)
    x0, nfe0 = sampling.get_sampler("ode", sde, x_T.shape, noise_removal=True, **opts)(GAUSS.score_fn(sde), x_T=x_T)
    m, s = coeffs(sde, sde.sampling_eps)
    flat = x.reshape(40, -1)
    expected = MU + m * C ** 2 / (m ** 2 * C ** 2 + s ** 2) * (flat - m * MU)
    torch.testing.assert_close(x0.reshape(40, -1), expected, rtol=0, atol=1e-6)
    assert nfe0 == nfe + 1


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name,low,high", [("heun", 100, 200), ("dpm_solver", 50, 100)])
def test_sigma_space_solvers_track_gaussian_trajectory(sde_name, name, low, high):
    """Many steps in float64: close to the closed form, and the error shrinks at least at 2nd order.
    sigma_max=None starts at sigma(T), on the closed-form trajectory from x_T."""
    sde = SDES[sde_name]()
    x_T = x_T_for(sde)
    t_end = 0.0 if name == "heun" else sde.sampling_eps   # heun ends at sigma = 0, dpm_solver at eps
    exact = pf_closed_form(sde, x_T, sde.T, t_end)
    errs = []
    # end at eps (dpm_solver: without its final denoising step) to compare with the closed form there
    extra = dict(eps=sde.sampling_eps, **({"denoise_to_zero": False} if name == "dpm_solver" else {}))
    for steps in (low, high):
        x, _ = sampling.get_sampler(name, sde, x_T.shape, steps=steps, sigma_max=None, dtype=torch.float64,
                                    **extra)(GAUSS.score_fn(sde), x_T=x_T)
        errs.append(float((x - exact).abs().max()))
    assert errs[1] < 2e-3 and errs[0] > 3.5 * errs[1], errs


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
@pytest.mark.parametrize("name", ["heun", "dpm_solver"])
def test_capped_sigma_max_starts_from_rescaled_prior_noise(sde_name, name):
    """Default sigma_max = 80 < sigma(T) = 152: the solver starts at t0 = t(80) from x = s(t0) x_T / s(T) and
    follows the closed-form trajectory from there (the prior mismatch at sigma = 80 is the only change)."""
    sde = SDES[sde_name]()
    x_T = x_T_for(sde)
    t0 = float(sde.t_from_sigma(torch.tensor([80.0], dtype=torch.float64))[0])
    start = x_T * coeffs(sde, t0)[1] / coeffs(sde, sde.T)[1]
    t_end = 0.0 if name == "heun" else sde.sampling_eps
    x, nfe = sampling.get_sampler(name, sde, x_T.shape, steps=200, dtype=torch.float64)(GAUSS.score_fn(sde), x_T=x_T)
    torch.testing.assert_close(x, pf_closed_form(sde, start, t0, t_end), rtol=0, atol=2e-3)
    assert (x - pf_closed_form(sde, x_T, sde.T, t_end)).abs().max() > 5e-3  # a different start than T's


def test_edm_sigmas_rho_inf_is_geometric_limit_of_eq5():
    from score_sde.sampling.common import edm_sigmas
    geo = edm_sigmas(0.01, 80.0, 9, math.inf)
    torch.testing.assert_close(geo, 80.0 * (0.01 / 80.0) ** (torch.arange(9, dtype=torch.float64) / 8))
    torch.testing.assert_close(edm_sigmas(0.01, 80.0, 9, 1e7), geo, rtol=1e-5, atol=0)


def test_dpm_solver_denoise_to_zero_returns_data_prediction():
    """Endpoint (issue 13): the last of the `steps` calls returns E[x0 | x] at the final level sigma_min = 0.002,
    mu + m c^2 / (m^2 c^2 + s^2) (x - m mu); denoise_to_zero=False spends it on a solver step instead."""
    sde = sde_lib.VPSDE()
    x_T = x_T_for(sde)
    states = []
    x0, nfe0 = sampling.get_sampler("dpm_solver", sde, x_T.shape, steps=30, dtype=torch.float64)(
        GAUSS.score_fn(sde), x_T=x_T, callback=lambda **kw: states.append(kw))
    assert states[-2]["t"] > 0 and states[-1]["t"] == 0.0
    t_min = float(sde.t_from_sigma(torch.tensor([0.002], dtype=torch.float64))[0])
    assert states[-2]["t"] == pytest.approx(t_min, rel=1e-9)
    m, s = coeffs(sde, t_min)
    expected = MU + m * C ** 2 / (m ** 2 * C ** 2 + s ** 2) * (states[-2]["x"].reshape(40, -1) - m * MU)
    torch.testing.assert_close(x0.reshape(40, -1), expected, rtol=0, atol=1e-10)
    _, nfe = sampling.get_sampler("dpm_solver", sde, x_T.shape, steps=30, denoise_to_zero=False,
                                  dtype=torch.float64)(GAUSS.score_fn(sde), x_T=x_T)
    assert (nfe, nfe0) == (30, 30)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_update_is_exact_for_polynomial_data_prediction(order):
    """Order 1 integrates a constant x0(lambda) exactly, order 3 a quadratic one (non-uniform lambda steps);
    order 2 (Algorithm 2's 2M) is exact for constants and has an O(h^3) error for linear x0."""
    from scipy.integrate import quad
    lams = [-2.0, -1.3, -0.9, -0.2]
    s_of = lambda lam: 1 / math.sqrt(1 + math.exp(2 * lam))  # VP: m = e^lambda s, m^2 + s^2 = 1
    coef = {1: [0.3], 2: [0.3], 3: [0.3, 0.7, -0.4]}[order]
    x0_of = lambda lam: sum(c * lam ** k for k, c in enumerate(coef))
    u, t = lams[-2], lams[-1]
    exact = s_of(t) / s_of(u) * 0.5 + s_of(t) * quad(lambda lam: math.exp(lam) * x0_of(lam), u, t, epsabs=1e-14)[0]
    x0s = [torch.tensor([x0_of(lam)], dtype=torch.float64) for lam in lams[:-1]]
    got = multistep_update(torch.tensor([0.5], dtype=torch.float64), x0s, lams[-order - 1:],
                           math.exp(t) * s_of(t), s_of(t) / s_of(u), order)
    assert abs(float(got) - exact) < 1e-12


# ----------------------------------------------------------------------------- interface
class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, **kw):
        self.calls.append(kw)


@pytest.mark.parametrize("name,opts,nfe", [("heun", dict(steps=7), 13), ("dpm_solver", dict(steps=9, order=2), 9)])
def test_nfe_and_callback(name, opts, nfe):
    sde = sde_lib.VPSDE()
    calls, rec = [], Recorder()
    score = lambda x, t: (calls.append(1), GAUSS.score_fn(sde)(x, t))[1]
    x, n = sampling.get_sampler(name, sde, (5, 6), **opts)(score, torch.Generator().manual_seed(0), callback=rec)
    assert n == nfe == len(calls)
    assert len(rec.calls) == opts["steps"] and set(rec.calls[0]) == {"i", "t", "x", "x0"}
    assert [c["i"] for c in rec.calls] == list(range(opts["steps"]))


def test_ode_counts_every_score_call_and_calls_back():
    sde = sde_lib.VESDE()
    calls, rec = [], Recorder()
    score = lambda x, t: (calls.append(1), GAUSS.score_fn(sde)(x, t))[1]
    _, nfe = sampling.get_sampler("ode", sde, (5, 6), rtol=1e-3, atol=1e-3)(score, torch.Generator().manual_seed(0),
                                                                            callback=rec)
    assert nfe == len(calls) == len(rec.calls) + 1 > 10  # + the final denoising call (noise_removal=True)


@pytest.mark.parametrize("name", ["ode", "heun", "dpm_solver"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_shape_and_reproducibility(name, dtype):
    sde = sde_lib.subVPSDE()
    opts = {"ode": dict(rtol=1e-3, atol=1e-3)}.get(name, dict(steps=5))
    sampler = sampling.get_sampler(name, sde, (3, 1, 2, 3), dtype=dtype, **opts)
    x, _ = sampler(GAUSS.score_fn(sde), torch.Generator().manual_seed(2))
    y, _ = sampler(GAUSS.score_fn(sde), torch.Generator().manual_seed(2))
    assert x.shape == (3, 1, 2, 3) and x.dtype == dtype and torch.isfinite(x).all() and torch.equal(x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["ode", "heun", "dpm_solver"])
def test_cuda_matches_cpu(name):
    sde = sde_lib.VPSDE()
    opts = {"ode": dict(backend="torchdiffeq", solver="rk4", steps=20)}.get(name, dict(steps=6))
    x_T = x_T_for(sde)
    cpu, _ = sampling.get_sampler(name, sde, x_T.shape, dtype=torch.float64, **opts)(GAUSS.score_fn(sde), x_T=x_T)
    gpu, _ = sampling.get_sampler(name, sde, x_T.shape, dtype=torch.float64, device="cuda", **opts)(
        GAUSS.score_fn(sde), x_T=x_T.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu)


@pytest.mark.parametrize("name,opts,fragment", [
    ("ode", dict(solver="RK4"), "RK45"), ("ode", dict(backend="jax"), "torchdiffeq"),
    ("ode", dict(solver="RK45", steps=10), "fixed-grid"), ("ode", dict(backend="torchdiffeq", solver="euler"), "steps"),
    ("ode", dict(rtol=0.0), "rtol"), ("ode", dict(eps=2.0), "eps"), ("heun", dict(steps=0), "steps"),
    ("heun", dict(rho=-1.0), "rho"), ("heun", dict(churn=-1.0), "churn"), ("heun", dict(s_tmin=2.0, s_tmax=1.0), "s_tmin"),
    ("heun", dict(sigma_max=0.0), "sigma_max"), ("dpm_solver", dict(sigma_max=1e-4), "sigma_max"),
    ("dpm_solver", dict(order=4), "(1, 2, 3)"), ("dpm_solver", dict(skip_type="uniform"), "logSNR"),
    ("dpm_solver", dict(steps=2.5), "steps"), ("heun", dict(variance="beta"), "valid options"),
])
def test_bad_options_raise_value_error_naming_valid_ones(name, opts, fragment):
    with pytest.raises(ValueError, match=None) as info:
        sampling.get_sampler(name, sde_lib.VPSDE(), (4, 2), **opts)
    assert fragment in str(info.value)


def test_ode_encode_rejects_bad_solver():
    with pytest.raises(ValueError, match="dopri5"):
        ode_encode(sde_lib.VPSDE(), torch.zeros(2, 2), lambda x, t: x, backend="torchdiffeq", solver="RK45")


@pytest.mark.parametrize("solver", ["RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_other_scipy_methods_track_gaussian_trajectory(solver):
    """Implicit methods spend extra score calls on finite-difference Jacobians; NFE counts them all."""
    sde = sde_lib.VPSDE()
    x_T = sde.prior_sampling((4, 6), torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = []
    score = lambda x, t: (calls.append(1), GAUSS.score_fn(sde)(x, t))[1]
    x, nfe = sampling.get_sampler("ode", sde, x_T.shape, solver=solver, rtol=1e-6, atol=1e-6, eps=sde.sampling_eps,
                                  noise_removal=False, dtype=torch.float64)(score, x_T=x_T)
    assert nfe == len(calls)
    torch.testing.assert_close(x, pf_closed_form(sde, x_T, sde.T, sde.sampling_eps), rtol=0, atol=1e-4)
