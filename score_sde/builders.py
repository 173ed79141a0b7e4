"""Spec -> objects: the SDE, the training state (model, EMA, optimizer, step), the score function.

Every function takes a `score_sde.pipeline.spec.Spec` (a config is turned into one on the way in).

Training, evaluation and sampling all build their pieces here, so the construction code exists once
(score_sde_pytorch copies it between train and evaluate).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

from . import losses, parameterization, sampling, sde_lib
from .distributed import unwrap
from .models.ema import ExponentialMovingAverage
from .pipeline import spec as spec_lib
from .pipeline.spec import as_spec

SDE_NAMES = spec_lib.SDE_NAMES
# model fields kept for score_sde_pytorch compatibility whose supported values are fixed here; each model
# checks which of them it implements (GroupNorm: the U-Nets; InstanceNorm++: the NCSN RefineNets)
FIXED_MODEL_FIELDS = {"normalization": ("GroupNorm", "InstanceNorm++"), "conv_size": (3,), "attention_type": ("ddpm",)}


def sde_name(spec: Any) -> str:
    """training.sde, lower-cased and checked (by the spec)."""
    return as_spec(spec).training.sde


def sde_from_config(spec: Any) -> sde_lib.SDE:
    """The forward SDE: VP/subVP from (beta_min, beta_max), VE from (sigma_min, sigma_max); N = num_scales."""
    spec = as_spec(spec)
    name, m = spec.training.sde, spec.model
    if name == "vesde":
        return sde_lib.get_sde(name, sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
    return sde_lib.get_sde(name, beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)


def loss_kind(spec: Any) -> str:
    """'dsm' for continuous training; discrete: 'smld' for VE (NCSN), 'ddpm' for VP/subVP."""
    return as_spec(spec).training.loss_kind


def prediction(spec: Any) -> str | None:
    """model.prediction when set (None lets the model's own default decide)."""
    return as_spec(spec).model.prediction


def check_fixed_model_fields(config: Any) -> None:
    """Compatibility fields (normalization, conv_size, attention_type) accept only what the models implement."""
    for key, allowed in FIXED_MODEL_FIELDS.items():
        value = as_spec(config).model.get(key, allowed[0])
        if value not in allowed:
            raise ValueError(f"model.{key}={value!r} is not supported; the models implement only {allowed}")


def build_model(config: Any, device: torch.device) -> torch.nn.Module:
    """The network of config.model, on `device` (channels_last memory format if training.channels_last)."""
    from .models import get_model  # imported here: the model registry is heavy and optional for some tools

    spec = as_spec(config)
    check_fixed_model_fields(spec)
    model = get_model(spec).to(device)
    if spec.training.channels_last and len(spec.shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def create_state(config: Any, device: torch.device) -> Dict[str, Any]:
    """dict(model, ema, optimizer, step=0) for config; the EMA rate is config.model.ema_rate."""
    spec = as_spec(config)
    model = build_model(spec, device)
    ema = ExponentialMovingAverage(model.parameters(), decay=spec.model.ema_rate)
    optimizer = losses.get_optimizer(spec.optim, model.parameters())
    return {"model": model, "ema": ema, "optimizer": optimizer, "step": 0}


def state_dict_for_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint dict of score_sde.checkpoint (model, ema, optimizer, step) from a training state."""
    out = {"model": unwrap(state["model"]).state_dict(), "step": int(state["step"])}
    if state.get("ema") is not None:
        out["ema"] = state["ema"].state_dict()
    if state.get("optimizer") is not None:
        out["optimizer"] = state["optimizer"].state_dict()
    return out


def load_state(state: Dict[str, Any], ckpt: Dict[str, Any], path: str = "the checkpoint") -> Dict[str, Any]:
    """Load a checkpoint dict into `state` in place (model, then EMA/optimizer when both sides have them)."""
    model = unwrap(state["model"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # torch lists every mismatch under a header line; name the first one
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                     lines[0] if lines else "")
        raise ValueError(f"{path} does not fit this model config ({first[:300]}); use the config it was "
                         "trained with") from None
    if state.get("ema") is not None and "ema" in ckpt:
        state["ema"].load_state_dict(ckpt["ema"])
    if state.get("optimizer") is not None and "optimizer" in ckpt:
        state["optimizer"].load_state_dict(ckpt["optimizer"])
    state["step"] = int(ckpt["step"])
    return state


class PredictionHalf(torch.nn.Module):
    """A learned-variance network (2C channels, model.learned_variance) seen as its prediction half (issue 12)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model  # parameterization looks through .module for the prediction kind

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        from .likelihood import split_learned_variance
        return split_learned_variance(self.module(x, *args, **kwargs))[0]


def score_fn_from_model(config: Any, sde: sde_lib.SDE, model: torch.nn.Module) -> Callable:
    """score_fn(x, t) of a trained network (eval mode) under config's time labels and prediction; a
    learned-variance network contributes its prediction half."""
    spec = as_spec(config)
    if spec.model.learned_variance:
        model = PredictionHalf(model)
    return parameterization.get_score_fn(sde, model, continuous=spec.training.continuous,
                                         prediction=spec.model.prediction, train=False)


def data_shape(config: Any) -> Tuple[int, ...]:
    """Shape of one data item: (dim,) for 2-D toy sets (data.dim), (C, H, W) for images."""
    return as_spec(config).shape


def build_sampler(config: Any, sde, shape, device=None, dtype: torch.dtype = torch.float32) -> Callable:
    """The spec's sampler for `shape` (batch first) on `device`; its options as the spec resolved them."""
    spec = as_spec(config)
    accepted = sampling.sampler_options(spec.sampling.method)
    runtime = {"device": device, "dtype": dtype, "progress": spec.sampling.progress}
    return sampling.get_sampler(spec.sampling.method, sde, shape, **dict(spec.sampling.options),
                                **{k: v for k, v in runtime.items() if k in accepted})
