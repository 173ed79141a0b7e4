"""EDM's preconditioning (Karras et al. 2022, table 1 / eq. 7) on the toolkit's SDEs: coefficients, the exact
denoiser from the mixture oracle, the unit-variance target, EDM's loss, every architecture, spec and checkpoints."""
import math

import pytest
import torch

from score_sde import builders, losses, parameterization, sde_lib, toy
from score_sde.models.mlp import ConditionalMLP
from score_sde.models.preconditioning import EDMPreconditioning
from score_sde.pipeline.spec import Spec, step_options

pytestmark = pytest.mark.usefixtures("one_thread")
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE()}
SIGMAS = torch.logspace(-4, 3, 29, dtype=torch.float64)


@pytest.mark.parametrize("sigma_data", [0.5, 0.2, 3.0])
def test_coefficients_satisfy_table_1_identities(sigma_data):
    pre = EDMPreconditioning(sigma_data)
    c_skip, c_out, c_in, c_noise = pre.coefficients(SIGMAS)
    sd2 = sigma_data ** 2
    torch.testing.assert_close(c_in ** 2 * (SIGMAS ** 2 + sd2), torch.ones_like(SIGMAS))  # unit-variance input
    torch.testing.assert_close(c_skip, sd2 * c_in ** 2)
    torch.testing.assert_close(c_out, SIGMAS * sigma_data * c_in)
    torch.testing.assert_close(pre.loss_weight(SIGMAS) * c_out ** 2, torch.ones_like(SIGMAS))  # lambda c_out^2 = 1
    torch.testing.assert_close(c_noise, torch.log(SIGMAS) / 4)
    # the target's variance: (1 - c_skip)^2 sd^2 + c_skip^2 sigma^2 = c_out^2 (F's target is unit variance)
    torch.testing.assert_close((1 - c_skip) ** 2 * sd2 + c_skip ** 2 * SIGMAS ** 2, c_out ** 2)


@pytest.mark.parametrize("sigma_data", [0.5, 1.7])
def test_effective_target_has_unit_variance_for_gaussian_data_of_std_sigma_data(sigma_data):
    """F* = (x0 - c_skip x_hat)/c_out = a x0 + b n is linear: Var = a^2 sigma_d^2 + b^2, exactly 1 at every sigma."""
    pre = EDMPreconditioning(sigma_data)
    one, zero = torch.ones(len(SIGMAS), 1, dtype=torch.float64), torch.zeros(len(SIGMAS), 1, dtype=torch.float64)
    a = pre.target(one, one, SIGMAS)[:, 0]                       # x0 = 1, n = 0
    b = pre.target(zero, SIGMAS[:, None], SIGMAS)[:, 0]          # x0 = 0, n = 1: x_hat = sigma
    torch.testing.assert_close(a ** 2 * sigma_data ** 2 + b ** 2, torch.ones_like(SIGMAS), rtol=1e-12, atol=1e-12)
    # and a draw: the empirical variance of F* over 200k Gaussian points at three noise levels
    g = torch.Generator().manual_seed(0)
    for sigma in (0.01, 0.5, 40.0):
        x0 = sigma_data * torch.randn(200000, 1, generator=g, dtype=torch.float64)
        x_hat = x0 + sigma * torch.randn(200000, 1, generator=g, dtype=torch.float64)
        f = pre.target(x0, x_hat, torch.full((200000,), sigma, dtype=torch.float64))
        assert abs(float(f.var()) - 1) < 0.02


def random_net(dim: int, seed: int):
    """A fixed smooth float64 F(input, label) of both arguments (the MLPs embed labels in float32)."""
    w = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda inp, label: torch.tanh(inp @ w + label[:, None]) + 0.3 * torch.sin(3 * label)[:, None]


