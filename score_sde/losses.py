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
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from . import likelihood, parameterization
from .sde_lib import SDE
from .utils import batch_broadcast, rand_like, randn_like

LOSS_KINDS = ("dsm", "ddpm", "smld")
WEIGHTINGS = ("eps", "likelihood", "x0", "v", "edm")
TIME_SAMPLINGS = ("uniform", "importance", "lognormal")
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VarianceFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[..., torch.Tensor]


def _reduce(per_dim: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    """Per-sample reduction over data dimensions: mean, or half the sum (score_sde_pytorch's convention)."""
    flat = per_dim.reshape(per_dim.shape[0], -1)
    return flat.mean(dim=1) if reduce_mean else 0.5 * flat.sum(dim=1)


# ----------------------------------------------------------------------------- weighting and time sampling
def eps_weight(weighting: str, m: torch.Tensor, s: torch.Tensor, g2: Optional[torch.Tensor] = None,
               sigma_data: float = 0.5) -> torch.Tensor:
    """w(t) such that the objective is w || eps_hat - eps ||^2, whatever the network predicts.

    With sigma = s/m: eps -> 1 (Ho et al.'s L_simple); likelihood -> g^2/s^2 (lambda = g^2 on the score,
    Song et al. 2021b, thm. 1); x0 -> sigma^2 (x0 - x0_hat = sigma (eps_hat - eps)); v -> 1 + sigma^2
    (v - v_hat = sqrt(m^2 + s^2)/m (eps_hat - eps)); edm -> lambda(sigma) sigma^2 = (sigma^2 + sigma_data^2)
    / sigma_data^2 (Karras et al. 2022, table 1, moved from x0 to eps space).
    """
    sigma2 = (s / m) ** 2
    if weighting == "eps":
        return torch.ones_like(s)
    if weighting == "likelihood":
        if g2 is None:
            raise ValueError("likelihood weighting needs the continuous SDE's g(t); set training.continuous=True")
        return g2 / s ** 2
    if weighting == "x0":
        return sigma2
    if weighting == "v":
        return 1 + sigma2
    return (sigma2 + sigma_data ** 2) / sigma_data ** 2


def sample_time(sde: SDE, u: torch.Tensor, eps: float, time_sampling: str, p_mean: float = -1.2,
                p_std: float = 1.2, normal: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t, importance weight) from uniforms u (or standard normals for 'lognormal').

    uniform: t ~ U(eps, T), weight 1.
    importance: log sigma^2(t) uniform on [log sigma^2(eps), log sigma^2(T)]: density p(t) = (g^2/s^2)/Z,
      since g^2/s^2 = d log sigma^2/dt for every SDE here (Song et al. 2021b's importance sampling); the
      weight 1/((T - eps) p(t)) keeps the expectation of the uniform-t objective, and makes the
      likelihood-weighted integrand constant in t.
    lognormal: EDM's ln sigma ~ N(p_mean, p_std^2) (clamped to [sigma(eps), sigma(T)]), weight 1: a different
      objective, EDM's (Karras et al. 2022, section 5).
    """
    if time_sampling == "uniform":
        return u * (sde.T - eps) + eps, torch.ones_like(u)
    bounds = torch.tensor([eps, sde.T], dtype=torch.float64)
    log_lo, log_hi = (2 * torch.log(sde.sigma(bounds))).tolist()
    if time_sampling == "importance":
        sigma = torch.exp(0.5 * (log_lo + u.double() * (log_hi - log_lo)))
        t = sde.t_from_sigma(sigma).clamp(eps, sde.T)
        m, s = sde.mean_coeff(t), sde.marginal_std(t)
        density = (sde.diffusion(t) ** 2 / s ** 2) / (log_hi - log_lo)       # p(t) = (g^2/s^2) / Z
        return t.to(u.dtype), (1.0 / ((sde.T - eps) * density)).to(u.dtype)
    if normal is None:
        raise ValueError("time_sampling='lognormal' needs `normal`: standard normal draws shaped like u")
    sigma = torch.exp(p_mean + p_std * normal.double()).clamp(math.exp(0.5 * log_lo), math.exp(0.5 * log_hi))
    return sde.t_from_sigma(sigma).clamp(eps, sde.T).to(u.dtype), torch.ones_like(u)


def _check_weighting(weighting: str, time_sampling: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")


def _draws(x0: torch.Tensor, generator: Optional[torch.Generator], noise: Optional[Sequence[torch.Tensor]],
           lognormal: bool = False) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(u, z, normal) for a batch: drawn here (from `generator`, or torch's global one), or given as
    `noise` = (u, z) or (u, z, normal) per item (keyed by the data stream, score_sde.data_stream)."""
    if noise is None:
        u = rand_like(x0.new_empty(x0.shape[0]), generator)
        normal = randn_like(u, generator) if lognormal else None
        return u, randn_like(x0, generator), normal
    u, z = noise[0].to(x0.device, x0.dtype), noise[1].to(x0.device, x0.dtype)
    normal = noise[2].to(x0.device, x0.dtype) if len(noise) > 2 else None
    if u.shape != x0.shape[:1] or z.shape != x0.shape:
        raise ValueError(f"noise shapes u {tuple(u.shape)}, z {tuple(z.shape)} do not fit the batch "
                         f"{tuple(x0.shape)}; pass u of shape (B,) and z shaped like the batch")
    if lognormal and normal is None:
        raise ValueError("time_sampling='lognormal' needs noise=(u, z, normal) with standard normals of shape (B,)")
    return u, z, normal


# ----------------------------------------------------------------------------- losses
def dsm_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce_mean: bool = False,
             likelihood_weighting: bool = False, eps: float = 1e-5,
             generator: Optional[torch.Generator] = None, weighting: Optional[str] = None,
             time_sampling: str = "uniform", sigma_data: float = 0.5, p_mean: float = -1.2,
             p_std: float = 1.2, noise: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Continuous-time denoising score matching, averaged over the batch:
        E_t w(t) || s(t) score(x_t, t) + z ||^2 = E_t w(t) || eps_hat - eps ||^2   (Song et al. 2021, eq. 7)
    weighting (eps_weight; default 'eps', or 'likelihood' when likelihood_weighting) and time_sampling
    (sample_time) pick the objective; a network of any prediction type reaches it through score_fn."""
    weighting = weighting or ("likelihood" if likelihood_weighting else "eps")
    _check_weighting(weighting, time_sampling)
    u, z, normal = _draws(x0, generator, noise, time_sampling == "lognormal")
    t, iw = sample_time(sde, u, eps, time_sampling, p_mean, p_std, normal)
    mean, std = sde.marginal_prob(x0, t)
    std_b = batch_broadcast(std, x0)
    score = score_fn(mean + std_b * z, t)
    g2 = sde.diffusion(t) ** 2 if weighting == "likelihood" else None
    w = eps_weight(weighting, sde.mean_coeff(t), std, g2, sigma_data) * iw
    return (_reduce((score * std_b + z) ** 2, reduce_mean) * w).mean()


def discrete_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce_mean: bool = False,
                  generator: Optional[torch.Generator] = None, weighting: str = "eps",
                  sigma_data: float = 0.5, noise: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """DDPM eps-loss / SMLD sigma^2-weighted loss on the SDE's discrete levels (they coincide), optionally
    reweighted (eps_weight with the level's m_i, s_i; 'likelihood' is continuous-only: use hybrid_loss)."""
    _check_weighting(weighting, "uniform")
    if weighting == "likelihood":
        raise ValueError("likelihood weighting applies to continuous training; for discrete DDPM models "
                         "train the bound with training.learned_variance (hybrid loss)")
    u, z, _ = _draws(x0, generator, noise)
    i = torch.clamp((u * sde.N).long(), max=sde.N - 1)
    t = sde.discrete_times().to(x0)[i]
    m_i, s_i = sde.discrete_marginal(i, like=x0)
    m, s = (batch_broadcast(v, x0) for v in (m_i, s_i))
    score = score_fn(m * x0 + s * z, t)
    return (_reduce((s * score + z) ** 2, reduce_mean) * eps_weight(weighting, m_i, s_i, None, sigma_data)).mean()


def learned_variance_fn(sde: SDE, model: torch.nn.Module, *, continuous: bool = False,
                        prediction: Optional[str] = None, train: bool = False) -> VarianceFn:
    """Wrap a learned-variance network (2C output channels) into fn(x, t) -> (eps_hat, v), v in [0, 1] the
    interpolation between log beta and log beta~ (likelihood.split_learned_variance)."""
    src = parameterization.model_prediction_kind(model, prediction)

    def fn(x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        model.train(train)
        pred, v = likelihood.split_learned_variance(model(x, sde.network_label(t, continuous)).to(x.dtype))
        if pred.shape != x.shape:
            raise ValueError(f"learned-variance output {tuple(pred.shape)} per half differs from the input "
                             f"{tuple(x.shape)}; build the model with learned_variance=True (2C channels)")
        m, s = parameterization.marginal_coeffs(sde, t, continuous, pred)
        return parameterization.convert(pred, x, m, s, src, "eps"), v

    return fn


def hybrid_loss(sde: SDE, model_fn: VarianceFn, x0: torch.Tensor, *, vlb_weight: float = 1e-3,
                reduce_mean: bool = True, num_levels: int = 256, data_scale: float = 2.0,
                data_shift: float = -1.0, generator: Optional[torch.Generator] = None,
                noise: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Improved DDPM's L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, section 3.1) on the VP chain.

    model_fn(x_i, t_i) -> (eps_hat, v). At a uniform level i: ||eps_hat - eps||^2 plus lambda N L_i, the
    one-term estimate of the bound's sum, with L_i the KL (decoder -log p at i = 0) in bits, computed from the
    mean with eps_hat DETACHED: the bound trains only the variance, L_simple the mean.
    """
    chain = likelihood.ddpm_chain(sde)
    u, z, _ = _draws(x0, generator, noise)
    levels = torch.clamp((u * sde.N).long(), max=sde.N - 1)
    m, s = (batch_broadcast(c, x0) for c in sde.discrete_marginal(levels, like=x0))
    x_i = m * x0 + s * z
    eps_hat, v = model_fn(x_i, sde.discrete_times().to(x0)[levels])
    terms = likelihood.vlb_term(chain, levels, x0, x_i, eps_hat.detach(), variance="learned", v=v,
                                num_levels=num_levels, data_scale=data_scale, data_shift=data_shift)
    d = x0[0].numel()
    vlb = terms / math.log(2) / (d if reduce_mean else 1)
    return (_reduce((eps_hat - z) ** 2, reduce_mean) + vlb_weight * sde.N * vlb).mean()


def get_loss_fn(sde: SDE, *, kind: str = "dsm", reduce_mean: bool = False,
                likelihood_weighting: bool = False, eps: float = 1e-5, weighting: Optional[str] = None,
                time_sampling: str = "uniform", sigma_data: float = 0.5, p_mean: float = -1.2,
                p_std: float = 1.2) -> LossFn:
    """loss_fn(score_fn, x0, generator=None, noise=None) -> scalar, for kind 'dsm' (continuous), 'ddpm' or 'smld'.

    weighting: None (eps, or likelihood when likelihood_weighting) or one of WEIGHTINGS; time_sampling:
    one of TIME_SAMPLINGS (continuous only)."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; choose one of {LOSS_KINDS}")
    if not 0 < eps < sde.T:
        raise ValueError(f"loss eps (smallest training time) must lie in (0, T={sde.T}), got {eps}")
    if kind != "dsm" and likelihood_weighting:
        raise ValueError("likelihood_weighting applies to continuous training only; "
                         "set training.continuous=True or training.likelihood_weighting=False")
    if weighting is not None and likelihood_weighting and weighting != "likelihood":
        raise ValueError(f"likelihood_weighting=True contradicts weighting={weighting!r}; set only one")
    weighting = weighting or ("likelihood" if likelihood_weighting else "eps")
    _check_weighting(weighting, time_sampling)
    if kind != "dsm" and (weighting == "likelihood" or time_sampling != "uniform"):
        raise ValueError("likelihood weighting and importance/lognormal time sampling apply to continuous "
                         "training only; set training.continuous=True")

    def loss_fn(score_fn: ScoreFn, x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                noise: Optional[Sequence[torch.Tensor]] = None):
        if kind == "dsm":
            return dsm_loss(sde, score_fn, x0, reduce_mean=reduce_mean, eps=eps, generator=generator,
                            weighting=weighting, time_sampling=time_sampling, sigma_data=sigma_data,
                            p_mean=p_mean, p_std=p_std, noise=noise)
        return discrete_loss(sde, score_fn, x0, reduce_mean=reduce_mean, generator=generator,
                             weighting=weighting, sigma_data=sigma_data, noise=noise)

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
                precision: str = "fp32", weighting: Optional[str] = None, time_sampling: str = "uniform",
                sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                learned_variance: bool = False, vlb_weight: float = 1e-3, num_levels: int = 256,
                data_scale: float = 2.0, data_shift: float = -1.0) -> Callable[[Dict, torch.Tensor], Dict[str, float]]:
    """One optimization step (train) or one EMA-weight loss evaluation (eval) on a batch.

    The objective: get_loss_fn's options, or with learned_variance the hybrid loss (discrete VP only).
    `state` holds model, ema, optimizer and step; `noise` = (u, z[, normal]) per item (training passes the
    data stream's keyed draws) or None (drawn from torch's global generator). A non-finite loss raises
    FloatingPointError before any parameter is touched, so the last good checkpoint stays valid.
    """
    loss_fn = get_loss_fn(sde, kind=kind, reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting,
                          eps=eps, weighting=weighting, time_sampling=time_sampling, sigma_data=sigma_data,
                          p_mean=p_mean, p_std=p_std)
    if learned_variance:
        if continuous or kind != "ddpm":
            raise ValueError("learned variances (hybrid loss) apply to discrete DDPM training; set "
                             "training.continuous=False on a VP SDE, or learned_variance=False")
        likelihood.ddpm_chain(sde)  # a VP chain, or a clear error now rather than at the first step

    def compute_loss(model, batch, is_train: bool, noise=None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        with autocast_context(batch.device, precision):
            if learned_variance:
                fn = learned_variance_fn(sde, model, continuous=False, prediction=prediction, train=is_train)
                return hybrid_loss(sde, fn, batch, vlb_weight=vlb_weight, reduce_mean=reduce_mean,
                                   num_levels=num_levels, data_scale=data_scale, data_shift=data_shift,
                                   noise=noise).float()
            if labels is not None:  # a class-conditional network (issue 11): the batch's labels, null = dropped
                from . import conditioning
                cond = conditioning.conditional_score_fn(sde, model, continuous=continuous, prediction=prediction,
                                                         train=is_train)
                return loss_fn(conditioning.with_labels(cond, labels), batch, noise=noise).float()
            score_fn = parameterization.get_score_fn(sde, model, continuous=continuous,
                                                     prediction=prediction, train=is_train)
            return loss_fn(score_fn, batch, noise=noise).float()

    def step_fn(state: Dict, batch: torch.Tensor, noise: Optional[Sequence[torch.Tensor]] = None,
                labels: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """noise: per-item loss draws (data_stream.LossNoise); labels: [B] class labels of a conditional
        network's batch (None: unconditional)."""
        if labels is not None and learned_variance:
            raise ValueError("class labels with learned variances are not supported; unset data.num_classes "
                             "or learned_variance")
        model = state["model"]
        if not train:
            ema = state["ema"]
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            try:
                with torch.no_grad():
                    loss = compute_loss(model, batch, False, noise, labels)
            finally:
                ema.restore(model.parameters())
            return {"loss": float(loss)}
        optimizer = state["optimizer"]
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model, batch, True, noise, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at step {state['step']}; "
                                     "parameters were not updated - lower optim.lr or set optim.grad_clip")
        loss.backward()
        grad_norm = optimize_fn(optimizer, model.parameters(), step=state["step"])
        state["step"] += 1
        state["ema"].update(model.parameters())
        return {"loss": float(loss.detach()), "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}

    return step_fn
