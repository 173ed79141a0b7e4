"""Exact conversions between what a network predicts, and the wrapping of a network into score_fn.

With x_t = m x_0 + s eps, the four targets are tied by
    score = -eps / s                        (Tweedie / DSM target, Song et al. 2021 eq. 7)
    x_0   = (x_t - s eps) / m
    v     = (m eps - s x_0) / sqrt(m^2 + s^2)  (Salimans & Ho 2022 for m^2 + s^2 = 1; scale-free otherwise)
Every conversion goes through eps, so all of them are mutual inverses. A network declares what it
predicts (its `prediction` attribute); this module is the only place that converts it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

from .sde_lib import SDE
from .utils import batch_broadcast, check_time

PREDICTIONS = ("eps", "score", "x0", "v")
TensorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(name: str) -> None:
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction {name!r}; choose one of {PREDICTIONS}")


def to_eps(pred: torch.Tensor, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor, src: str) -> torch.Tensor:
    """eps implied by a prediction of kind `src` at x_t = x (m, s broadcast against x)."""
    if src == "eps":
        return pred
    if src == "score":
        return -s * pred
    if src == "x0":
        return (x - m * pred) / s
    r2 = m ** 2 + s ** 2  # v: eps = (s x_t / r^2) + (m / r) v
    return s * x / r2 + m * pred / torch.sqrt(r2)


def from_eps(eps: torch.Tensor, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor, dst: str) -> torch.Tensor:
    """Prediction of kind `dst` implied by eps at x_t = x."""
    if dst == "eps":
        return eps
    if dst == "score":
        return -eps / s
    x0 = (x - s * eps) / m
    if dst == "x0":
        return x0
    return (m * eps - s * x0) / torch.sqrt(m ** 2 + s ** 2)


def convert(pred: torch.Tensor, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
            src: str, dst: str) -> torch.Tensor:
    """Exact conversion of a prediction between 'eps', 'score', 'x0' and 'v'.

    m and s are per-sample [B] tensors (or scalars); they are broadcast against x.
    """
    _check(src)
    _check(dst)
    if src == dst:
        return pred
    m, s = (batch_broadcast(v, x) if torch.is_tensor(v) and v.dim() == 1 else v for v in (m, s))
    return from_eps(to_eps(pred, x, m, s, src), x, m, s, dst)


def marginal_coeffs(sde: SDE, t: torch.Tensor, continuous: bool,
                    like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(m, s) that a network trained in continuous or discrete time assumes at time t."""
    if continuous:
        return sde.mean_coeff(t).to(like.dtype), sde.marginal_std(t).to(like.dtype)
    return sde.discrete_marginal(sde.discrete_index(t), like=like)


def model_prediction_kind(model: nn.Module, prediction: Optional[str]) -> str:
    """What the network predicts: explicit argument first, else the model's `prediction` attribute."""
    inner = getattr(model, "module", model)  # look through DistributedDataParallel / compile wrappers
    kind = prediction or getattr(model, "prediction", None) or getattr(inner, "prediction", None)
    if kind is None:
        raise ValueError("the network does not declare what it predicts; set model.prediction "
                         f"(config.model.prediction) to one of {PREDICTIONS}")
    _check(kind)
    return kind


def model_preconditioning(model: nn.Module) -> Any:
    """The network's preconditioning (models.preconditioning.EDMPreconditioning, attached by get_model from
    model.preconditioning) or None, looking through DistributedDataParallel / compile wrappers."""
    inner = getattr(model, "module", model)
    return getattr(model, "preconditioning", None) or getattr(inner, "preconditioning", None)


