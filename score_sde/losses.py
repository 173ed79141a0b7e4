"""Denoising score matching losses, the optimizer, and one training/evaluation step.

All losses are written against a score_fn(x, t) so they can be checked at the exact score:
    continuous DSM (Song et al. 2021, eq. 7):  E_t E_z || s(t) score(x_t, t) + z ||^2, t ~ U(eps, T)
    with likelihood weighting (Song et al. 2021b, lambda = g^2):  g(t)^2 || score + z / s(t) ||^2
    discrete (DDPM eps-loss, Ho et al. Alg. 1 == SMLD with lambda = sigma^2, Song & Ermon 2019 eq. 6):
        E_i E_z || s_i score(x_i, t_i) + z ||^2, x_i = m_i x_0 + s_i z, i ~ U{0..N-1}
For an eps-predicting network s * score = -eps_hat, so these are the familiar || eps_hat - eps ||^2.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional

import torch

from . import parameterization
from .sde_lib import SDE
from .utils import batch_broadcast, rand_like, randn_like

LOSS_KINDS = ("dsm", "ddpm", "smld")
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossFn = Callable[..., torch.Tensor]


def _reduce(per_dim: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    """Per-sample reduction over data dimensions: mean, or half the sum (score_sde_pytorch's convention)."""
    flat = per_dim.reshape(per_dim.shape[0], -1)
    return flat.mean(dim=1) if reduce_mean else 0.5 * flat.sum(dim=1)


def dsm_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce_mean: bool = False,
             likelihood_weighting: bool = False, eps: float = 1e-5,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Continuous-time denoising score matching, averaged over the batch."""
    u = rand_like(x0.new_empty(x0.shape[0]), generator)
    t = u * (sde.T - eps) + eps
    z = randn_like(x0, generator)
    mean, std = sde.marginal_prob(x0, t)
    std_b = batch_broadcast(std, x0)
    score = score_fn(mean + std_b * z, t)
    if not likelihood_weighting:
        return _reduce((score * std_b + z) ** 2, reduce_mean).mean()
    g2 = sde.diffusion(t) ** 2
    return (_reduce((score + z / std_b) ** 2, reduce_mean) * g2).mean()


def discrete_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce_mean: bool = False,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DDPM eps-loss / SMLD sigma^2-weighted loss on the SDE's discrete levels (they coincide)."""
    u = rand_like(x0.new_empty(x0.shape[0]), generator)
    i = torch.clamp((u * sde.N).long(), max=sde.N - 1)
    t = sde.discrete_times().to(x0)[i]
    m, s = (batch_broadcast(v, x0) for v in sde.discrete_marginal(i, like=x0))
    z = randn_like(x0, generator)
    score = score_fn(m * x0 + s * z, t)
    return _reduce((s * score + z) ** 2, reduce_mean).mean()


def get_loss_fn(sde: SDE, *, kind: str = "dsm", reduce_mean: bool = False,
                likelihood_weighting: bool = False, eps: float = 1e-5) -> LossFn:
    """loss_fn(score_fn, x0, generator=None) -> scalar, for kind 'dsm' (continuous), 'ddpm' or 'smld'."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; choose one of {LOSS_KINDS}")
    if not 0 < eps < sde.T:
        raise ValueError(f"loss eps (smallest training time) must lie in (0, T={sde.T}), got {eps}")
    if kind != "dsm" and likelihood_weighting:
        raise ValueError("likelihood_weighting applies to continuous training only; "
                         "set training.continuous=True or training.likelihood_weighting=False")

    def loss_fn(score_fn: ScoreFn, x0: torch.Tensor, generator: Optional[torch.Generator] = None):
        if kind == "dsm":
            return dsm_loss(sde, score_fn, x0, reduce_mean=reduce_mean,
                            likelihood_weighting=likelihood_weighting, eps=eps, generator=generator)
        return discrete_loss(sde, score_fn, x0, reduce_mean=reduce_mean, generator=generator)

    return loss_fn


# ----------------------------------------------------------------------------- optimization
def get_optimizer(optim_config, params) -> torch.optim.Optimizer:
    """Adam or AdamW from config.optim (lr, beta1, eps, weight_decay)."""
    name = optim_config.optimizer
    kwargs = dict(lr=optim_config.lr, betas=(optim_config.beta1, 0.999), eps=optim_config.eps,
                  weight_decay=optim_config.weight_decay)
    if name == "Adam":
        return torch.optim.Adam(params, **kwargs)
    if name == "AdamW":
        return torch.optim.AdamW(params, **kwargs)
    raise ValueError(f"optim.optimizer={name!r} is not supported; choose 'Adam' or 'AdamW'")


def optimization_manager(optim_config) -> Callable[..., float]:
    """optimize_fn(optimizer, params, step): linear learning-rate warm-up, gradient clipping, step.

    Returns the gradient norm before clipping.
    """
    lr, warmup, grad_clip = optim_config.lr, optim_config.warmup, optim_config.grad_clip

    def optimize_fn(optimizer: torch.optim.Optimizer, params, step: int) -> float:
        params = [p for p in params if p.grad is not None]
        for group in optimizer.param_groups:
            group["lr"] = lr * min((step + 1) / warmup, 1.0) if warmup > 0 else lr
        max_norm = grad_clip if grad_clip and grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        optimizer.step()
        return float(norm)

    return optimize_fn


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; fp32 (no autocast) otherwise. Losses stay in fp32."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"training.precision={precision!r}; choose 'fp32' or 'bf16'")
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def get_step_fn(sde: SDE, *, train: bool, optimize_fn: Optional[Callable] = None, kind: str = "dsm",
                continuous: bool = True, reduce_mean: bool = False, likelihood_weighting: bool = False,
                eps: float = 1e-5, prediction: Optional[str] = None,
                precision: str = "fp32") -> Callable[[Dict, torch.Tensor], Dict[str, float]]:
    """One optimization step (train) or one EMA-weight loss evaluation (eval) on a batch.

    `state` holds model, ema, optimizer and step. A non-finite loss raises FloatingPointError
    before any parameter is touched, so the last good checkpoint stays valid.
    """
    loss_fn = get_loss_fn(sde, kind=kind, reduce_mean=reduce_mean,
                          likelihood_weighting=likelihood_weighting, eps=eps)

    def compute_loss(model, batch, is_train: bool) -> torch.Tensor:
        score_fn = parameterization.get_score_fn(sde, model, continuous=continuous,
                                                 prediction=prediction, train=is_train)
        with autocast_context(batch.device, precision):
            return loss_fn(score_fn, batch).float()

    def step_fn(state: Dict, batch: torch.Tensor) -> Dict[str, float]:
        model = state["model"]
        if not train:
            ema = state["ema"]
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            try:
                with torch.no_grad():
                    loss = compute_loss(model, batch, False)
            finally:
                ema.restore(model.parameters())
            return {"loss": float(loss)}
        optimizer = state["optimizer"]
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model, batch, True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at step {state['step']}; "
                                     "parameters were not updated - lower optim.lr or set optim.grad_clip")
        loss.backward()
        grad_norm = optimize_fn(optimizer, model.parameters(), step=state["step"])
        state["step"] += 1
        state["ema"].update(model.parameters())
        return {"loss": float(loss.detach()), "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}

    return step_fn
