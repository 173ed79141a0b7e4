"""Class-conditional networks (num_classes=None leaves them unchanged), label dropout, noise-conditional
classifiers and their loss (minimised by the exact p_t(c | x_t) of the mixture oracle)."""
import math

import pytest
import torch

from score_sde import classifier, conditioning, sde_lib
from score_sde import toy_conditional as tc
from score_sde.models import classifier as cls_models
from score_sde.models import ddpm, mlp, ncsn, ncsnpp
from score_sde.models.label import drop_labels
from tests.test_models import small_ncsn, small_unet

import ml_collections

MLP_CFG = ml_collections.ConfigDict({"model": {"name": "mlp", "hidden_dims": (16, 16), "embedding_dim": 8},
                                     "data": {"dim": 2}, "training": {"sde": "vpsde"}})
DDPM_CFG = ml_collections.ConfigDict({
    "model": dict(name="ddpm", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                  resamp_with_conv=True, conditional=True, scale_by_sigma=False, nonlinearity="swish",
                  sigma_min=0.01, sigma_max=50.0, num_scales=1000),
    "data": {"image_size": 8, "num_channels": 1, "centered": True}, "training": {"sde": "vpsde"}})

ARCHS = {  # name -> (class, config, x, noise labels)
    "mlp": (mlp.MLP, MLP_CFG, lambda: torch.randn(3, 2), torch.tensor([1.0, 5.0, 9.0])),
    "ncsnpp": (ncsnpp.NCSNpp, small_unet(), lambda: torch.rand(3, 2, 8, 8), torch.tensor([0.5, 3.0, 9.0])),
    "ddpm": (ddpm.DDPM, DDPM_CFG, lambda: torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999])),
    "ncsn": (ncsn.NCSN, small_ncsn("ncsn"), lambda: torch.rand(3, 2, 8, 8), torch.tensor([0, 4, 9])),
    "ncsnv2": (ncsn.NCSNv2, small_ncsn("ncsnv2_64"), lambda: torch.rand(3, 2, 8, 8), torch.tensor([0, 4, 9])),
}


def differs(a, b):
    """Relative difference well above round-off (the U-Nets' zero-initialised heads make outputs tiny)."""
    return float((a - b).detach().abs().max()) > 1e-3 * float(b.detach().abs().max())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_num_classes_none_is_the_unconditional_network(arch):
    cls, cfg, make_x, labels = ARCHS[arch]
    torch.manual_seed(0)
    plain = cls(cfg)
    torch.manual_seed(0)
    cond = cls(cfg, num_classes=3)
    torch.manual_seed(0)
    same = cls(cfg, num_classes=None)
    sd_plain, sd_cond = plain.state_dict(), cond.state_dict()
    assert list(sd_plain) == list(same.state_dict()) and all(torch.equal(sd_plain[k], v)
                                                               for k, v in same.state_dict().items())
    assert [k for k in sd_cond if k not in sd_plain] == ["class_embed.weight"]
    assert list(sd_cond)[:-1] == list(sd_plain)  # the embedding is registered last: old keys keep their order
    assert all(torch.equal(sd_plain[k], sd_cond[k]) for k in sd_plain)
    x = make_x()
    plain.eval(), cond.eval()
    ref = plain(x, labels)
    torch.testing.assert_close(cond(x, labels), ref)  # zero-initialised embedding: same function at start
    with torch.no_grad():  # away from the (partly zero) initialisation, so every path carries signal
        for p in cond.parameters():
            p.add_(0.1 * torch.randn_like(p))
        cond.class_embed.weight.normal_()
    y = torch.tensor([0, 1, 2])
    out = cond(x, labels, y=y)
    assert differs(out, cond(x, labels))
    torch.testing.assert_close(cond(x, labels, y=torch.full((3,), 3)), cond(x, labels))  # None = null class 3
    assert differs(cond(x, labels, y=torch.tensor([1, 2, 0])), out)
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, labels, y=y)
    with pytest.raises(ValueError, match="class labels"):
        cond(x, labels, y=torch.tensor([0, 1, 4]))


def test_conditional_score_fn_and_classifier_free_on_a_network():
    torch.manual_seed(0)
    net = mlp.MLP(MLP_CFG, num_classes=2)
    net.prediction = "eps"
    with torch.no_grad():
        net.class_embed.weight.normal_()
    sde = sde_lib.VPSDE()
    fn = conditioning.conditional_score_fn(sde, net)
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    c, u = fn(x, t, torch.ones(4, dtype=torch.long)), fn(x, t, None)
    s = float(sde.marginal_std(t[:1]))
    torch.testing.assert_close(u, -net(x, t * (sde.N - 1)) / s)  # null class, eps -> score
    torch.testing.assert_close(conditioning.classifier_free(fn, 1, 2.0)(x, t), 3 * c - 2 * u)