def preconditioned_x0(sde: SDE, model: Any, pre: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """EDM's D(x_t/m; sigma) (Karras et al. 2022, eq. 7), the x0 prediction of a preconditioned network F."""
    t64 = t.double()
    x_hat = x / batch_broadcast(sde.mean_coeff(t64).to(x.dtype), x)      # x_t = m (x0 + sigma n)
    return pre.denoise(model, x_hat, sde.sigma(t64))


def get_prediction_fn(sde: SDE, model: nn.Module, dst: str, *, continuous: bool = True,
                      prediction: Optional[str] = None, train: bool = False,
                      preconditioning: Any = None) -> TensorFn:
    """Wrap a network model(x, labels) into fn(x, t) returning the `dst` prediction at time t.

    A preconditioned network (`preconditioning`, else the model's attribute; see model_preconditioning) is
    EDM's F: it sees c_in x_t/m and c_noise, and its denoiser D is the prediction (continuous time only)."""
    pre = preconditioning or model_preconditioning(model)
    if pre is not None and not continuous:
        raise ValueError("EDM preconditioning needs continuous time (sigma between the discrete levels); set "
                         "training.continuous=True or model.preconditioning='none'")
    src = "x0" if pre is not None else model_prediction_kind(model, prediction)
    _check(dst)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_time(x, t)
        if isinstance(model, nn.Module):
            model.train(train)
        if pre is not None:
            out = preconditioned_x0(sde, model, pre, x, t)
        else:
            out = model(x, sde.network_label(t, continuous)).to(x.dtype)  # convert in full precision
        if out.shape != x.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} differs from its input "
                             f"{tuple(x.shape)}; the model must return a tensor shaped like x")
        m, s = marginal_coeffs(sde, t, continuous, out)
        return convert(out, x, m, s, src, dst)

    fn.continuous = continuous  # samplers that evaluate between discrete levels check this
    return fn


def get_score_fn(sde: SDE, model: nn.Module, *, continuous: bool = True,
                 prediction: Optional[str] = None, train: bool = False, preconditioning: Any = None) -> TensorFn:
    """Wrap a network into score_fn(x, t) = grad_x log p_t(x), the interface of every sampler."""
    return get_prediction_fn(sde, model, "score", continuous=continuous,
                             prediction=prediction, train=train, preconditioning=preconditioning)


def score_to_prediction_fn(sde: SDE, score_fn: TensorFn, dst: str) -> TensorFn:
    """Turn any score_fn (e.g. an analytic one) into fn(x, t) returning `dst` under the continuous marginal."""
    _check(dst)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, s = sde.mean_coeff(t).to(x.dtype), sde.marginal_std(t).to(x.dtype)
        return convert(score_fn(x, t), x, m, s, "score", dst)

    return fn


# ----------------------------------------------------------------------------- the denoiser adapter
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def is_continuous(score_fn: TensorFn) -> bool:
    """Whether score_fn answers at any t (True unless it declares `continuous = False`: a discrete-level
    network, which rounds t to its nearest level)."""
    return bool(getattr(score_fn, "continuous", True))


def dynamic_threshold(x0: torch.Tensor, quantile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = max(1, quantile of |x0| per
    sample), then clip x0 to [-s, s] and divide by s, for data scaled to [-1, 1]."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat.double(), quantile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = batch_broadcast(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def denoiser(sde: SDE, score_fn: TensorFn, threshold: Optional[float] = None) -> Denoiser:
    """D(x_hat; sigma) = E[x0 | x_t = m x_hat] at t = t(sigma), in the scaled space x_hat = x/m.

    Every SDE is a scaled VE (Karras et al. 2022, eq. 3 / sec. 2): x_hat = x_0 + sigma z, sigma = s/m.
    Tweedie: x0 = (x_t + s^2 score)/m. Every sigma-space sampler calls the network only through this.
    threshold: a quantile in (0, 1) turns on dynamic thresholding of the prediction (None: off).
    """
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is the quantile of |x0| used by dynamic thresholding, in (0, 1) "
                         f"(Imagen: 0.995), or None for off; got {threshold!r}")

    def denoise(x_hat: torch.Tensor, sigma: float) -> torch.Tensor:
        t64 = sde.t_from_sigma(torch.tensor([sigma], dtype=torch.float64)).clamp(max=sde.T)
        m, s = float(sde.mean_coeff(t64)[0]), float(sde.marginal_std(t64)[0])
        tt = torch.full((x_hat.shape[0],), float(t64[0]), dtype=x_hat.dtype, device=x_hat.device)
        x = m * x_hat
        x0 = convert(score_fn(x, tt), x, m, s, "score", "x0")
        return x0 if threshold is None else dynamic_threshold(x0, threshold)

    return denoise