class ExactF(torch.nn.Module):
    """The exact F of a Gaussian mixture: recovers sigma from the label, x_hat from c_in x_hat, and returns
    (D_exact - c_skip x_hat)/c_out with D_exact = x_hat + sigma^2 grad log p_sigma(x_hat) (Tweedie)."""

    def __init__(self, mix: toy.GaussianMixture, pre: EDMPreconditioning) -> None:
        super().__init__()
        self.mix, self.pre = mix, pre
        self.log_noise_labels = pre.log_labels
        self.labels = []

    def forward(self, inp: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        self.labels.append(label)
        c_noise = torch.log(label) if self.log_noise_labels else label
        sigma = torch.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = (c[:, None] for c in self.pre.coefficients(sigma))
        x_hat = inp / c_in
        d = x_hat + sigma[:, None] ** 2 * self.mix.score(x_hat, 1.0, sigma)
        return (d - c_skip * x_hat) / c_out


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("log_labels", [False, True])
def test_exact_f_gives_the_exact_score_through_the_adapter(sde_name, log_labels):
    """D built from the exact F is the exact denoiser, so get_score_fn returns the oracle's score at every t."""
    sde, mix = SDES[sde_name], toy.random_mixture(3, 4, seed=1)
    pre = EDMPreconditioning(0.5, log_labels)
    net = ExactF(mix, pre)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=g, dtype=torch.float64) * (sde.T - 1e-4) + 1e-4
    x = sde.mean_coeff(t)[:, None] * mix.sample(64, g) + sde.marginal_std(t)[:, None] * torch.randn(
        64, 3, generator=g, dtype=torch.float64)
    ours = parameterization.get_score_fn(sde, net, preconditioning=pre)(x, t)
    torch.testing.assert_close(ours, mix.score_fn(sde)(x, t), rtol=1e-9, atol=1e-9)
    sigma = sde.sigma(t)
    expected_label = sigma ** 0.25 if log_labels else torch.log(sigma) / 4
    torch.testing.assert_close(net.labels[-1], expected_label)
    # the sigma-space samplers' denoiser (the one adapter) gives D = E[x0 | x] as well
    denoise = parameterization.denoiser(sde, parameterization.get_score_fn(sde, net, preconditioning=pre))
    x_hat = mix.sample(8, g) + 0.7 * torch.randn(8, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(denoise(x_hat, 0.7), x_hat + 0.49 * mix.score(x_hat, 1.0, 0.7), rtol=1e-7, atol=1e-7)


def test_denoiser_tends_to_the_identity_as_sigma_goes_to_zero():
    pre = EDMPreconditioning(0.5)
    net = random_net(4, 7)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gaps = [float((pre.denoise(net, x, torch.full((16,), s, dtype=torch.float64)) - x).abs().max())
            for s in (1e-2, 1e-4, 1e-6)]
    assert gaps[2] < 1e-5 and gaps[1] < 1e-3
    assert gaps[0] / gaps[1] > 50 and gaps[1] / gaps[2] > 50  # |D - x| = O(sigma)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_edm_weighted_loss_is_the_unit_weight_mse_of_f_against_its_target(sde_name):
    """dsm_loss(weighting='edm', lognormal sigma) of the preconditioned network = mean |F - F*|^2 = EDM's eq. 2."""
    sde, pre = SDES[sde_name], EDMPreconditioning(0.5)
    net = random_net(3, 8)
    g = torch.Generator().manual_seed(4)
    x0 = 0.5 * torch.randn(32, 3, generator=g, dtype=torch.float64)
    u, z, normal = (torch.rand(32, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64),
                    torch.randn(32, generator=g, dtype=torch.float64))
    score_fn = parameterization.get_score_fn(sde, net, preconditioning=pre)
    loss = losses.get_loss_fn(sde, reduce_mean=True, weighting="edm", time_sampling="lognormal")(
        score_fn, x0, noise=(u, z, normal))
    t, _ = losses.sample_time(sde, u, 1e-5, "lognormal", normal=normal)
    sigma = sde.sigma(t)
    assert sigma.min() < 0.05 and sigma.max() > 1.0  # EDM's range of noise levels
    x_hat = x0 + sigma[:, None] * z
    c_in, c_noise = pre.coefficients(sigma)[2:]
    f = net(c_in[:, None] * x_hat, c_noise)
    torch.testing.assert_close(loss, ((f - pre.target(x0, x_hat, sigma)) ** 2).mean(), rtol=1e-9, atol=0)


def _tiny_image_spec(**model):
    from configs.vp.digits_edm import get_config
    c = get_config()
    c.model.nf, c.model.attn_resolutions = 8, ()
    c.model.update(model)
    return Spec.from_config(c)


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp_fourier", "ddpm", "mlp"])
def test_every_architecture_sees_c_in_x_and_c_noise(arch):
    if arch == "mlp":
        from tiny_configs import tiny
        c = tiny()
        c.model.preconditioning, c.model.sigma_data = "edm", 2.0
        spec = Spec.from_config(c)
    elif arch == "ddpm":
        spec = _tiny_image_spec(name="ddpm")
    else:
        spec = _tiny_image_spec(embedding_type="fourier" if arch == "ncsnpp_fourier" else "positional")
    model, sde = builders.build_model(spec, torch.device("cpu")), builders.sde_from_config(spec)
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args))
    x = torch.randn(3, *spec.shape, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([1e-3, 0.3, 1.0])
    score = builders.score_fn_from_model(spec, sde, model)(x, t)
    assert torch.isfinite(score).all() and score.shape == x.shape
    sigma, m = sde.sigma(t.double()), sde.mean_coeff(t.double())
    c_in, c_noise = model.preconditioning.coefficients(sigma)[2:]
    shape = (-1,) + (1,) * (x.ndim - 1)
    inp, label = seen[-1][:2]
    torch.testing.assert_close(inp, (c_in.reshape(shape) * x / m.reshape(shape)).float())
    torch.testing.assert_close(label, (torch.exp(c_noise) if arch == "ncsnpp_fourier" else c_noise).float())


def test_spec_fields_defaults_and_one_line_errors():
    spec = _tiny_image_spec()
    assert spec.model.preconditioning == "edm" and spec.model.sigma_data == 0.5
    opts = step_options(spec)
    assert (opts["weighting"], opts["time_sampling"], opts["sigma_data"]) == ("edm", "lognormal", 0.5)
    assert (opts["p_mean"], opts["p_std"]) == (-1.2, 1.2)
    from configs.vp.digits_edm import get_config
    c = get_config()
    c.training.weighting = None                         # unset: EDM's lambda(sigma) with EDM preconditioning
    assert step_options(Spec.from_config(c))["weighting"] == "edm"
    assert step_options(Spec.from_config({}))["weighting"] is None
    bad = {"discrete": ({"training": {"continuous": False}}, "continuous"),
           "prediction": ({"model": {"prediction": "eps"}}, "prediction"),
           "scale_by_sigma": ({"model": {"scale_by_sigma": True}}, "scale_by_sigma"),
           "uncentered": ({"data": {"centered": False}}, "centered"),
           "unknown": ({"model": {"preconditioning": "karras"}}, "preconditioning"),
           "sigma_data": ({"model": {"sigma_data": 0.0}}, "sigma_data"),
           "p_std": ({"training": {"lognormal_std": -1.0}}, "lognormal_std")}
    for name, (change, word) in bad.items():
        cfg = {"data": {"centered": True}, "model": {"preconditioning": "edm"}}
        for section, fields in change.items():
            cfg.setdefault(section, {}).update(fields)
        with pytest.raises(ValueError, match=word) as err:
            Spec.from_config(cfg)
        assert "\n" not in str(err.value), name


def test_discrete_time_network_refuses_preconditioning():
    with pytest.raises(ValueError, match="continuous"):
        parameterization.get_score_fn(SDES["vp"], ConditionalMLP(2, (8,), 8), continuous=False,
                                      preconditioning=EDMPreconditioning())


def test_checkpoint_round_trip_keeps_the_preconditioned_network(tmp_path):
    import score_sde
    from score_sde import training
    from tiny_configs import tiny
    c = tiny(n_iters=2)
    c.model.preconditioning, c.model.sigma_data = "edm", 2.0
    c.training.time_sampling = "lognormal"
    state = training.train(c, str(tmp_path), progress=False)
    exp = score_sde.load(str(tmp_path))
    assert exp.model.preconditioning == EDMPreconditioning(2.0) and exp.step == 2
    state["ema"].copy_to(state["model"].parameters())
    spec = Spec.from_config(c)
    x, t = torch.randn(5, 2, generator=torch.Generator().manual_seed(6)), torch.linspace(0.01, 1.0, 5)
    trained = builders.score_fn_from_model(spec, exp.sde, state["model"].eval())(x, t)
    torch.testing.assert_close(exp.score_fn(x, t), trained, rtol=0, atol=0)
    # the same weights read without the preconditioning give another score: the option is what was restored
    exp.model.preconditioning = None
    plain = parameterization.get_score_fn(exp.sde, exp.model, prediction="eps")
    assert not torch.allclose(plain(x, t), trained)
    assert math.isfinite(float(trained.detach().abs().max()))
    # resuming the workdir under another preconditioning is refused by the checkpoint fingerprint
    c.model.preconditioning = "none"
    with pytest.raises(ValueError, match="preconditioning"):
        training.train(c, str(tmp_path), progress=False)
