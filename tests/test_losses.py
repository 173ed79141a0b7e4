"""Each loss is minimised by the exact score; the train step is safe against non-finite losses."""
import ml_collections
import pytest
import torch

from score_sde import losses, sde_lib, toy
from score_sde.models.ema import ExponentialMovingAverage

SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0)}
CASES = [("dsm", False), ("dsm", True), ("ddpm", False), ("smld", False)]


def perturbations(score_fn, sde):
    unit = torch.tensor([1.0, -0.5], dtype=torch.float64)
    yield lambda x, t: 1.15 * score_fn(x, t)
    yield lambda x, t: 0.85 * score_fn(x, t)
    yield lambda x, t: score_fn(x, t) + 0.2 * unit / sde.marginal_std(t)[:, None]


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("kind,lw", CASES, ids=["dsm", "dsm-likelihood", "ddpm", "smld"])
def test_loss_is_smallest_at_the_exact_score(name, kind, lw):
    sde, gmm = SDES[name], toy.ring_mixture(8, 4.0, 0.5)
    exact = gmm.score_fn(sde) if kind == "dsm" else gmm.discrete_score_fn(sde)
    loss_fn = losses.get_loss_fn(sde, kind=kind, likelihood_weighting=lw, eps=1e-3)
    x0 = gmm.sample(20000, torch.Generator().manual_seed(0))
    at = lambda f: float(loss_fn(f, x0, generator=torch.Generator().manual_seed(1)))  # common random numbers
    best = at(exact)
    for other in perturbations(exact, sde):
        assert at(other) > best


def test_loss_gap_equals_weighted_squared_perturbation():
    """L(s + d) - L(s) = E[s^2 |d|^2] / 2 for reduce_mean=False and the eps weighting (cross term vanishes)."""
    sde, gmm = SDES["vp"], toy.ring_mixture(8, 4.0, 0.5)
    loss_fn = losses.get_loss_fn(sde, kind="dsm", eps=1e-3)
    x0 = gmm.sample(50000, torch.Generator().manual_seed(2))
    exact = gmm.score_fn(sde)
    shifted = lambda x, t: exact(x, t) + 0.3 / sde.marginal_std(t)[:, None]
    at = lambda f: float(loss_fn(f, x0, generator=torch.Generator().manual_seed(3)))
    assert at(shifted) - at(exact) == pytest.approx(0.5 * 2 * 0.3 ** 2, rel=0.1)


def test_bad_loss_options():
    with pytest.raises(ValueError, match="unknown loss kind"):
        losses.get_loss_fn(SDES["vp"], kind="ncsn")
    with pytest.raises(ValueError, match="likelihood_weighting"):
        losses.get_loss_fn(SDES["vp"], kind="ddpm", likelihood_weighting=True)


class TinyEpsNet(torch.nn.Module):
    prediction = "eps"

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def forward(self, x, labels):
        return self.net(torch.cat([x, labels[:, None].to(x.dtype) / 1000], dim=1))


def optim_config(**kw):
    base = dict(optimizer="Adam", lr=1e-2, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=10, grad_clip=1.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def make_state():
    torch.manual_seed(0)
    model = TinyEpsNet()
    opt = losses.get_optimizer(optim_config(), model.parameters())
    return dict(model=model, optimizer=opt, ema=ExponentialMovingAverage(model.parameters(), 0.9), step=0)


def test_train_step_warms_up_lr_and_updates_ema():
    state, sde = make_state(), SDES["vp"]
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(optim_config()))
    batch = toy.ring_mixture().sample(64, torch.Generator().manual_seed(0)).float()
    before = [p.detach().clone() for p in state["model"].parameters()]
    stats = step_fn(state, batch)
    assert state["step"] == 1 and stats["lr"] == pytest.approx(1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, state["model"].parameters()))
    assert state["ema"].num_updates == 1


def test_non_finite_loss_stops_before_touching_parameters():
    state, sde = make_state(), SDES["vp"]
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(optim_config()))
    before = [p.detach().clone() for p in state["model"].parameters()]
    batch = torch.full((8, 2), float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        step_fn(state, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, state["model"].parameters()))
    assert state["step"] == 0


def test_eval_step_uses_ema_weights_and_restores():
    state, sde = make_state(), SDES["vp"]
    model, ema = state["model"], state["ema"]
    with torch.no_grad():
        for s in ema.shadow_params:
            s.mul_(0.0)   # EMA weights zero: the network outputs zeros -> loss = E|z|^2 / 2 * d
    before = [p.detach().clone() for p in model.parameters()]
    eval_fn = losses.get_step_fn(sde, train=False)
    batch = toy.ring_mixture().sample(20000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    loss = eval_fn(state, batch)["loss"]
    assert loss == pytest.approx(1.0, rel=0.05)   # 0.5 * sum over 2 dims of E[z^2]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_ema_state_round_trip_and_warmup():
    model = TinyEpsNet()
    ema = ExponentialMovingAverage(model.parameters(), 0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model.parameters())  # rate min(0.999, 2/11): shadow moves 9/11 of the way
    first = next(iter(model.parameters()))
    torch.testing.assert_close(ema.shadow_params[0], first - 1 + 9 / 11)
    other = ExponentialMovingAverage(TinyEpsNet().parameters(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow_params[0], ema.shadow_params[0])
