"""eps/score/x0/v conversions are exact mutual inverses; wrapped networks give the right score."""
import itertools

import pytest
import torch

from score_sde import parameterization as P
from score_sde import sde_lib, toy

SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE()}


def forward_pair(sde, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, 2, dtype=torch.float64, generator=g)
    eps = torch.randn(n, 3, 2, dtype=torch.float64, generator=g)
    t = torch.rand(n, dtype=torch.float64, generator=g) * 0.99 + 0.01
    m, s = sde.mean_coeff(t), sde.marginal_std(t)
    return x0, eps, t, m, s, m[:, None, None] * x0 + s[:, None, None] * eps


@pytest.mark.parametrize("name", SDES)
def test_conversions_recover_the_truth(name):
    x0, eps, t, m, s, xt = forward_pair(SDES[name])
    mb, sb = m[:, None, None], s[:, None, None]
    truth = {"eps": eps, "x0": x0, "score": -eps / sb, "v": (mb * eps - sb * x0) / torch.sqrt(mb ** 2 + sb ** 2)}
    for src, dst in itertools.product(P.PREDICTIONS, repeat=2):
        torch.testing.assert_close(P.convert(truth[src], xt, m, s, src, dst), truth[dst], rtol=1e-9, atol=1e-9)


def test_v_matches_salimans_ho_for_vp():
    x0, eps, t, m, s, xt = forward_pair(SDES["vp"])
    alpha, sigma = m[:, None, None], s[:, None, None]   # alpha^2 + sigma^2 = 1
    torch.testing.assert_close(P.convert(eps, xt, m, s, "eps", "v"), alpha * eps - sigma * x0)


class OracleNet(torch.nn.Module):
    """A 'network' that returns the exact prediction, reading only (x, label) like a real one."""

    def __init__(self, gmm, sde, prediction, continuous):
        super().__init__()
        self.gmm, self.sde, self.prediction, self.continuous = gmm, sde, prediction, continuous
        self.labels = None

    def forward(self, x, labels):
        self.labels = labels
        t = self._time(labels)
        if self.continuous:
            m, s = self.sde.mean_coeff(t), self.sde.marginal_std(t)
        else:
            m, s = self.sde.discrete_marginal(self.sde.discrete_index(t))
        score = self.gmm.score(x, m, s)
        return P.convert(score, x, m, s, "score", self.prediction)

    def _time(self, labels):
        sde = self.sde
        if isinstance(sde, sde_lib.VESDE):
            if self.continuous:
                return sde.t_from_sigma(labels.double())
            return (sde.N - 1 - labels).double() / (sde.N - 1)
        return labels.double() / (sde.N - 1)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("prediction", P.PREDICTIONS)
@pytest.mark.parametrize("continuous", [True, False])
def test_score_fn_of_any_prediction_is_the_exact_score(name, prediction, continuous):
    sde, gmm = SDES[name], toy.ring_mixture(4, 2.0, 0.3)
    net = OracleNet(gmm, sde, prediction, continuous)
    score_fn = P.get_score_fn(sde, net, continuous=continuous)
    t = torch.tensor([0.002, 0.3, 0.77, 1.0], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = gmm.score_fn(sde) if continuous else gmm.discrete_score_fn(sde)
    torch.testing.assert_close(score_fn(x, t), exact(x, t), rtol=1e-7, atol=1e-9)
    if continuous:
        assert net.labels.dtype == torch.float64
    else:
        assert net.labels.dtype == torch.long


def test_label_conventions():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    vp, ve = sde_lib.VPSDE(N=1000), sde_lib.VESDE(N=1000)
    torch.testing.assert_close(vp.network_label(t, True), t * 999)
    assert vp.network_label(t, False).tolist() == [0, 500, 999]  # round(499.5) -> 500 (half to even: 500)
    torch.testing.assert_close(ve.network_label(t, True), ve.marginal_std(t))
    assert ve.network_label(t, False).tolist() == [999, 499, 0]


def test_errors_are_clear():
    sde = SDES["vp"]
    net = torch.nn.Identity()
    with pytest.raises(ValueError, match="declare what it predicts"):
        P.get_score_fn(sde, lambda x, l: x)
    with pytest.raises(ValueError, match="unknown prediction"):
        P.get_score_fn(sde, net, prediction="noise")
    bad = P.get_score_fn(sde, lambda x, l: x[:, :1], prediction="eps")
    with pytest.raises(ValueError, match="output shape"):
        bad(torch.randn(2, 3), torch.rand(2))