def test_drop_labels():
    y = torch.arange(10).repeat(1000)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(y, 0.0, 10, g), y)
    assert (drop_labels(y, 1.0, 10, g) == 10).all()
    dropped = drop_labels(y, 0.2, 10, g)
    frac = float((dropped == 10).double().mean())
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / y.numel())
    assert torch.equal(dropped[dropped != 10], y[dropped != 10])
    with pytest.raises(ValueError, match="dropout"):
        drop_labels(y, 1.5, 10)


def test_exact_classifier_minimises_the_classifier_loss():
    """Cross-entropy is minimised by the true p_t(c | x_t): the oracle's noisy classifier beats tempered ones."""
    lm, sde = tc.overlapping_mixture(2, seed=0), sde_lib.VPSDE()
    g = torch.Generator().manual_seed(0)
    k = torch.multinomial(lm.mixture.weights, 20000, replacement=True, generator=g)
    x0 = lm.mixture.means[k] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(lm.mixture.covs)[k],
                                            torch.randn(20000, 2, generator=g, dtype=torch.float64))
    labels = lm.labels[k]

    def exact(temperature):
        def logits(x, log_sigma):
            sigma = log_sigma.exp().double()
            t = sde.t_from_sigma(sigma)
            return lm.log_prob_class_t(x, sde.mean_coeff(t), sde.marginal_std(t)) / temperature
        return logits

    losses = {T: float(classifier.classifier_loss(sde, exact(T), x0, labels, torch.Generator().manual_seed(1)))
              for T in (0.7, 1.0, 1.4)}
    assert losses[1.0] < losses[0.7] and losses[1.0] < losses[1.4], losses


def test_mlp_classifier_training_approaches_the_exact_classifier():
    lm, sde = tc.overlapping_mixture(2, seed=0), sde_lib.VPSDE()
    torch.manual_seed(0)
    net = cls_models.MLPClassifier(2, lm.num_classes, hidden_dims=(64, 64), embedding_dim=32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        k = torch.multinomial(lm.mixture.weights, 256, replacement=True, generator=g)
        x0 = lm.mixture.means[k] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(lm.mixture.covs)[k],
                                                torch.randn(256, 2, generator=g, dtype=torch.float64))
        classifier.classifier_train_step(sde, net, opt, x0.float(), lm.labels[k], g)
    x = lm.mixture.marginal(float(sde.mean_coeff(torch.tensor(0.1))),
                            float(sde.marginal_std(torch.tensor(0.1)))).sample(4000, torch.Generator().manual_seed(5))
    t = torch.full((4000,), 0.1)
    learned = classifier.log_prob_fn(sde, net)(x.float(), t)
    exact = lm.classifier_fn(sde)(x, t.double())
    kl = float((exact.exp() * (exact - learned.detach().double())).sum(1).mean())
    assert kl < 0.1, kl  # the Bayes classifier's own entropy here is ~0.5 nats
    torch.testing.assert_close(learned.exp().sum(1), torch.ones(4000))


def test_wide_resnet_classifier_shapes_and_gradients():
    torch.manual_seed(0)
    net = cls_models.WideResNetClassifier(channels=1, num_classes=10, depth=10, widen_factor=2)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    logp = classifier.log_prob_fn(sde_lib.VESDE(), net)(x, torch.tensor([0.1, 0.5, 0.9]))
    assert logp.shape == (3, 10)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(3))
    (grad,) = torch.autograd.grad(logp[:, 3].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="depth"):
        cls_models.WideResNetClassifier(channels=1, num_classes=10, depth=12)
    big = cls_models.WideResNetClassifier(channels=3, num_classes=10)  # WRN-28-10 (about 36.5M parameters)
    assert 36e6 < sum(p.numel() for p in big.parameters()) < 37.5e6


def test_conditional_dsm_is_minimised_by_the_class_score():
    """DSM on labelled data with with_labels(cond_score_fn, y): the exact p_t(x | c) score beats p_t(x)'s."""
    from score_sde import losses
    lm, sde = tc.overlapping_mixture(2, seed=0), sde_lib.VPSDE()
    g = torch.Generator().manual_seed(0)
    k = torch.multinomial(lm.mixture.weights, 20000, replacement=True, generator=g)
    x0 = lm.mixture.means[k] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(lm.mixture.covs)[k],
                                            torch.randn(20000, 2, generator=g, dtype=torch.float64))
    y = lm.labels[k]
    classes = [lm.class_mixture(c) for c in range(lm.num_classes)]

    def cond_score(x, t, label):
        m, s = sde.mean_coeff(t), sde.marginal_std(t)
        if label is None:
            return lm.mixture.score(x, m, s)
        every = torch.stack([c.score(x, m, s) for c in classes], 1)  # [B, C, d]
        return every[torch.arange(x.shape[0]), label]

    loss = {name: float(losses.dsm_loss(sde, conditioning.with_labels(cond_score, lab), x0,
                                        generator=torch.Generator().manual_seed(1)))
            for name, lab in (("conditional", y), ("unconditional", None))}
    assert loss["conditional"] < loss["unconditional"], loss
