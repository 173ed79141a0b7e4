"""Model registry: ``get_model(config)`` builds a noise-conditional network from ``config.model``.

Every model maps ``(x, labels)`` to a tensor shaped like ``x``; ``labels`` is a [B] tensor
(float time/sigma label or long level index, see ``SDE.network_label``).  Each model carries
``prediction`` in ``score_sde.parameterization.PREDICTIONS``: what its output means, and
``preconditioning`` (None, or EDM's: then its output is EDM's F, see ``preconditioning.py``).
"""
from __future__ import annotations

from typing import Callable, Dict, Type

import torch.nn as nn

_MODELS: Dict[str, Type[nn.Module]] = {}
PREDICTIONS = ("eps", "score", "x0", "v")
_DEFAULT_PREDICTION = {"vpsde": "eps", "subvpsde": "eps", "vesde": "score"}


def register_model(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: make a model constructible by ``get_model`` under ``config.model.name``."""
    def decorator(cls: Type[nn.Module]) -> Type[nn.Module]:
        key = name.lower()
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_MODELS[key].__name__}")
        _MODELS[key] = cls
        return cls
    return decorator


def registered_models() -> list[str]:
    return sorted(_MODELS)


def default_prediction(config) -> str:
    """``config.model.prediction`` if set, else eps for VP/subVP and score for VE (``config.training.sde``)."""
    pred = config.model.get("prediction", None)
    if pred is None:
        training = config.get("training", None)
        sde = training.get("sde", None) if training is not None else None
        if sde is None or sde.lower() not in _DEFAULT_PREDICTION:
            raise ValueError("cannot tell what the model predicts: set config.model.prediction to one of "
                             f"{PREDICTIONS} or config.training.sde to one of {sorted(_DEFAULT_PREDICTION)}")
        pred = _DEFAULT_PREDICTION[sde.lower()]
    if pred not in PREDICTIONS:
        raise ValueError(f"config.model.prediction={pred!r} is not one of {PREDICTIONS}")
    return pred


def get_model(config) -> nn.Module:
    """Build the model named ``config.model.name`` and set its ``prediction`` attribute."""
    name = str(config.model.name).lower()
    if name not in _MODELS:
        raise ValueError(f"unknown model.name {config.model.name!r}; registered models: {registered_models()}")
    data = config.get("data", None)
    num_classes = data.get("num_classes", None) if data is not None else None
    # unconditional: built exactly as before (same constructor call, same parameters, same state dict)
    model = _MODELS[name](config) if num_classes is None else _MODELS[name](config, num_classes=num_classes)
    model.prediction = default_prediction(config)
    # issue 12 (p4edm): EDM's preconditioning, read by parameterization.get_prediction_fn (not in the state dict)
    from .preconditioning import get_preconditioning
    model.preconditioning = get_preconditioning(str(config.model.get("preconditioning", "none")),
                                                config.model.get("sigma_data", 0.5),
                                                getattr(model, "log_noise_labels", False))
    return model


# importing the modules registers them
from . import mlp, ddpm, ncsnpp, ncsn  # noqa: E402,F401
